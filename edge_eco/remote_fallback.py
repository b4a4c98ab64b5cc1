"""The remote generalist step of the request path: the learned deferral and the client an
ecology's bundle (or its opener) names, and one call to the remote that never fails the request.
Shell: reads the deferral file; the call goes over the network (through the client,
:mod:`edge_eco.fallback`) and reads the clock.

Whether a request may leave the device at all is decided first, by the pure
:func:`edge_eco.remote_policy.remote_block_reason`; the deferral scores are :mod:`edge_eco.deferral`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._native import Featurizer, RouterKernel
from .deferral import Deferral
from .errors import FallbackError, ManifestError
from .judges import Vote
from .manifest import Manifest, RemoteSpec
from .remote_policy import redact
from .router import DeferralWeights
from .routerfile import read_router


def load_deferral(root: Path, manifest: Manifest, featurizer: Featurizer | None) -> Deferral | None:
    """The learned remote deferral the manifest declares, or None when it declares none.

    Args:
        root: the bundle's folder.
        manifest: the bundle's manifest.
        featurizer: the ecology's text featurizer; the deferral runs in the C kernel when it does.
    Raises:
        ManifestError: the deferral file lacks an array.
        IntegrityError: its weights do not fit the featurizer (:class:`edge_eco.deferral.Deferral`).
    """
    spec = manifest.deferral
    if spec is None:
        return None
    _, arrays = read_router(root / spec.file.path)
    try:
        weights = DeferralWeights(arrays["weight"], arrays["scale"], arrays["bias"],
                                  np.zeros(arrays["weight"].shape[1], np.float32))
    except KeyError as exc:
        raise ManifestError(f"{spec.file.path} lacks array {exc}") from exc
    kernel = RouterKernel(weights) if featurizer.native else None
    return Deferral(weights, manifest.featurizer.dim, kernel)


def remote_client_for(manifest: Manifest, labels: tuple[str, ...], *, url: str | None = None,
                      token: str | None = None, protocol: str | None = None, model: str | None = None) -> Any:
    """The remote generalist client of an ecology whose policy allows remote, or None.

    Args:
        manifest: the ecology's manifest (its ``[remote]`` table and policy).
        labels: the ecology's label space (the client maps answers onto it).
        url, token, protocol, model: the opener's remote URL, bearer token, protocol and model
            name; each given one but the token overrides the manifest's.
    Returns:
        A client (no connection is made yet), or None: remote is not allowed, or no URL is known.
    Raises:
        ManifestError: unknown protocol, bad URL or options (:func:`edge_eco.fallback.client_for`).
    """
    spec = manifest.remote or RemoteSpec()
    url = url or spec.url
    if manifest.policy.remote != "allowed" or not url:
        return None
    from .fallback import client_for
    from .fallback.retry import RetryPolicy

    protocol = protocol or spec.protocol
    return client_for(protocol, url, model or spec.model or "generalist", labels=labels, token=token,
                      default_timeout_s=spec.timeout_ms / 1e3, retry=RetryPolicy(attempts=spec.attempts),
                      **({"logprobs": spec.logprobs} if protocol == "openai" else {}))


@dataclass(frozen=True)
class RemoteCall:
    """How an ecology asks its remote generalist: the manifest's timeout and redaction masks, and
    the label space an answer must fall in."""

    timeout_ms: float
    masks: tuple[str, ...]  # redaction masks (edge_eco.remote_policy.MASKS)
    labels: frozenset[str]

    def ask(self, client: Any, text: str, best: Vote, prov: dict, deadline_ms: float | None,
            t0: float) -> tuple[str, float, str]:
        """Ask ``client`` for ``text``; on any failure keep the best local answer.

        Args:
            client: the remote client (``infer(texts, timeout_s=...)``), or None when offline.
            text: the request.
            best: the best local answer.
            prov: the request's provenance; its ``remote`` entry is set (model and ms, or the error).
            deadline_ms: the request's time budget, or None; bounds the call's timeout.
            t0: ``time.perf_counter()`` when the request started.
        Returns:
            ``(label, confidence, path)``: the remote's answer with path ``remote``, or ``best``'s
            with path ``unavailable``.
        """
        if client is None:
            prov["remote"] = {"error": "no remote generalist configured (offline)"}
            return best.label, best.confidence, "unavailable"
        timeout_ms = self.timeout_ms
        if deadline_ms is not None:
            timeout_ms = min(timeout_ms, deadline_ms - (time.perf_counter() - t0) * 1e3)
        if timeout_ms < 1.0:
            prov["remote"] = {"error": "deadline leaves no time for the remote call"}
            return best.label, best.confidence, "unavailable"
        t = time.perf_counter()
        sent = redact(text, self.masks) if self.masks else text
        try:
            reply = client.infer([sent], timeout_s=timeout_ms / 1e3)[0]
            if reply.label not in self.labels:
                raise FallbackError(f"remote answered {reply.label!r}, which is not in the label set")
        except FallbackError as exc:
            prov["remote"] = {"error": f"{type(exc).__name__}: {exc}",
                              "ms": round((time.perf_counter() - t) * 1e3, 2)}
            return best.label, best.confidence, "unavailable"
        prov["remote"] = {"model": reply.model, "version": reply.model_version,
                          "ms": round((time.perf_counter() - t) * 1e3, 2), "tries": getattr(reply, "attempts", 1)}
        if self.masks:
            prov["remote"]["redacted"] = list(self.masks)
        return reply.label, reply.confidence, "remote"
