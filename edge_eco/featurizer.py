"""Text featurizer "hash-ngram-v1": the spec and its numpy reference implementation.

The spec (the C kernel in ``native/featurize.c`` implements the same, bit for bit):

1. The text is taken as UTF-8 bytes; ASCII ``A-Z`` are lowercased.
2. Tokens are maximal runs of word bytes: ``a-z``, ``0-9`` and every byte >= 0x80
   (so UTF-8 letters of any script stay inside their word).
3. Word n-grams, n = 1..``word_ngram_max``: the n tokens joined by one space, hashed with
   kind byte ``n``. Character n-grams, n = ``char_ngram_min``..``char_ngram_max``: every
   n-byte window of ``" " + token + " "``, hashed with kind byte ``16 + n``.
4. hash = fmix32(FNV-1a-32 over [kind] + bytes, offset basis XOR ``seed``);
   index = hash & (``dim`` - 1).
5. Every occurrence adds an integer weight (``word_weight`` or ``char_weight``) to its index;
   value = sqrt(count / total), so the vector has unit L2 norm. Indices ascend, no repeats.

Everything here is pure; ``edge_eco._native`` picks the compiled kernel or this reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ManifestError

VERSION = "hash-ngram-v1"
_FNV_BASIS = 2166136261
_FNV_PRIME = 16777619
_MASK32 = 0xFFFFFFFF
_WORD_BYTES = frozenset(list(range(ord("a"), ord("z") + 1)) + list(range(ord("0"), ord("9") + 1))
                        + list(range(0x80, 0x100)))
_LOWER = bytes(c + 32 if 65 <= c <= 90 else c for c in range(256))


@dataclass(frozen=True)
class FeaturizerSpec:
    """Settings of the featurizer, as declared in an ecology manifest's ``[featurizer]`` table."""

    version: str = VERSION
    seed: int = 0
    dim: int = 1 << 16
    word_ngram_max: int = 2
    char_ngram_min: int = 2
    char_ngram_max: int = 4
    word_weight: int = 3
    char_weight: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.version != VERSION:
            problems.append(f"version {self.version!r} is not supported (expected {VERSION!r})")
        if not (0 <= self.seed <= _MASK32):
            problems.append(f"seed {self.seed} is not a 32-bit unsigned integer")
        if not (256 <= self.dim <= 1 << 24) or self.dim & (self.dim - 1):
            problems.append(f"dim {self.dim} is not a power of two in [256, 16777216]")
        if not 0 <= self.word_ngram_max <= 3:
            problems.append(f"word_ngram_max {self.word_ngram_max} is not in [0, 3]")
        if not 0 <= self.char_ngram_max <= 8:
            problems.append(f"char_ngram_max {self.char_ngram_max} is not in [0, 8]")
        if self.char_ngram_max and not 1 <= self.char_ngram_min <= self.char_ngram_max:
            problems.append(f"char_ngram_min {self.char_ngram_min} is not in [1, char_ngram_max]")
        if self.word_ngram_max == 0 and self.char_ngram_max == 0:
            problems.append("word_ngram_max and char_ngram_max are both 0: no features")
        for name in ("word_weight", "char_weight"):
            if not 1 <= getattr(self, name) <= 255:
                problems.append(f"{name} {getattr(self, name)} is not in [1, 255]")
        if problems:
            raise ManifestError("featurizer: " + "; ".join(problems))

    def capacity(self, n_bytes: int) -> int:
        """Upper bound of n-gram occurrences for a text of ``n_bytes`` bytes (same as the C kernel)."""
        sizes = self.char_ngram_max - self.char_ngram_min + 1 if self.char_ngram_max else 0
        return ((n_bytes // 2 + 1) * self.word_ngram_max
                + (n_bytes + 2 * (n_bytes // 2 + 1)) * sizes + 1)


def _tokens(data: bytes) -> list[bytes]:
    out, start = [], -1
    for pos, c in enumerate(data):
        if c in _WORD_BYTES:
            if start < 0:
                start = pos
        elif start >= 0:
            out.append(data[start:pos])
            start = -1
    if start >= 0:
        out.append(data[start:])
    return out


def _fnv(basis: int, kind: int, data: bytes) -> int:
    h = ((basis ^ kind) * _FNV_PRIME) & _MASK32
    for c in data:
        h = ((h ^ c) * _FNV_PRIME) & _MASK32
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _char_hashes(basis: int, padded: np.ndarray, size: int) -> np.ndarray:
    """FNV-1a of every ``size``-byte window of ``padded`` (uint8), vectorised over windows."""
    n = padded.shape[0] - size + 1
    h = np.full(n, ((basis ^ (16 + size)) * _FNV_PRIME) & _MASK32, dtype=np.uint32)
    for k in range(size):
        h ^= padded[k:k + n].astype(np.uint32)
        h *= np.uint32(_FNV_PRIME)
    return h


def featurize_reference(spec: FeaturizerSpec, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Featurize UTF-8 ``data`` with numpy; returns (indices int32 [nnz], values float32 [nnz])."""
    basis = _FNV_BASIS ^ spec.seed
    tokens = _tokens(data.translate(_LOWER))
    hashes, weights = [], []
    for t, _ in enumerate(tokens):
        for g in range(1, min(spec.word_ngram_max, t + 1) + 1):
            hashes.append(np.array([_fnv(basis, g, b" ".join(tokens[t - g + 1:t + 1]))], np.uint32))
            weights.append(np.full(1, spec.word_weight, np.int64))
        if spec.char_ngram_max:
            padded = np.frombuffer(b" " + tokens[t] + b" ", dtype=np.uint8)
            for size in range(spec.char_ngram_min, min(spec.char_ngram_max, padded.shape[0]) + 1):
                hashes.append(_char_hashes(basis, padded, size))
                weights.append(np.full(hashes[-1].shape[0], spec.char_weight, np.int64))
    if not hashes:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    idx = _fmix32(np.concatenate(hashes)) & np.uint32(spec.dim - 1)
    w = np.concatenate(weights)
    uniq, inverse = np.unique(idx, return_inverse=True)
    counts = np.bincount(inverse, weights=w).astype(np.int64)
    total = int(w.sum())
    values = np.sqrt(counts.astype(np.float64) / float(total)).astype(np.float32)
    return uniq.astype(np.int32), values
