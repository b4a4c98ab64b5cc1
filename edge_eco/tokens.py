"""Input adapter for the ``"text-tokens"`` contract: texts -> padded token-id arrays.

Models with this input contract (the MiniLM remote generalist) take the three int64 ``[batch, seq]``
inputs of a BERT-style encoder: ``input_ids``, ``attention_mask`` and ``token_type_ids``. The
adapter turns a batch of texts into those arrays with a Hugging Face ``tokenizer.json`` (WordPiece
for MiniLM), padding to the longest text of the batch and truncating to ``max_tokens``.

``tokenizers`` belongs to the optional extra ``edge_eco[remote]`` and is imported only when a
:class:`TokenEncoder` is created, so ``import edge_eco`` never needs it. Its errors are translated
here: loading failures become :class:`~edge_eco.errors.ModelLoadError`, bad texts
:class:`~edge_eco.errors.RequestError`, anything else while encoding
:class:`~edge_eco.errors.InferenceError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_eco.errors import InferenceError, ManifestError, ModelLoadError, RequestError

__all__ = ["TokenEncoder", "INPUT_NAMES"]

#: The ONNX input names of a ``"text-tokens"`` model, in the order the arrays are returned.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Fallback when a tokenizer.json carries no padding section of its own (BERT convention).
_DEFAULT_PAD_TOKEN = "[PAD]"


def _import_tokenizers() -> Any:
    """Import the optional ``tokenizers`` package, or say how to install it."""
    try:
        import tokenizers
    except ImportError as exc:
        raise ModelLoadError(
            "the 'text-tokens' input needs the 'tokenizers' package: pip install edge_eco[remote]"
        ) from exc
    return tokenizers


class TokenEncoder:
    """Tokenize batches of texts into the int64 arrays of a BERT-style ONNX encoder.

    The tokenizer is configured once here and never mutated afterwards, so one encoder may be
    shared by threads.

    Args:
        tokenizer_path: a Hugging Face ``tokenizer.json`` file.
        max_tokens: the longest sequence passed to the model, special tokens included
            (texts are truncated to it); at least 2.

    Raises:
        ModelLoadError: ``tokenizers`` is not installed, or the file is missing or not a tokenizer.
        ManifestError: ``max_tokens`` is not an integer >= 2 (a ``ValueError``).
    """

    def __init__(self, tokenizer_path: Path, max_tokens: int) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise ManifestError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
        tokenizers = _import_tokenizers()
        path = Path(tokenizer_path)
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for I/O and JSON errors
            raise ModelLoadError(f"cannot load tokenizer {path}: {exc}") from exc
        padding = tokenizer.padding or {}
        pad_token = padding.get("pad_token", _DEFAULT_PAD_TOKEN)
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token))
        if pad_id is None:
            raise ModelLoadError(f"tokenizer {path} has no padding token {pad_token!r}")
        # The file may fix a padding length (MiniLM's pads everything to 128); pad to the
        # longest text of the batch instead, which is what makes batch-1 requests cheap.
        tokenizer.enable_padding(
            pad_id=pad_id,
            pad_token=pad_token,
            pad_type_id=padding.get("pad_type_id", 0),
            length=None,
        )
        tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.path = path

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenize a batch of texts.

        Args:
            texts: one or more strings.

        Returns:
            ``{"input_ids", "attention_mask", "token_type_ids"}``, each int64 ``[B, T]`` with
            ``B = len(texts)`` and ``T`` the longest tokenized text, at most ``max_tokens``.
            Padding positions have mask 0 and the tokenizer's pad id.

        Raises:
            RequestError: ``texts`` is empty, or an item is not a str or cannot be UTF-8 encoded.
            InferenceError: the tokenizer failed on valid input.
        """
        _check_texts(texts)
        try:
            encodings = self._tokenizer.encode_batch(list(texts))
        except Exception as exc:
            raise InferenceError(f"tokenizer {self.path.name} failed: {exc}") from exc
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def __repr__(self) -> str:
        return f"TokenEncoder({str(self.path)!r}, max_tokens={self.max_tokens})"


def _check_texts(texts: Any) -> None:
    """Refuse what the tokenizer would reject with an unhelpful message."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise RequestError(f"texts must be a list of str, got {type(texts).__name__}")
    if not texts:
        raise RequestError("texts is empty: expected at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RequestError(
                    f"texts[{i}] cannot be encoded as UTF-8 (lone surrogate at {exc.start})"
                ) from exc
