"""The routing step of the request path: an ecology's router, read from its bundle and checked
against its manifest, and the ranking of its candidate models for one request among those its
contract allows (risk level, deadline). Shell: reads the router file and the residency's state;
the ranking itself is :mod:`edge_eco.router` (pure), or one C call that also featurizes the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._native import Featurizer, RouterKernel
from .errors import IntegrityError, ManifestError, RoutingError
from .inputs import DenseAdapter, Feeds, hashed_feeds
from .manifest import Manifest
from .policy import RISK_LEVELS, RequestContract, deadline_mask, eligible_mask
from .residency import Residency
from .router import DeferralWeights, Route, RouterWeights, route, route_reference
from .routerfile import read_router


def load_router(root: Path, manifest: Manifest,
                dense_dim: int | None) -> tuple[RouterWeights | DeferralWeights, int, float]:
    """The router the manifest declares, with how the route ranks its outputs.

    Args:
        root: the bundle's folder.
        manifest: the bundle's manifest; ``manifest.router`` must be set.
        dense_dim: the dense featurizer's output length for a sensor ecology, None for a text
            ecology (whose router reads ``manifest.featurizer.dim`` features).
    Returns:
        ``(weights, mode, param)``: a domain router (mode 0, param its softmax temperature) or a
        per-model correctness router (mode 1, param its cost weight lambda).
    Raises:
        IntegrityError: the router file was built for another featurizer, or holds another kind.
        ManifestError: the file lacks an array, or its shape does not fit the featurizer and candidates.
    """
    spec = manifest.router
    header, arrays = read_router(root / spec.file.path)
    built_for = header.get("featurizer_spec")
    if built_for is not None and built_for != _spec_dict(manifest.featurizer):
        raise IntegrityError(f"{spec.file.path} was built for featurizer {built_for}, but "
                             f"ecology.toml declares {_spec_dict(manifest.featurizer)}: the manifest "
                             "was edited or belongs to other models")
    kind = spec.kind
    expected = "deferral-linear" if kind == "correctness" else kind
    if header.get("kind") != expected:
        raise IntegrityError(f"{spec.file.path} holds a {header.get('kind')!r} router; "
                             f"ecology.toml declares kind {kind!r}")
    try:
        if kind == "correctness":  # per-model correctness, ranked by p - lambda x cost
            weights = DeferralWeights(arrays["weight"], arrays["scale"], arrays["bias"], arrays["cost"])
            mode, param = 1, spec.lam
        else:  # a domain router, ranked by tempered softmax
            weights = RouterWeights(arrays["weight"], arrays["scale"], arrays["bias"], spec.temperature)
            mode, param = 0, spec.temperature
    except KeyError as exc:
        raise ManifestError(f"router file lacks array {exc}") from exc
    in_dim = manifest.featurizer.dim if dense_dim is None else dense_dim
    if weights.weight.shape != (in_dim, len(spec.candidates)):
        raise ManifestError(f"router weight shape {weights.weight.shape} does not match "
                            f"featurizer dim {in_dim} x "
                            f"{len(spec.candidates)} candidates")
    return weights, mode, param


class Routing:
    """Ranks an ecology's candidate models for one request.

    Args:
        root: the bundle's folder.
        manifest: the bundle's manifest; without a router its first model is the only candidate.
        featurizer: the text featurizer (None for a sensor ecology); with the C kernel compiled a
            text is featurized and routed in one call.
        dense: the dense featurizer of a sensor ecology, or None.
    Raises:
        IntegrityError, ManifestError: the router file does not fit the manifest (:func:`load_router`).
    """

    def __init__(self, root: Path, manifest: Manifest, featurizer: Featurizer | None,
                 dense: DenseAdapter | None) -> None:
        self._featurizer, self._dense = featurizer, dense
        if manifest.router is not None:
            self.weights, self.mode, self.param = load_router(root, manifest, None if dense is None else dense.dim)
            self.candidates = manifest.router.candidates
            self.kernel = RouterKernel(self.weights) if featurizer and featurizer.native else None
        else:
            self.weights, self.candidates, self.kernel = None, (manifest.models[0].id,), None
            self.mode, self.param = 0, 1.0
        by_id = {m.id: m for m in manifest.models}
        entries = tuple(by_id[c] for c in self.candidates)
        # The risk part of eligibility, once per contract level (the default contract: "medium").
        self.risk_masks = {r: eligible_mask(entries, RequestContract(max_risk=r), frozenset()) for r in RISK_LEVELS}
        self._risk_masks_u8 = {r: m.astype(np.uint8) for r, m in self.risk_masks.items()}
        self._costs = tuple((e.id, e.cost.load_ms, e.cost.p95_us / 1e3) for e in entries)

    def mask(self, deadline_ms: float, residency: Residency, base: np.ndarray | None = None) -> np.ndarray:
        """bool [candidates]: ``base`` (default: the default contract's risk mask) narrowed to the
        candidates whose expected latency fits ``deadline_ms``, a cold load included for a model
        that ``residency`` does not hold (relaxed to ``base`` when none fits)."""
        # A model that is not resident costs its cold load: the measured one once it has loaded
        # (and still the manifest's before), so a deadline can rule out a cold model. The static
        # parts (risk, manifest costs) are computed once (was ~50-60 us a request, rebuilt each time).
        times, resident = residency.stats.load_times, residency.resident_set()
        return deadline_mask(self.risk_masks[RequestContract.max_risk] if base is None else base, [
            p95_ms if c in resident else p95_ms + max(load_ms, times.get(c, 0.0))
            for c, load_ms, p95_ms in self._costs], deadline_ms)

    def featurize_route(self, data: bytes, deadline_ms: float | None, max_risk: str,
                        residency: Residency) -> tuple[Feeds | None, Route]:
        """Features and route of one text request: one C call when the kernel is compiled.

        Args:
            data: the validated UTF-8 request.
            deadline_ms: the request's time budget, or None.
            max_risk: the request's highest risk level.
            residency: whose resident models and load times the deadline weighs.
        Returns:
            The hashed feeds (None without a featurizer) and the route over the candidates.
        Raises:
            RoutingError: no candidate is eligible.
        """
        if self.kernel is None:
            hashed = hashed_feeds(*self._featurizer(data)) if self._featurizer else None
            return hashed, self._route(hashed, deadline_ms, max_risk, residency)
        mask = self._risk_masks_u8[max_risk] if deadline_ms is None else \
            self.mask(deadline_ms, residency, self.risk_masks[max_risk]).astype(np.uint8)
        if not mask.any():
            raise RoutingError("no model is eligible for this request")
        idx, val, order, probs = self.kernel.route_text(self._featurizer, data, mask, self.param, self.mode)
        return hashed_feeds(idx, val), Route(tuple(order), tuple(probs))

    def route_window(self, x: np.ndarray, deadline_ms: float | None, max_risk: str,
                     residency: Residency) -> Route:
        """The route of one sensor window's standardized features ``x`` (routed in numpy).

        Args:
            x: float32 [dense dim], the window's features.
            deadline_ms, max_risk, residency: as for :meth:`featurize_route`.
        Raises:
            RoutingError: no candidate is eligible.
        """
        base = self.risk_masks[max_risk]
        return route(self.weights, self._dense.indices, x,
                     base if deadline_ms is None else self.mask(deadline_ms, residency, base))

    def _route(self, hashed: Feeds | None, deadline_ms: float | None, max_risk: str,
               residency: Residency) -> Route:
        if self.weights is None:
            return Route((0,), (1.0,))
        base = self.risk_masks[max_risk]
        mask = base if deadline_ms is None else self.mask(deadline_ms, residency, base)
        if self.mode == 0:
            return route(self.weights, hashed["indices"], hashed["values"], mask)  # numpy path
        if not mask.any():
            raise RoutingError("no model is eligible for this request")
        d = route_reference(self.weights, hashed["indices"], hashed["values"], mask, self.param)
        return Route(d.order, d.probs)


def _spec_dict(spec: Any) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}
