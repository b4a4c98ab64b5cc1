"""Measure model loading modes per model size: ONNX Runtime (plain, external data with prepacking
off, memory-mapped .ort) and LiteRT (XNNPACK vs BUILTIN_WITHOUT_DEFAULT_DELEGATES, lock overhead).

Prints one row per (backend mode, size): cold load p50 ms, run p50 us, and the anonymous and
file-backed bytes the model adds after its first run (from /proc/self/smaps_rollup). Ratios are
against the plain mode measured in the same run. Usage: python tools/bench_backends.py [--out f.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_eco.backends import ort as ort_backend, tflite as tfl_backend  # noqa: E402
from edge_eco.residency.footprint import read_footprint, release_heap  # noqa: E402
from edge_eco.build.onnx_mlp import int8_mlp, random_mlp, save  # noqa: E402
from edge_eco.build.tflite_mlp import quantize_mlp, write_tflite  # noqa: E402

N_IN, N_OUT = 512, 8


def to_ort(src: Path, dst: Path) -> None:
    """Convert an .onnx file to ORT format with ONNX Runtime itself (basic optimizations)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def measure(open_fn, x: np.ndarray, loads: int = 7, runs: int = 300) -> dict:
    load_ms, grown = [], []
    for _ in range(loads):
        gc.collect()
        release_heap()
        before = read_footprint()
        t0 = time.perf_counter()
        s = open_fn()
        load_ms.append((time.perf_counter() - t0) * 1e3)
        s.run({"x": x})
        grown.append(read_footprint() - before)
        s.close()
        del s
    s = open_fn()
    s.run({"x": x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run({"x": x})
        t.append((time.perf_counter() - t0) * 1e6)
    s.close()
    return {"load_ms_p50": round(statistics.median(load_ms), 3), "run_us_p50": round(statistics.median(t), 2),
            "anon_bytes": int(statistics.median(g.anon_bytes for g in grown)),
            "file_bytes": int(statistics.median(g.file_bytes for g in grown))}


def lock_overhead(path: Path, x: np.ndarray, runs: int = 2000) -> dict:
    """Run p50 through the session (lock held) vs the bare interpreter, and two threads at once."""
    s = tfl_backend.open(path)
    it, spec = s._it, s._specs[0]
    q = s._quantized(x, spec)
    bare, locked = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.set_tensor(spec[0], q)
        it.invoke()
        it.get_tensor(s._out_index)
        bare.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        s.run({"x": x})
        locked.append((time.perf_counter() - t0) * 1e6)
    two = []

    def worker():
        for _ in range(runs // 2):
            t0 = time.perf_counter()
            s.run({"x": x})
            two.append((time.perf_counter() - t0) * 1e6)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    s.close()
    return {"bare_us_p50": round(statistics.median(bare), 2), "session_us_p50": round(statistics.median(locked), 2),
            "two_threads_us_p50": round(statistics.median(two), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--sizes-kib", default="64,1024,8192,32768", help="weight bytes of the first layer, KiB")
    args = ap.parse_args()
    x = np.random.default_rng(1).normal(size=(1, N_IN)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kib in (int(k) for k in args.sizes_kib.split(",")):
            hidden = max(8, kib * 1024 // N_IN)
            ws, bs = random_mlp(N_IN, hidden, N_OUT, seed=kib)
            model = int8_mlp(ws, bs)
            save(model, tmp / f"e{kib}.onnx", external=True)
            save(model, tmp / f"p{kib}.onnx", external=False)
            to_ort(tmp / f"p{kib}.onnx", tmp / f"m{kib}.ort")
            calib = np.random.default_rng(2).normal(size=(256, N_IN)).astype(np.float32)
            (tmp / f"t{kib}.tflite").write_bytes(write_tflite(quantize_mlp(ws, bs, calib)))
            cases = {
                "ort plain (embedded)": lambda: ort_backend.open(tmp / f"p{kib}.onnx", optimize=False),
                "ort plain (external data)": lambda: ort_backend.open(tmp / f"e{kib}.onnx", optimize=False),
                "ort external-noprepack": lambda: ort_backend.open(tmp / f"e{kib}.onnx", optimize=False,
                                                                   mode="external-noprepack"),
                "ort ort-mmap": lambda: ort_backend.open(tmp / f"m{kib}.ort", optimize=False),
                "tflite xnnpack": lambda: tfl_backend.open(tmp / f"t{kib}.tflite", optimize=True),
                "tflite builtin (no delegate)": lambda: tfl_backend.open(tmp / f"t{kib}.tflite", optimize=False),
            }
            base = None
            for name, fn in cases.items():
                r = {"mode": name, "weight_kib": kib, **measure(fn, x)}
                base = base or r
                r["load_vs_plain"] = round(r["load_ms_p50"] / base["load_ms_p50"], 2)
                r["run_vs_plain"] = round(r["run_us_p50"] / base["run_us_p50"], 2)
                rows.append(r)
                print(f"{kib:>7} KiB  {name:30} load {r['load_ms_p50']:8.3f} ms ({r['load_vs_plain']:5.2f}x)  "
                      f"run {r['run_us_p50']:9.2f} us ({r['run_vs_plain']:5.2f}x)  "
                      f"anon {r['anon_bytes'] / 1024:9.0f} KiB  file {r['file_bytes'] / 1024:9.0f} KiB", flush=True)
        lock = lock_overhead(tmp / "t64.tflite" if (tmp / "t64.tflite").exists() else tmp / f"t{kib}.tflite", x)
    print(f"tflite lock: bare interpreter {lock['bare_us_p50']} us, session (lock + quantize) "
          f"{lock['session_us_p50']} us, two threads sharing one session {lock['two_threads_us_p50']} us")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "tflite_lock": lock}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
