"""Replay labelled validation requests through an ecology, for ``edge-eco assign``. Shell.

Every request is answered by the full local tier (all models resident, nothing remote), which
records the models its path ran, its calibrated confidence, its warm latency and whether it was
right; the remote generalist answers it too. ``edge_eco.assign`` then scores any device plan on
these outcomes without running the models again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from .assign import ModelCost, Outcome
from .datasets import Example
from .ecology import Ecology
from .errors import EdgeEcoError
from .manifest import Manifest, ModelEntry
from .profile import DeviceProfile
from .residency import SESSION_OVERHEAD_BYTES


def niche_values(entry: ModelEntry) -> frozenset[str]:
    """The niche values a model serves: comma-separated lists are split; ``*`` (every niche) gives none,
    like a generalist."""
    values = {v.strip() for raw in entry.niches.values() for v in raw.split(",") if v.strip()}
    return frozenset() if "*" in values else frozenset(values)


def label_niches(manifest: Manifest) -> dict[str, str]:
    """Gold label -> niche value, from the specialists' label spaces (labels two niches share are left out)."""
    seen: dict[str, set[str]] = {}
    for m in manifest.models:
        if m.role == "specialist" and m.niches:
            for label in m.labels:
                if label != m.decline_label:
                    seen.setdefault(label, set()).update(niche_values(m))
    return {label: next(iter(v)) for label, v in seen.items() if len(v) == 1}


def replay(eco: Ecology, examples: Sequence[Example], remote: Callable[[str], str], niches: Sequence[str],
           progress: Callable[[int, int], None] | None = None, repeats: int = 3) -> list[Outcome]:
    """Outcomes of ``examples`` (labelled) through ``eco``'s local tier and the ``remote`` labeller.

    Args:
        eco: the ecology, opened with no memory budget (every model stays resident).
        examples: labelled requests (the validation split).
        remote: request (text, or a dense ecology's window) -> the remote generalist's label.
        niches: the niche of each example (for per-niche figures).
        progress: called with (done, total) every 250 requests.
        repeats: local runs per request; the latency kept is the fastest.

    Raises:
        EdgeEcoError: an unlabelled example; errors of the ecology or the remote propagate.
    """
    ids = [m.id for m in eco.manifest.models]
    index = {m: i for i, m in enumerate(ids)}
    for m in ids:  # warm: every model loaded once, so latencies are warm ones
        with eco.residency.use(m):
            pass
    out = []
    for i, (ex, niche) in enumerate(zip(examples, niches)):
        if ex.label is None:
            raise EdgeEcoError(f"request {i + 1} has no label; assign replays labelled validation requests")
        a = eco.answer(ex.request, local_only=True)
        # The fastest of a few runs: the path's own cost, without the scheduling noise of a busy machine.
        local_ms = min([a.provenance["latency_us"]["total"]] + [
            eco.answer(ex.request, local_only=True).provenance["latency_us"]["total"] for _ in range(repeats - 1)]) / 1e3
        t0 = time.perf_counter()
        remote_label = remote(ex.request)
        remote_ms = (time.perf_counter() - t0) * 1e3
        models = tuple(index[v[0]] for v in a.provenance.get("votes", ()))
        direct = eco.route_candidates(ex.request)[1][0] >= eco.policy.direct_threshold
        out.append(Outcome(models=models, local_ok=a.label == ex.label, remote_ok=remote_label == ex.label,
                           confidence=float(a.confidence), local_ms=local_ms,
                           remote_ms=remote_ms, niche=niche,
                           stages=stages(len(models), direct, eco.policy.coalition_size)))
        if progress and (i + 1) % 250 == 0:
            progress(i + 1, len(examples))
    return out


def stages(n_models: int, direct: bool, coalition_size: int) -> tuple[int, ...]:
    """How the request path ran ``n_models`` models: direct = one, then (when it declined) the next
    ``coalition_size - 1`` together; else the top ``coalition_size`` together; then the generalist."""
    sizes = [1, coalition_size - 1, 1] if direct else [coalition_size, 1]
    out, left = [], n_models
    for size in sizes:
        if left <= 0:
            break
        if min(size, left) > 0:
            out.append(min(size, left))
            left -= out[-1]
    if left > 0:
        out.append(left)
    return tuple(out)


def model_costs(root: Path, manifest: Manifest, profile: DeviceProfile | None) -> list[ModelCost]:
    """Per-model costs in manifest order: measured ones from ``profile``, else the manifest's, else
    the runtime's prediction from file sizes (and no load time).

    Raises:
        EdgeEcoError: the profile was measured for another ecology.
    """
    if profile is not None and profile.ecology != manifest.name:
        raise EdgeEcoError(f"the device profile was measured for ecology {profile.ecology!r}, not {manifest.name!r}")
    out = []
    for m in manifest.models:
        p = profile.model(m.id) if profile else None
        if p is not None:
            size, load_ms = p.resident_bytes, p.load_ms
        elif m.cost.resident_bytes:
            size, load_ms = m.cost.resident_bytes, m.cost.load_ms
        else:
            paths = [m.file.path] + [f.path for f in manifest.files if f.path.startswith(m.file.path + ".")]
            size, load_ms = sum((root / x).stat().st_size for x in paths) + SESSION_OVERHEAD_BYTES, m.cost.load_ms
        out.append(ModelCost(m.id, int(size), float(load_ms), niche_values(m)))
    return out
