"""Mutation recipes for the corrupt-artefact fuzz harness (``edge_eco.fuzz``). Pure: no I/O.

A :class:`Mutation` is a small, deterministic recipe (which file, which operation, which
parameters) that turns a file's pristine bytes into corrupt bytes (or removes the file), so a
worker process can regenerate any case from the seed alone. Each backend contributes its own
mutation set (:data:`BACKEND_MUTATIONS`); the manifest/bundle layer has its own
(:func:`bundle_mutations`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1048576\n")
# Magic numbers of other formats written over a file's first bytes.
WRONG_MAGIC = (b"PK\x03\x04", b"\x7fELF", b"\x1c\x00\x00\x00TFL3", b"\x10\x00\x00\x00ORTM", b"\x89HDF",
               b"\x93NUMPY", b"GGUF", b"{\"a\":")


@dataclass(frozen=True)
class Mutation:
    """One corrupt-artefact case: ``op`` applied to ``target`` (a path inside the bundle).

    ``must_refuse`` is False only where the corrupt bytes can still form a valid model (a bit
    flip inside int8 weights, an all-zero weight file of the right length): no structural check
    can tell those apart from a real model; only the sha256 (or a signature) can.
    """

    target: str
    op: str
    args: tuple = ()
    must_refuse: bool = True
    extra: tuple[tuple[str, str, tuple], ...] = ()  # further (target, op, args) applied with it

    @property
    def name(self) -> str:
        more = "".join(f" + {op} {t}" for t, op, _ in self.extra)
        return f"{self.op}{list(self.args) if self.args else ''} {self.target}{more}"


def apply(op: str, args: tuple, data: bytes) -> bytes | None:
    """The bytes ``op`` makes of ``data`` (None: the file is removed)."""
    if op == "truncate":
        return data[: args[0]]
    if op == "bitflip":
        out = bytearray(data)
        for bit in args:
            out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if op == "empty":
        return b""
    if op == "lfs":
        return LFS_POINTER
    if op == "magic":
        magic = WRONG_MAGIC[args[0] % len(WRONG_MAGIC)]
        return magic + data[len(magic):]
    if op == "zeros":
        return bytes(len(data))
    if op == "garbage":
        return random.Random(args[0]).randbytes(args[1])
    if op == "append":
        return data + random.Random(args[0]).randbytes(args[1])
    if op == "missing":
        return None
    if op == "replace":  # text substitution in a manifest: args = (old, new)
        text = data.decode("utf-8")
        if args[0] not in text:
            raise ValueError(f"recipe {args[0]!r} does not occur in the file")
        return text.replace(args[0], args[1], 1).encode("utf-8")
    if op == "raw":
        return args[0]
    raise ValueError(f"unknown mutation {op!r}")


def _byte_damage(rng: random.Random, target: str, size: int, *, weights: bool) -> Mutation:
    """One random structural damage of a file of ``size`` bytes (weights: an int8 weight file,
    where bit flips and zeroing keep a valid model)."""
    pick = rng.random()
    if pick < 0.40:
        return Mutation(target, "truncate", (rng.randrange(0, size),))
    if pick < 0.65:
        bits = tuple(rng.randrange(size * 8) for _ in range(rng.choice((1, 1, 2, 8))))
        return Mutation(target, "bitflip", bits, must_refuse=False)
    if pick < 0.72:
        return Mutation(target, "empty")
    if pick < 0.79:
        return Mutation(target, "lfs")
    if pick < 0.86:
        return Mutation(target, "magic", (rng.randrange(len(WRONG_MAGIC)),), must_refuse=not weights)
    if pick < 0.90:
        return Mutation(target, "zeros", must_refuse=not weights)
    if pick < 0.95:
        return Mutation(target, "garbage", (rng.randrange(1 << 30), rng.randrange(1, 4096)))
    return Mutation(target, "append", (rng.randrange(1 << 30), rng.randrange(1, 64)), must_refuse=False)


def onnx_mutations(models: list[tuple[str, int, str | None, int]], rng: random.Random, n: int) -> list[Mutation]:
    """``n`` damages of ONNX models given as (graph path, size, external data path, size); the
    models without an external weight file are left out.

    Three in four hit the graph file, one in four its external weight file; a few remove the
    weight file (a half-written folder) or damage both.
    """
    models = [m for m in models if m[2] is not None]
    out = []
    for _ in range(n):
        graph, gsize, data, dsize = models[rng.randrange(len(models))]
        pick = rng.random()
        if pick < 0.72:
            out.append(_byte_damage(rng, graph, gsize, weights=False))
        elif pick < 0.95:
            out.append(_byte_damage(rng, data, dsize, weights=True))
        elif pick < 0.98:
            out.append(Mutation(data, "missing"))
        else:
            d = _byte_damage(rng, data, dsize, weights=True)
            out.append(Mutation(graph, "truncate", (rng.randrange(gsize),), extra=((d.target, d.op, d.args),)))
    return out


def flatbuffer_mutations(models: list[tuple[str, int, str | None, int]], rng: random.Random,
                         n: int) -> list[Mutation]:
    """``n`` damages of single-file flatbuffer models (``.tflite``): the weights live inside the
    file, so a bit flip or appended bytes may still form a valid model."""
    return [_byte_damage(rng, *models[rng.randrange(len(models))][:2], weights=False) for _ in range(n)]


# backend name -> the mutation set of its model files, called with that backend's models as
# (model path, size, ``.data`` path or None, size), a seeded Random and a count. A TFLite set
# plugs in here (e.g. _byte_damage of the .tflite file, weights=False for the flatbuffer header).
BACKEND_MUTATIONS: dict[str, Callable[..., list[Mutation]]] = {"ort": onnx_mutations,
                                                               "tflite": flatbuffer_mutations}


def manifest_edits(text: str, rng: random.Random) -> list[tuple[str, str]]:
    """Semantic edits of an ``ecology.toml`` that the parser or the bundle check must refuse:
    (old, new) text substitutions."""
    sha_lines = [ln for ln in text.splitlines() if ln.startswith("sha256 = ")]
    path_lines = [ln for ln in text.splitlines() if ln.startswith("path = ")]
    id_lines = [ln for ln in text.splitlines() if ln.startswith("id = ")]
    sha, path, mid = rng.choice(sha_lines), rng.choice(path_lines), rng.choice(id_lines)
    hexd = sha[len('sha256 = "'):-1]
    in_files = text[text.index("[[files]]"):] if "[[files]]" in text else ""
    data_files = [ln[len('path = "'):-1] for ln in in_files.splitlines() if ln.startswith("path = ")
                  and ln.endswith('.data"')]
    rng.shuffle(data_files)
    flipped = hexd[:10] + ("0" if hexd[10] != "0" else "1") + hexd[11:]
    edits = [
        (sha, f'sha256 = "{flipped}"'), (sha, f'sha256 = "{hexd.upper()}"'), (sha, f'sha256 = "{hexd[:-1]}"'),
        (sha, 'sha256 = 7'), (path, 'path = "../outside.onnx"'), (path, 'path = "/etc/passwd"'),
        (path, 'path = "no_such_file.onnx"'), (path, 'path = ""'), ("schema = 1", "schema = 2"),
        ("schema = 1", "schema = \"1\""), ("schema = 1\n", ""), ("name = ", "nmae = "),
        ("[policy]\n", "[policy]\ndirect_treshold = 0.5\n"), ("direct_threshold = ", "direct_threshold = 1e9 #"),
        ("fallback_threshold = ", "fallback_threshold = nan #"), ("coalition_size = ", "coalition_size = -1 #"),
        ("budget_bytes = ", "budget_bytes = -5 #"), ("budget_bytes = ", "budget_bytes = 1000 #"),
        ('backend = "ort"', 'backend = "tensorflow"'), ('role = "specialist"', 'role = "oracle"'),
        ('risk = ', 'risk = "extreme" #') if "risk = " in text else ("[[models]]\n", "[[models]]\nrisk = \"extreme\"\n"),
        ("dim = ", "dim = 0 #"), ('version = "hash-ngram-v1"', 'version = "hash-ngram-v9"'),
        (mid, 'id = "banking"') if mid != 'id = "banking"' else (mid, 'id = "travel"'),
        ("candidates = [", 'candidates = ["nobody", '), ('kind = "linear-softmax"', 'kind = "mlp"'),
        ("labels = [", "labels = [1, "), ("labels = [", 'labels = ["", '), ("temperature = ", "temperature = 0 #"),
        ("[featurizer]\n", "[featurizer]\nextra = 1\n"), ("[[files]]\n", "[[files]\n"),
        ("[router]\n", "[router]\n[router]\n"), ('reject_label = "oos"', "reject_label = oos"),
        ('remote_rule = "cascade"', 'remote_rule = "deferral"\n[deferral]\n'),
    ] + [(_files_entry(text, p), "") for p in data_files[:3]] + [
        # a sensor (dense) ecology: its window spec and backend
        ("samples = ", "samples = 0 #"), ("axes = ", "axes = 7 #"), ("max_abs = ", "max_abs = -1.0 #"),
        ('kind = "accel-window-v1"', 'kind = "gyro-window-v1"'), ('backend = "tflite"', 'backend = "tensorflow"'),
        ('input = "dense-vector"', 'input = "image"'), ("[dense]\n", "[dense]\nextra = 1\n"),
    ]
    return [(old, new) for old, new in edits if old in text]  # the edits this manifest's text allows


def _files_entry(text: str, path: str) -> str:
    """The ``[[files]]`` block listing ``path`` (removing it unlists the file)."""
    at = text.index(f'path = "{path}"')
    start = text.rindex("[[files]]", 0, at)
    end = text.index("\n\n", at) + 2 if "\n\n" in text[at:] else len(text)
    return text[start:end]


def bundle_mutations(files: list[tuple[str, int]], manifest: str, rng: random.Random, n: int) -> list[Mutation]:
    """``n`` damages of a whole bundle: any listed file (truncated, flipped, emptied, an LFS
    pointer, wrong magic, zeroed, removed), the manifest's bytes, or a semantic manifest edit.
    Every one must be refused (the sha256 of each listed file is in the manifest)."""
    out = []
    edits = manifest_edits(manifest, rng)
    msize = len(manifest.encode("utf-8"))
    for i in range(n):
        pick = rng.random()
        if pick < 0.45:
            path, size = files[rng.randrange(len(files))]
            m = _byte_damage(rng, path, size, weights=False)
            out.append(Mutation(m.target, m.op, m.args))  # the sha256 catches weight damage too
        elif pick < 0.55:
            # A half-written folder: one to three listed files are absent.
            gone = rng.sample(files, rng.randint(1, 3))
            out.append(Mutation(gone[0][0], "missing", extra=tuple((p, "missing", ()) for p, _ in gone[1:])))
        elif pick < 0.75:
            out.append(Mutation("ecology.toml", "replace", edits[rng.randrange(len(edits))]))
        else:
            m = _byte_damage(rng, "ecology.toml", msize, weights=False)
            out.append(Mutation("ecology.toml", m.op, m.args, must_refuse=False))
    return out
