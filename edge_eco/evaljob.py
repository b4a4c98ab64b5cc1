"""``edge-eco eval``: score a bundle on a labelled file; also the test-split metrics of a build.

The report has every key of ``edge-eco run``'s report (it is :func:`edge_eco.runjob.run_job`'s),
plus an ``eval`` block: the local tier's accuracy, the remote generalist's, the APGR of the
ecology's own remote score (RouteLLM; local-only is the weak model, remote-only the strong one),
the calibration error (ECE) of the local answers' confidence, and accuracy per niche. Runtime
module: no build dependency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from . import routing_metrics as rm
from .datasets import Example
from .ecology import Ecology
from .errors import FallbackError
from .fallback.v2 import RemoteAnswer
from .runjob import RunOptions, run_job

RATES = tuple(np.round(np.linspace(0.0, 1.0, 101), 2))


class InProcessRemote:
    """A remote generalist run in-process from its bundle, with the V2 client's ``infer``."""

    def __init__(self, remote: Ecology) -> None:
        self.eco = remote
        self._cache: dict[str, RemoteAnswer] = {}  # the bundle is deterministic: each text is run once

    def infer(self, texts: list[str], *, timeout_s: float | None = None) -> list[RemoteAnswer]:
        """Answer texts with the remote bundle (timeout ignored: nothing goes over a network)."""
        out = []
        for text in texts:
            if text in self._cache:
                out.append(self._cache[text])
                continue
            t0 = time.perf_counter()
            try:
                a = self.eco.answer(text)
            except Exception as exc:  # noqa: BLE001 - translated, as the network client does
                raise FallbackError(f"in-process remote failed: {exc}") from exc
            out.append(RemoteAnswer(a.label, a.confidence, self.eco.name, self.eco.version,
                                    (time.perf_counter() - t0) * 1e3))
            self._cache[text] = out[-1]
        return out


@dataclass(frozen=True)
class Labelled:
    """A labelled example with its niche (None when it has none); a dense request carries its
    ``vector`` (``text`` then names its source)."""

    text: str
    label: str
    niche: str | None = None
    vector: Any = None

    @property
    def request(self) -> Any:
        """What the ecology answers: the vector when there is one, else the text."""
        return self.text if self.vector is None else self.vector


def niche_accuracy(predicted: Sequence[str], examples: Sequence[Labelled]) -> dict[str, dict]:
    """Accuracy and count per niche value; examples without a niche are under ``"(none)"``."""
    groups: dict[str, list[bool]] = {}
    for p, ex in zip(predicted, examples):
        groups.setdefault(ex.niche or "(none)", []).append(p == ex.label)
    return {k: {"accuracy": round(sum(v) / len(v), 5), "requests": len(v)} for k, v in sorted(groups.items())}


def local_metrics(eco: Ecology, examples: Sequence[Labelled], remote_label: Callable[[str], str] | None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Local-tier accuracy, ECE, per-niche accuracy and (with a remote) APGR of the remote score.

    Args:
        eco: an open ecology (its controller state is not touched: every answer is local only).
        examples: labelled examples.
        remote_label: the remote generalist's label for a text, or None when there is none.
        progress: called as (done, total) every 500 examples.

    Returns:
        A dict: local_accuracy, ece_local, by_niche_local, and with a remote remote_accuracy, apgr,
        accuracy_at_remote_rate.
    """
    local_ok, conf, score, labels, remote_ok = [], [], [], [], []
    for i, ex in enumerate(examples):
        a = eco.answer(ex.request, local_only=True)
        labels.append(a.label)
        local_ok.append(a.label == ex.label)
        conf.append(min(1.0, max(0.0, float(a.confidence))))
        score.append(float(a.provenance.get("remote_score", 1.0 - a.confidence)))
        if remote_label is not None:
            remote_ok.append(remote_label(ex.text) == ex.label)
        if progress and (i + 1) % 500 == 0:
            progress(i + 1, len(examples))
    out = {"local_accuracy": round(float(np.mean(local_ok)), 5),
           "ece_local": round(rm.ece(conf, local_ok), 5),
           "by_niche_local": niche_accuracy(labels, examples)}
    if remote_label is not None:
        weak, strong = float(np.mean(local_ok)), float(np.mean(remote_ok))
        accs = rm.curve(local_ok, remote_ok, score, RATES)
        out["remote_accuracy"] = round(strong, 5)
        out["apgr"] = None if weak == strong else round(rm.apgr(RATES, accs, weak, strong), 5)
        out["accuracy_at_remote_rate"] = {k: round(v, 5) for k, v in
                                          rm.accuracy_at_remote_rate(local_ok, remote_ok, score).items()}
    return out


def eval_bundle(eco: Ecology, examples: Sequence[Labelled], *, source: str = "",
                remote_label: Callable[[str], str] | None = None,
                progress: Callable[[int, int], None] | None = None, local_only: bool = False) -> dict:
    """The ``edge-eco run`` report of ``examples`` through ``eco``, plus the ``eval`` block.

    Args:
        eco: an open ecology (with a remote client when remote figures are wanted).
        examples: labelled examples (the niche, when known, gives per-niche accuracy; when no
            example has one, each takes its label's niche from the bundle, see
            :meth:`~edge_eco.manifest.Manifest.label_niches`).
        source: where the examples came from, for the report.
        remote_label: the remote generalist's label for a text (for APGR), or None.
        progress: called as (done, total).
        local_only: never call the remote in the ecology's own run.

    Returns:
        The report dict.
    """
    plain = [Example(e.text, e.label, e.vector) for e in examples]
    has_generalist = any(m.id == "generalist" for m in eco.manifest.models)
    report = run_job(eco, plain, RunOptions(local_baseline="generalist" if has_generalist else None,
                                            remote_baseline=not local_only, local_only=local_only),
                     source=source, progress=progress)
    if not any(e.niche for e in examples):
        niche_of = eco.manifest.label_niches()
        examples = [replace(e, niche=niche_of.get(e.label)) for e in examples]
    report["eval"] = local_metrics(eco, examples, remote_label, progress)
    return report


def load_labelled(path, *, split: str | None = None, text_field: str = "text", label_field: str = "label",
                  niche_field: str | None = None, vector_field: str | None = None) -> list[Labelled]:
    """Labelled examples from JSON lines, CSV/TSV (by extension), a CLINC150 JSON with ``split``, or
    the stm32_har folder with ``split``. With ``vector_field`` every row is a dense request: a list of
    numbers, or a string of numbers separated by spaces or commas (the ecology checks its length).

    Raises:
        RequestError: unreadable file, a row without a string text (or a vector of numbers) or
        without a label.
    """
    import csv
    import io
    import json
    from pathlib import Path

    from .datasets import load_requests
    from .errors import RequestError

    path = Path(path)
    if split is not None:
        if niche_field:
            raise RequestError("--niche-field reads JSON lines or CSV rows; a --split data set has no niche field")
        return [Labelled(e.text, e.label, vector=e.vector) for e in load_requests(path, split)]
    if not path.is_file():
        raise RequestError(f"requests file {path} does not exist or is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
                                   quoting=csv.QUOTE_NONE if path.suffix.lower() == ".tsv" else csv.QUOTE_MINIMAL))
        where = [f"{path}:{i}" for i in range(2, len(rows) + 2)]
    else:
        rows, where = [], []
        for n, line in enumerate(text.split("\n"), 1):  # U+2028 and the like are valid inside strings
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    _one_document(path, text)
                    raise RequestError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
                where.append(f"{path}:{n}")
    out = []
    for row, w in zip(rows, where):
        vector = None
        if vector_field is not None:
            vector = _vector(row, vector_field, w)
        elif not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise RequestError(f"{w}: expected a string field {text_field!r}")
        label = row.get(label_field)
        if label is None or not str(label).strip():
            raise RequestError(f"{w}: no label in field {label_field!r}; eval needs labelled requests")
        niche = row.get(niche_field) if niche_field else None
        out.append(Labelled(w if vector is not None else row[text_field], str(label),
                            None if niche is None else str(niche), vector))
    if niche_field and out and all(e.niche is None for e in out):
        raise RequestError(f"{path}: no row has the niche field {niche_field!r} (the first row has "
                           f"{sorted(rows[0])})")
    return out


def _vector(row, field: str, where: str) -> np.ndarray:
    """A row's dense request as float64 [n], or RequestError naming the row."""
    from .errors import RequestError
    v = row.get(field) if isinstance(row, dict) else None
    if isinstance(v, str):
        try:
            v = [float(x) for x in v.replace(",", " ").split()]
        except ValueError:
            raise RequestError(f"{where}: field {field!r} holds text that is not numbers") from None
    if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise RequestError(f"{where}: expected field {field!r} to be a non-empty list of numbers")
    return np.array(v, dtype=np.float64)


def _one_document(path, text: str) -> None:
    """Raise a clear RequestError when ``text`` is one JSON document of splits (not JSON lines)."""
    import json

    from .errors import RequestError
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return
    if isinstance(doc, dict):
        raise RequestError(f"{path} is one JSON document with keys {sorted(doc)[:8]}, not JSON lines; "
                           "give --split KEY to read one of its splits")
