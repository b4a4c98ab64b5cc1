"""Read TOML text: the one place every file of edge_eco (manifest, platform, plan, profile, recipe,
trust, signature, challenger) is parsed, and :class:`Table`, the checked field reader of the
manifest. Pure.

``tomllib`` parses nested arrays and inline tables by recursion, so a file nested a few hundred
levels deep raises RecursionError, not TOMLDecodeError; it is turned into the latter here, so that
each caller's handling of a malformed file (its own error type, naming the file) covers it too.
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

from .errors import ManifestError

TOMLDecodeError = tomllib.TOMLDecodeError


def loads(text: str) -> dict[str, Any]:
    """Parse TOML ``text``.

    Raises:
        TOMLDecodeError: invalid TOML, or arrays/tables nested too deeply to parse.
    """
    try:
        return tomllib.loads(text)
    except RecursionError:  # not chained: its ~1000 identical frames say nothing more
        raise TOMLDecodeError("arrays or tables nested too deeply to parse") from None


class Table:
    """A TOML table read field by field, each checked for its type and range; whatever is left
    unread is an unknown field (:meth:`done`). Errors are ``error`` (ManifestError; a recipe's
    are RecipeError) naming ``where``."""

    error: type[Exception] = ManifestError

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise self.error(f"{where}: expected a table, got {type(data).__name__}")
        self.data, self.where, self.used = data, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...,
            lo: float | None = None, hi: float | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(f"{self.where}: missing required field {key!r}")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise self.error(f"{self.where}.{key}: expected {names}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(f"{self.where}.{key}: {value!r} is not a finite number")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise self.error(f"{self.where}.{key}: {value!r} is out of range [{lo}, {hi}]")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in options:
            raise self.error(f"{self.where}.{key}: {value!r} is not one of {list(options)}")
        return value

    def table(self, key: str) -> "Table | None":
        self.used.add(key)
        return type(self)(self.data[key], f"{self.where}.{key}") if key in self.data else None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(f"{self.where}: unknown field(s) {unknown}")
