"""Input adapters: request text -> the feeds a model's input contract asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .manifest import ModelEntry

Feeds = dict[str, np.ndarray]


def hashed_feeds(indices: np.ndarray, values: np.ndarray) -> Feeds:
    """Feeds of a ``hashed-text`` model from the featurizer's output (shared by all such models)."""
    return {"indices": indices, "values": values}


def token_adapter(root: Path, entry: ModelEntry) -> Callable[[str], Feeds]:
    """A ``text-tokens`` adapter for ``entry`` (tokenizer loaded once)."""
    from .tokens import TokenEncoder

    encoder = TokenEncoder(root / entry.tokenizer, entry.max_tokens)
    return lambda text: encoder([text])


__all__ = ["hashed_feeds", "token_adapter"]
