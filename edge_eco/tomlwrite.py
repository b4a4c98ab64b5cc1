"""Write a :class:`~edge_eco.manifest.Manifest` back as ``ecology.toml`` text. Pure.

``parse_manifest(manifest_to_toml(m)) == m`` holds for every valid manifest (tested).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields

from .manifest import Calibration, Cost, Governance, Manifest, ModelEntry, Policy, RemoteSpec

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):  # JSON escapes are TOML escapes, except DEL which TOML forbids raw
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    """A bare TOML key when it can be one, else a quoted one."""
    return k if _BARE.fullmatch(k) else _value(k)


# Fields added after the first manifests: written only when set, so that rebuilding an ecology
# whose manifest does not use them gives the same bytes (``make har`` / ``make models``).
_OPTIONAL = {"jurisdiction", "local_jurisdictions", "attempts", "redact", "logprobs", "max_run_ms"}


def _section(obj, cls) -> list[str]:
    default = cls()
    return [f"{f.name} = {_value(getattr(obj, f.name))}" for f in fields(cls)
            if f.name not in _OPTIONAL or getattr(obj, f.name) != getattr(default, f.name)]


def _pairs(obj, defaults) -> list[str]:
    return [f"{f.name} = {_value(getattr(obj, f.name))}" for f in fields(obj)
            if getattr(obj, f.name) != getattr(defaults, f.name) or f.name in ("temperature",)]


def _model(m: ModelEntry) -> list[str]:
    lines = ["[[models]]", f"id = {_value(m.id)}", f"version = {_value(m.version)}",
             f"role = {_value(m.role)}", f"backend = {_value(m.backend)}",
             f"path = {_value(m.file.path)}", f"sha256 = {_value(m.file.sha256)}",
             f"input = {_value(m.input)}", f"output = {_value(m.output)}", f"risk = {_value(m.risk)}"]
    if m.decline_label is not None:
        lines.append(f"decline_label = {_value(m.decline_label)}")
    if m.tokenizer is not None:
        lines.append(f"tokenizer = {_value(m.tokenizer)}")
    if m.max_tokens != ModelEntry.__dataclass_fields__["max_tokens"].default:
        lines.append(f"max_tokens = {m.max_tokens}")
    lines.append(f"labels = {_value(list(m.labels))}")
    lines += ["", "[models.calibration]"] + _pairs(m.calibration, Calibration())
    if m.cost != Cost():
        lines += ["", "[models.cost]"] + [f"{k} = {_value(v)}" for k, v in asdict(m.cost).items()]
    if m.niches:
        lines += ["", "[models.niches]"] + [f"{_key(k)} = {_value(v)}" for k, v in m.niches.items()]
    return lines


def manifest_to_toml(m: Manifest) -> str:
    """The ``ecology.toml`` text of ``m``, with every field that differs from its default."""
    out = ["# edge_eco ecology manifest; every file is listed with its sha256.",
           "schema = 1", f"name = {_value(m.name)}", f"version = {_value(m.version)}",
           f"description = {_value(m.description)}", f"reject_label = {_value(m.reject_label)}"]
    if m.budget_bytes:
        out.append(f"budget_bytes = {m.budget_bytes}")
    if m.featurizer is not None:
        out += ["", "[featurizer]"] + [f"{f.name} = {_value(getattr(m.featurizer, f.name))}"
                                      for f in fields(m.featurizer)]
    out += ["", "[policy]"] + _section(m.policy, Policy)
    if m.remote is not None:
        out += ["", "[remote]"] + _section(m.remote, RemoteSpec)
    if m.router is not None:
        r = m.router
        out += ["", "[router]", f"path = {_value(r.file.path)}", f"sha256 = {_value(r.file.sha256)}",
                f"kind = {_value(r.kind)}", f"temperature = {_value(r.temperature)}",
                f"candidates = {_value(list(r.candidates))}"]
        if r.lam:
            out.append(f"lambda = {_value(r.lam)}")
    if m.deferral is not None:
        d = m.deferral
        out += ["", "[deferral]", f"path = {_value(d.file.path)}", f"sha256 = {_value(d.file.sha256)}",
                f"kind = {_value(d.kind)}", f"margin = {_value(d.margin)}"]
    if m.governance != Governance():
        out += ["", "[governance]"] + [f"{f.name} = {_value(getattr(m.governance, f.name))}"
                                      for f in fields(Governance)]
    if m.dense is not None:
        d = m.dense
        out += ["", "[dense]", f"path = {_value(d.file.path)}", f"sha256 = {_value(d.file.sha256)}",
                f"kind = {_value(d.kind)}", f"samples = {d.samples}", f"axes = {d.axes}",
                f"max_abs = {_value(float(d.max_abs))}"]
    for f in m.files:
        out += ["", "[[files]]", f"path = {_value(f.path)}", f"sha256 = {_value(f.sha256)}"]
    for model in m.models:
        out += [""] + _model(model)
    return "\n".join(out) + "\n"
