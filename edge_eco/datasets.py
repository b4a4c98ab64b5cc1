"""Labelled request files: CLINC150-style JSON splits and JSON lines.

Shell module (file and network I/O). The default data folder is ``../shared/data`` beside the
repository; where it is absent, :func:`fetch_clinc150` downloads the public source named in the
data set's README into a user cache and says so.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RequestError

REPO_ROOT = Path(__file__).resolve().parent.parent
CLINC150_COMMIT = "828f8093932c8fe6ca7936c3d2e52903b1c523de"
CLINC150_URL = "https://raw.githubusercontent.com/clinc/oos-eval/{commit}/data/{name}"
_SPLITS = {"train": ("train", "oos_train"), "val": ("val", "oos_val"), "test": ("test", "oos_test")}


@dataclass(frozen=True)
class Example:
    """One labelled (or unlabelled: ``label`` None) request."""

    text: str
    label: str | None = None
    vector: Any = None  # a dense request (e.g. an accelerometer window); ``text`` then names its source

    @property
    def request(self) -> Any:
        """What the ecology answers: the vector when there is one, else the text."""
        return self.text if self.vector is None else self.vector


def refuse_windows_for_text(examples: list[Example], name: str, where: object) -> None:
    """Refuse sensor windows (vector requests) read for ``name``, an ecology that takes text.

    Raises:
        RequestError: one of ``examples`` holds a vector.
    """
    if any(e.vector is not None for e in examples):
        raise RequestError(f"{where} holds sensor windows; {name} takes text (give text requests, e.g. the "
                           "CLINC150 json with --split)")


def data_root(explicit: str | Path | None = None, env: str | None = None) -> Path:
    """The data folder: an explicit path, else ``EDGE_ECO_DATA`` (passed in), else ../shared/data."""
    if explicit:
        return Path(explicit)
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def fetch_clinc150(root: Path, cache: Path | None = None) -> Path:
    """The clinc150 folder under ``root``, or a downloaded copy in the user cache when absent."""
    folder = root / "clinc150"
    if (folder / "data_full.json").exists():
        return folder
    cache = cache or Path.home() / ".cache" / "edge_eco" / "data" / "clinc150"
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("data_full.json", "domains.json"):
        target = cache / name
        if not target.exists():
            url = CLINC150_URL.format(commit=CLINC150_COMMIT, name=name)
            print(f"edge_eco: {folder} not found; downloading {url} -> {target}", file=sys.stderr)
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - fixed https URL
                    data = resp.read()
            except OSError as exc:  # URLError, timeouts, DNS: no network
                raise RequestError(f"CLINC150 is not in {folder} and could not be downloaded from {url} "
                                   f"({exc}); point DATA= or EDGE_ECO_DATA at a folder holding clinc150/") from exc
            tmp = target.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(target)
    return cache


def load_clinc150(path: Path, split: str) -> list[Example]:
    """The in-scope and out-of-scope queries of one split of a CLINC150 ``data_*.json``."""
    if split not in _SPLITS:
        raise RequestError(f"split {split!r} is not one of {sorted(_SPLITS)}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"{path}: not a CLINC150 data_*.json file ({exc}); --split reads only those") from exc
    out = []
    for key in _SPLITS[split]:
        if not isinstance(data, dict) or key not in data:
            raise RequestError(f"{path}: no {key!r} key; is this a CLINC150 data_*.json file?")
        out.extend(Example(str(t), str(lab)) for t, lab in data[key])
    return out


def _is_clinc150(path: Path) -> bool:
    """Whether ``path`` holds one JSON object with CLINC150's split keys (read whole: only after
    its first line failed as a JSON line)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and any(key in data for keys in _SPLITS.values() for key in keys)


def load_requests(path: str | Path, split: str | None = None) -> list[Example]:
    """Requests from JSON lines (``{"text": ..., "label"?: ...}`` per line), a CLINC150 JSON file,
    or the stm32_har folder (accelerometer windows of ``split``, default test).

    Raises:
        RequestError: unreadable file, a line that is not a JSON object with a string ``text``,
            or whose ``label`` is neither a string nor a whole number.
    """
    path = Path(path)
    if path.is_dir():
        from .har_data import is_har_folder, load_har
        if is_har_folder(path):
            return load_har(path, split or "test")
    if not path.is_file():
        raise RequestError(f"requests file {path} does not exist or is not a file")
    if split is not None:
        return load_clinc150(path, split)
    out = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if lineno == 1 and line.lstrip().startswith("{") and _is_clinc150(path):
                    raise RequestError(f"{path} is a CLINC150 data file, not JSON lines: give --split "
                                       f"({', '.join(sorted(_SPLITS))})") from exc
                raise RequestError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise RequestError(f"{path}:{lineno}: expected an object with a string 'text'")
            label = obj.get("label")
            # a whole number too, as `edge-eco build` reads labels (a bundle built from 0..9 has "0".."9")
            if label is not None and (not isinstance(label, (str, int)) or isinstance(label, bool)):
                raise RequestError(f"{path}:{lineno}: 'label' must be a string (or a whole number), "
                                   f"got {json.dumps(label)[:60]}")
            out.append(Example(obj["text"], None if label is None else str(label)))
    return out
