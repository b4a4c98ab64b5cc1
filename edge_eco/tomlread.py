"""Read TOML text: the one place every file of edge_eco (manifest, platform, plan, profile, recipe,
trust, signature, challenger) is parsed. Pure.

``tomllib`` parses nested arrays and inline tables by recursion, so a file nested a few hundred
levels deep raises RecursionError, not TOMLDecodeError; it is turned into the latter here, so that
each caller's handling of a malformed file (its own error type, naming the file) covers it too.
"""

from __future__ import annotations

import tomllib
from typing import Any

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
