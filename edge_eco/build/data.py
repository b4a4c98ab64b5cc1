"""Labelled data for a build: loading (JSON lines, CSV/TSV, JSON splits), validation, splits.

Shell module (reads files). Everything is checked before any training starts, and every problem
found is reported at once in one :class:`~edge_eco.errors.DataError`: missing or empty labels,
mixed field types, an empty text column, a label with too few examples for the split, the same
text in train and test (leakage, with counts), a niche with no data.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from .recipe import SPLITS, DataSpec, SplitSpec
from .recordings import keep_window, split_by_recording, window_records

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
LEAKAGE_POLICIES = ("error", "warn", "drop")


@dataclass(frozen=True)
class Row:
    """One labelled example; ``where`` names its file and line for messages."""

    text: str | None
    label: str
    niche: str | None
    split: str | None
    where: str
    vector: tuple[float, ...] | None = None
    group: str | None = None  # the recording a window was cut from (format "recordings")
    start: int | None = None  # the window's first row in its recording


@dataclass(frozen=True)
class Dataset:
    """The validated splits, the input fingerprint and what validation noted."""

    train: tuple[Row, ...]
    val: tuple[Row, ...]
    test: tuple[Row, ...]
    fingerprint: str
    files: tuple[str, ...]
    notes: tuple[str, ...]
    licence_text: str = ""  # the recipe's card.licence_file, reproduced on the model card


def _expand(root: Path, template: str) -> list[tuple[Path, dict[str, str]]]:
    """Files matching a path template, each with the values its ``{field}`` placeholders took."""
    names = _PLACEHOLDER.findall(template)
    full = template if Path(template).is_absolute() else str(root / template)
    if not names and "*" not in template:
        return [(Path(full), {})]
    pattern = re.compile("^" + "".join(  # a "*" in the template matches within one path component
        f"(?P<{p}>[^/]+)" if i % 2 else re.escape(p).replace(r"\*", "[^/]*")
        for i, p in enumerate(_PLACEHOLDER.split(full))) + "$")
    out = []
    for path in sorted(glob.glob(_PLACEHOLDER.sub("*", full))):
        m = pattern.match(path)
        if m:
            out.append((Path(path), m.groupdict()))
    return out


def _records(path: Path, spec: DataSpec, keys) -> list[tuple[dict, str, str | None]]:
    """(record, where, split) triples of one file."""
    if spec.format == "recordings":
        return [({**rec, "_start": start}, where, None) for rec, where, start in
                window_records(path, spec.windows, spec.vector_field)]
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark (spreadsheet exports) is not data
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if spec.format == "jsonl":
        out = []
        # JSON lines end at "\n" only: U+2028, U+0085 and the like are valid inside JSON strings.
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
                out.append((obj, f"{path.name}:{n}", None))
        return out
    if spec.format in ("csv", "tsv"):
        delim = spec.delimiter or ("\t" if spec.format == "tsv" else ",")
        # newline="": the csv module finds the records (quoted line breaks, U+2028 inside a field).
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim,
                                quoting=csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE, strict=spec.quoting)
        try:
            rows = [(dict(r), f"{path.name}:{reader.line_num}", None) for r in reader]
        except csv.Error as exc:
            hint = " (a quoted field is never closed?)" if "end of data" in str(exc) else ""
            raise DataError(f"{path}: not valid {spec.format.upper()} ({exc}{hint})") from exc
        ragged = [w for r, w, _ in rows if None in r or None in r.values()]
        if ragged:
            raise DataError(f"{path}: {len(ragged)} row(s) with a different number of fields than the header "
                            f"({len(reader.fieldnames or ())}), first at {', '.join(ragged[:3])}")
        wanted = [f for f in (spec.text_field, spec.vector_field, spec.label_field) if f is not None]
        missing = [f for f in wanted if f not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; the header has {list(reader.fieldnames or ())}")
        return rows
    try:  # json-splits: {key: [[text, label], ...]}
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from exc
    out = []
    for split, names in keys:
        for key in names:
            if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
                raise DataError(f"{path}: no list under key {key!r} (declared for split {split})")
            for n, item in enumerate(doc[key]):
                rec = item if isinstance(item, dict) else \
                    {spec.text_field or "text": item[0], spec.label_field: item[1]} \
                    if isinstance(item, list) and len(item) == 2 else {"_bad": item}
                out.append((rec, f"{path.name}[{key}][{n}]", split))
    return out


def _niche_map(path: Path) -> dict[str, str]:
    """label -> niche from ``{niche: [labels]}`` or ``{label: niche}``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read niche map {path}: {exc}") from exc
    if isinstance(doc, dict) and all(isinstance(v, list) for v in doc.values()):
        out: dict[str, str] = {}
        for n, labs in doc.items():
            for lab in map(str, labs):
                if out.setdefault(lab, str(n)) != str(n):  # else the last niche would silently take the label
                    raise DataError(f"{path}: label {lab!r} is listed under niches {out[lab]!r} and {n!r}")
        return out
    if isinstance(doc, dict) and all(isinstance(v, str) for v in doc.values()):
        return {str(k): v for k, v in doc.items()}
    raise DataError(f"{path}: a niche map is {{niche: [labels]}} or {{label: niche}}")


def _row(rec: dict, where: str, split: str | None, extra: dict, spec: DataSpec, niches: dict | None,
         problems: dict[str, list[str]]) -> Row | None:
    rec = {**rec, **extra}
    label = rec.get(spec.label_field)
    if label is None:
        problems["missing label"].append(where)
        return None
    if not isinstance(label, (str, int)) or isinstance(label, bool) or not str(label).strip():
        problems["empty or non-scalar label"].append(where)
        return None
    problems["_label_types"].append(("number" if isinstance(label, int) else "string", where))
    label = str(label).strip()
    text = vector = None
    if spec.text_field is not None:
        text = rec.get(spec.text_field)
        if not isinstance(text, str):
            problems[f"text field {spec.text_field!r} missing or not a string (mixed types)"].append(where)
            return None
        if not text.strip():
            problems[f"empty text in {spec.text_field!r}"].append(where)
            return None
    else:
        vector = _vector(rec.get(spec.vector_field), spec.vector_field, where, problems)
        if vector is None:
            return None
    if spec.split_field is not None:
        split = str(rec.get(spec.split_field, "")).strip() or split
        if split not in SPLITS:
            problems[f"split field {spec.split_field!r} not one of {list(SPLITS)}"].append(where)
            return None
    niche = None
    if spec.niche_field is not None:
        niche = niches.get(label) if niches is not None else rec.get(spec.niche_field)
        if niche is not None and not isinstance(niche, str):
            problems[f"niche field {spec.niche_field!r} not a string (mixed types)"].append(where)
            return None
        niche = niche.strip() or None if niche is not None else None
    return Row(text, label, niche, split, where, vector)


def _vector(v, field: str, where: str, problems: dict[str, list[str]]) -> tuple[float, ...] | None:
    """A dense row's vector (a list of numbers, a string of numbers split by commas or spaces, or a
    recording's window), or None with the problem recorded."""
    if isinstance(v, np.ndarray):
        a = v.astype(np.float64).reshape(-1)
    else:
        if isinstance(v, str):
            try:
                v = [float(x) for x in v.replace(",", " ").split()]
            except ValueError:
                problems[f"vector field {field!r} holds text that is not numbers"].append(where)
                return None
        if v is None:
            problems[f"vector field {field!r} missing"].append(where)
            return None
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            problems[f"vector field {field!r} not a list of numbers (mixed types)"].append(where)
            return None
        a = np.array(v, dtype=np.float64)
    if not a.size:
        problems[f"vector field {field!r} is an empty vector"].append(where)
        return None
    if not np.isfinite(a).all():
        problems[f"vector field {field!r} holds NaN or infinity"].append(where)
        return None
    return tuple(a.tolist())


def load_rows(root: Path, spec: DataSpec) -> tuple[list[Row], list[Path], dict[str, str] | None]:
    """Read every row of every declared file.

    Returns:
        (rows, the files read, the label -> niche map or None).

    Raises:
        DataError: unreadable or malformed files, and every row-level problem at once.
    """
    files, rows = [], []
    niches = _niche_map(root / spec.niche_map) if spec.niche_map else None
    problems: dict[str, list[str]] = defaultdict(list)
    for f in spec.files:
        matches = _expand(root, f.path)
        if not matches or not all(p.is_file() for p, _ in matches):
            raise DataError(f"data file {root / f.path} not found (data folder {root})")
        for path, extra in matches:
            files.append(path)
            extra = {**dict(f.fields), **extra}
            for rec, where, split in _records(path, spec, f.keys):
                start = rec.pop("_start", None) if spec.format == "recordings" else None
                row = _row(rec, f"{path.parent.name}/{where}" if path.parent.name else where, split or f.split, extra, spec, niches, problems)
                if row is not None:
                    rows.append(row if start is None else replace(row, group=str(path), start=start))
    kinds = problems.pop("_label_types", [])
    if len({k for k, _ in kinds}) > 1:  # 1 and "1" would silently become one label
        numbers = [w for k, w in kinds if k == "number"]
        strings = [w for k, w in kinds if k == "string"]
        minority = numbers if len(numbers) <= len(strings) else strings
        problems[f"labels of mixed types ({len(numbers)} numbers, {len(strings)} strings); the "
                 f"{'numbers' if minority is numbers else 'strings'}"] = minority
    if spec.text_field is not None and rows and not any(r.text.strip() for r in rows):
        problems["the text column is empty"].append(spec.text_field)
    if spec.vector_field is not None:
        dims = Counter(len(r.vector) for r in rows)
        if len(dims) > 1:
            problems[f"vectors of different lengths {dict(dims)}"].append(spec.vector_field)
    if not rows and not problems:
        raise DataError("the data files hold no rows")
    _raise(problems)
    return rows, files, niches


def _raise(problems: dict[str, list[str]]) -> None:
    if problems:
        lines = [f"- {what}: {len(where)} (first: {', '.join(where[:3])})" for what, where in problems.items()]
        raise DataError("the training data has problems (nothing was trained):\n" + "\n".join(lines))


def stratified_split(rows: list[Row], spec: SplitSpec) -> list[Row]:
    """Assign every row a split, per label, with a seeded shuffle (deterministic for a seed)."""
    rng = np.random.default_rng(spec.seed)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r.label, []).append(i)
    split = [""] * len(rows)
    for label in sorted(by_label):
        idx = np.array(by_label[label])[rng.permutation(len(by_label[label]))]
        n_test = max(1, int(round(len(idx) * spec.test_fraction)))
        n_val = max(1, int(round(len(idx) * spec.val_fraction)))
        for j, i in enumerate(idx):
            split[i] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    return [replace(r, split=s) for r, s in zip(rows, split)]


def fingerprint(files: list[Path], root: Path, extra: list[Path]) -> str:
    """sha256 over (relative path, sha256 of the bytes) of every input file, in path order."""
    h = hashlib.sha256()
    for p in sorted(set(files) | set(extra)):
        try:
            rel = str(p.relative_to(root))
        except ValueError:
            rel = p.name
        h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def prepare(root: Path, spec: DataSpec, split: SplitSpec, *, niche_values: tuple[str, ...] = (),
            reject_label: str | None = None) -> Dataset:
    """Load, split and validate the data of a recipe.

    Args:
        root: the data folder the recipe's paths are relative to.
        spec, split: the recipe's [data] and [split] tables.
        niche_values: niche values the recipe names (specialist groups); each must have data.
        reject_label: the out-of-scope label, exempt from the per-niche checks.

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: every problem found, at once.
    """
    rows, files, niches = load_rows(root, spec)
    leakage = spec.leakage
    problems: dict[str, list[str]] = {}
    notes = []
    counts = Counter(r.label for r in rows)
    if split.mode == "stratified":
        few = sorted(lab for lab, n in counts.items() if n < split.min_per_label)
        if few:
            problems[f"labels with fewer than {split.min_per_label} examples (too few for a train/val/test "
                     "split)"] = [f"{lab!r} ({counts[lab]})" for lab in few]
        rows = stratified_split(rows, split)
    elif split.mode == "by-recording":
        groups: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            groups[r.label].append(r.group)
        assigned = split_by_recording(groups, split.cycle)
        rows = [replace(r, split=assigned[r.group]) for r in rows]
    else:
        missing = [r.where for r in rows if r.split is None]
        if missing:
            problems["rows without a split (give split per file, a split_field, or [split] mode = "
                     "'stratified')"] = missing
    parts = {s: [r for r in rows if r.split == s and keep_window(r.start, s, spec.windows)] for s in SPLITS}
    train_labels = {r.label for r in parts["train"]}
    for s in ("val", "test"):
        unseen = sorted({r.label for r in parts[s]} - train_labels)
        if unseen:
            problems[f"labels in {s} with no train example"] = [repr(x) for x in unseen]
    for s in SPLITS:
        if not parts[s]:
            problems[f"the {s} split is empty"] = ["-"]
    if spec.niche_field is not None:
        have = Counter(r.niche for r in parts["train"] if r.niche is not None)
        wanted = set(niche_values) | (set(niches.values()) if niches else set())
        empty = sorted(n for n in wanted if not have.get(n))
        if empty:
            problems["niches with no training data"] = empty
        if not have:
            problems[f"no row has a {spec.niche_field!r} niche"] = ["-"]
        if niches is not None:
            unmapped = sorted({r.label for r in rows if r.niche is None and r.label != reject_label})
            if unmapped:
                notes.append(f"{len(unmapped)} label(s) not in the niche map (answered by the generalist): "
                             + ", ".join(unmapped[:5]))
    key = (lambda r: r.text.strip()) if spec.text_field is not None else (lambda r: r.vector)  # noqa: E731
    what = "text" if spec.text_field is not None else "vector"
    if parts["train"] and parts["test"]:
        seen = {key(r) for r in parts["train"]}
        leaked = [r for r in parts["test"] if key(r) in seen]
        if leaked:
            msg = (f"{len(leaked)} test row(s) ({len({key(r) for r in leaked})} distinct {what}s) also "
                   f"appear in train, first at {', '.join(r.where for r in leaked[:3])}")
            if leakage == "error":
                problems[f"leakage: the same {what} in train and test"] = [msg]
            elif leakage == "drop":
                parts["test"] = [r for r in parts["test"] if key(r) not in seen]
                notes.append(f"leakage: {msg}; dropped from test")
            else:
                notes.append(f"leakage: {msg}; kept (declared in the recipe)")
    if problems:
        _raise(problems)
    extra = [root / spec.niche_map] if spec.niche_map else []
    return Dataset(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]),
                   fingerprint(files, root, extra), tuple(str(p) for p in files), tuple(notes))
