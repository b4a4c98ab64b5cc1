"""A fuzz plugin for tests/test_fuzz.py: a layer whose loader crashes (SIGSEGV) or hangs on some
cases, to prove the harness counts them and carries on. Not a real backend."""

from __future__ import annotations

import os
import signal
import time

from edge_eco import fuzz
from edge_eco.fuzz_cases import BACKEND_MUTATIONS, onnx_mutations

_ort = fuzz.backend_loader("ort")


def _crashy(src):
    load = _ort(src)

    def run(folder, case, options):
        if case.op == "truncate" and case.args and case.args[0] % 3 == 0:
            os.kill(os.getpid(), signal.SIGSEGV)  # what a runtime crash on a corrupt file looks like
        if case.op == "lfs":
            time.sleep(3600)  # a runtime that never returns
        return load(folder, case, options)
    return run


BACKEND_MUTATIONS["crashy"] = lambda models, rng, n: onnx_mutations(
    [(g, gs, d, ds) for g, gs, d, ds in models if d is not None], rng, n)
fuzz.LOADERS["crashy"] = _crashy
fuzz.MODELS_OF["crashy"] = "ort"
