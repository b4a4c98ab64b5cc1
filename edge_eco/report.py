"""Metrics of a run: accuracy, oos recall, path mix and latency percentiles. Pure."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np


def percentiles_ms(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 of a list of latencies in ms (zeros when empty)."""
    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    a = np.asarray(latencies_ms, dtype=np.float64)
    return {f"p{q}": round(float(np.percentile(a, q)), 4) for q in (50, 95, 99)}


def accuracy_block(predicted: Sequence[str], gold: Sequence[str | None], reject_label: str) -> dict:
    """accuracy, in_scope_accuracy and oos_recall over the labelled requests."""
    pairs = [(p, g) for p, g in zip(predicted, gold) if g is not None]
    if not pairs:
        return {"accuracy": None, "in_scope_accuracy": None, "oos_recall": None, "labelled": 0}
    ok = [p == g for p, g in pairs]
    ins = [o for o, (_, g) in zip(ok, pairs) if g != reject_label]
    oos = [o for o, (_, g) in zip(ok, pairs) if g == reject_label]
    mean = lambda xs: round(sum(xs) / len(xs), 5) if xs else None  # noqa: E731
    return {"accuracy": mean(ok), "in_scope_accuracy": mean(ins), "oos_recall": mean(oos), "labelled": len(pairs)}


def path_summary(paths: Sequence[str], latencies_ms: Sequence[float], known: Sequence[str]) -> dict:
    """Counts per path and latency percentiles overall and per path."""
    counts = Counter(paths)
    by_path = {p: percentiles_ms([lat for q, lat in zip(paths, latencies_ms) if q == p])
               for p in known if counts.get(p)}
    return {"paths": {p: counts.get(p, 0) for p in known},
            "latency_ms": {**percentiles_ms(latencies_ms), "by_path": by_path}}


def format_report(r: dict) -> str:
    """A readable text rendering of a run report."""
    def pct(x):
        return "   n/a" if x is None else f"{100 * x:6.2f}%"
    lines = [f"edge_eco run: {r['ecology']} on {r['requests']} requests ({r['source']})",
             "",
             f"{'':28}{'accuracy':>10}{'in-scope':>10}{'oos recall':>12}{'p50 ms':>10}{'p95 ms':>10}{'errors':>8}"]
    rows = [("ecology", r, r["latency_ms"])] + [(f"baseline: {k}", v, v["latency_ms"])
                                                for k, v in r.get("baselines", {}).items()]
    for name, m, lat in rows:
        lines.append(f"{name:28}{pct(m['accuracy']):>10}{pct(m['in_scope_accuracy']):>10}"
                     f"{pct(m['oos_recall']):>12}{lat['p50']:>10.3f}{lat.get('p95', 0):>10.3f}{m.get('errors', 0):>8}")
    lines += ["", f"remote rate {pct(r['remote_rate'])}   paths: " +
              ", ".join(f"{k}={v}" for k, v in r["paths"].items())]
    loc = r["local_latency_ms"]
    lines.append(f"  {'local':12} p50 {loc['p50']:.3f} ms  p95 {loc['p95']:.3f} ms  p99 {loc['p99']:.3f} ms"
                 "  (direct + coalition)")
    for p, lat in r["latency_ms"]["by_path"].items():
        lines.append(f"  {p:12} p50 {lat['p50']:.3f} ms  p95 {lat['p95']:.3f} ms  p99 {lat['p99']:.3f} ms")
    lines.append(f"loads {r['loads']}  evictions {r['evictions']}  peak RSS {r['peak_rss_bytes'] / 2**20:.1f} MiB"
                 f"  errors {r.get('errors', 0)}")
    problems = [("ecology", r.get("first_error"))] + [(f"baseline {k}", v.get("first_error"))
                                                      for k, v in r.get("baselines", {}).items()]
    for who, msg in problems:
        if msg:
            lines.append(f"first error ({who}): {msg}")
    for model, seen in r.get("model_errors", {}).items():
        lines.append(f"model error: {model} failed in {seen['requests']} requests (answered without it); "
                     f"first: {seen['first_error']}")
    for reason in r.get("unavailable_reasons", []):
        lines.append(f"remote unavailable: {reason}")
    return "\n".join(lines)
