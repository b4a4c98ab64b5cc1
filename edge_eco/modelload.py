"""Opening an ecology's models: what each one is predicted to hold in memory, and a load that runs
it once on its manifest's input contract before it is marked ready. Shell: stats and opens files,
starts sandboxed workers.

:class:`~edge_eco.ecology.Ecology` hands these to its :class:`~edge_eco.residency.Residency`
(``loader``, ``predict_bytes``, ``paths``, ``runtime_of``, ``anon_cap``, ``cost``); the residency
bench (:mod:`edge_eco.bench_residency`) and the tests reach them through the Ecology, as
``eco._load``, ``eco._predict_bytes``, ``eco._model_paths`` and so on.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import numpy as np

from . import backends
from ._native import Featurizer
from .artifacts import probe
from .backends import isolated
from .errors import BudgetError, IntegrityError, ManifestError
from .ondisk import gone_since_open
from .inputs import DenseAdapter, Feeds, hashed_feeds, token_adapter
from .manifest import Manifest
from .residency import SESSION_OVERHEAD_BYTES
from .residency.meter import ANON_PER_FILE_BYTE


PAGE = mmap.PAGESIZE  # a file is mapped (and charged) in whole pages


class ModelLoader:
    """Footprints and loads of the models of one opened bundle.

    ``adapters`` holds each ``text-tokens`` model's input adapter, made at its first load and
    kept across reloads (the request path reads it to build that model's feeds).
    """

    def __init__(self, root: Path, manifest: Manifest, featurizer: Featurizer | None,
                 dense: DenseAdapter | None) -> None:
        self.root, self.manifest = root, manifest
        self._entries = {m.id: m for m in manifest.models}
        self._featurizer, self._dense = featurizer, dense
        self.adapters: dict[str, Callable[[str], Feeds]] = {}
        self._probes: dict[str, Feeds] = {}  # the probe run's feeds per model (the same at every load)

    def predict_bytes(self, model_id: str) -> int:
        """Measured resident bytes from the manifest, else the model's files plus a session.

        Raises:
            IntegrityError: a file of the model can no longer be read (see :meth:`file_bytes`).
        """
        entry = self._entries[model_id]
        if entry.cost.resident_bytes:
            return entry.cost.resident_bytes
        sizes = self._file_sizes(model_id)
        # LiteRT's default XNNPACK delegate packs the weights into private memory next to the
        # mapped file (tools/bench_backends.py): reserve both until the first load is measured,
        # as the most a load is charged (residency.meter): anonymous bytes up to the files' size
        # plus a session, and the mapping in whole pages (a trial's 13,976-byte generalist
        # measured 363,976 + 16,384 bytes against a prediction of 377,952 and was then locked out
        # of a 378,000-byte budget that open had accepted).
        mapped = sum(-(-size // PAGE) * PAGE for size in sizes) if entry.backend == "tflite" else 0
        return sum(sizes) + mapped + SESSION_OVERHEAD_BYTES \
            + (isolated.WORKER_OVERHEAD_BYTES if entry.risk == "high" else 0)

    def file_bytes(self, model_id: str) -> int:
        """Bytes on disk of a model's files (its graph and any external-data file).

        Raises:
            IntegrityError: a file was removed or replaced after the ecology was opened.
        """
        return sum(self._file_sizes(model_id))

    def _file_sizes(self, model_id: str) -> list[int]:
        """Sizes of a model's files (see :meth:`file_bytes`)."""
        entry = self._entries[model_id]
        paths = [entry.file.path] + [f.path for f in self.manifest.files
                                     if f.path.startswith(entry.file.path + ".")]  # x.onnx.data
        try:
            return [(self.root / p).stat().st_size for p in paths]
        except OSError as exc:  # removed after open: refused like a file that changed (edge_eco.ondisk)
            raise IntegrityError(f"{self.root.name}: {Path(exc.filename or '?').name!r} cannot be read at load "
                                 f"({exc.strerror}){gone_since_open(exc)}") from exc

    def runtime_of(self, model_id: str) -> str:
        """The backend (runtime) name that runs ``model_id``."""
        return self._entries[model_id].backend

    def anon_cap(self, model_id: str) -> int:
        """The most anonymous bytes one load is charged (residency.meter: weights copied once
        plus a session's buffers; larger readings are other threads' growth)."""
        return self.file_bytes(model_id) * ANON_PER_FILE_BYTE + SESSION_OVERHEAD_BYTES

    def model_paths(self, model_id: str) -> set[str]:
        """Absolute paths of a model's files (its graph and any external-data file)."""
        entry = self._entries[model_id]
        return {str((self.root / p).resolve()) for p in [entry.file.path] + [
            f.path for f in self.manifest.files if f.path.startswith(entry.file.path + ".")]}

    def miss_cost(self, model_id: str, load_times: Mapping[str, float]) -> tuple[float, float]:
        """(reload ms, fallback ms) of a miss: the measured load time in ``load_times`` when there
        is one, else the manifest's."""
        times = load_times.get(model_id)
        load_ms = times if times is not None else (self._entries[model_id].cost.load_ms or 1.0)
        return load_ms, 0.0

    def check_budget(self, budget: Any, excluded: Collection[str]) -> None:
        """Refuse a memory budget that is malformed or cannot hold the largest model in use.

        Args:
            budget: the budget in bytes (0 = unlimited).
            excluded: models the device plan excludes (never loaded, so not checked).
        Raises:
            ManifestError: ``budget`` is not a non-negative integer.
            BudgetError: one model's predicted bytes exceed ``budget``.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ManifestError(f"budget_bytes must be a non-negative integer (0 = unlimited), got {budget!r}")
        if budget:
            need = max(((self.predict_bytes(m), m) for m in self._entries if m not in excluded),
                       default=(0, ""))  # every model excluded: nothing is loaded, no budget check
            if need[0] > budget:
                raise BudgetError(f"model {need[1]!r} needs {need[0]} bytes; the memory budget of "
                                  f"{budget} bytes cannot hold it")

    def open(self, model_id: str) -> backends.Session:
        """Load ``model_id`` and run it once on its manifest's input contract (the files' integrity
        is checked by the caller first: ``Ecology._check_files``).

        Args:
            model_id: the model to load.
        Returns:
            The ready session; the caller closes it.
        Raises:
            BackendError: the model cannot load, or fails the probe run (ModelLoadError).
        """
        entry = self._entries[model_id]
        if entry.input == "text-tokens" and model_id not in self.adapters:
            self.adapters[model_id] = token_adapter(self.root, entry)
        if entry.risk == "high":  # in a sandboxed worker process (no network, memory/CPU limits)
            session = isolated.open(self.root / entry.file.path, backend=entry.backend, output=entry.output,
                                    optimize=entry.input != "hashed-text")
        else:
            session = backends.open_model(entry.backend, self.root / entry.file.path, output=entry.output,
                                          optimize=entry.input != "hashed-text",
                                          max_run_ms=self.manifest.policy.max_run_ms)
        try:  # one run on the manifest's input contract before the model is marked ready
            feeds = self._probes.get(model_id)
            if feeds is None:
                feeds = self._probes[model_id] = self._probe_feeds(model_id)
            probe(session, feeds, len(entry.labels), entry.file.path)
        except BaseException:
            session.close()
            raise
        return session

    def _probe_feeds(self, model_id: str) -> Feeds:
        """Feeds of one made-up request in ``model_id``'s input contract."""
        kind = self._entries[model_id].input
        if kind == "hashed-text":
            return hashed_feeds(*self._featurizer(b"probe"))
        if kind == "dense-vector":
            return {"x": np.zeros((1, self._dense.dim), np.float32)}  # the mean window
        return self.adapters[model_id]("probe")
