"""`make demo`: serve the remote generalist on loopback, run the CLINC150 test split, stop the server.

    python tools/demo.py [--data ../shared/data] [--out build/demo-report.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start_server(bundle: Path, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start `edge-eco serve BUNDLE --port 0` and return (process, base URL) once it is ready."""
    proc = subprocess.Popen([str(BIN / "edge-eco"), "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    line = proc.stdout.readline()
    if not line.startswith("edge-eco serve:") or time.monotonic() > deadline:
        proc.kill()
        raise SystemExit(f"remote generalist server did not start: {line!r}")
    url = line.split(" on ")[1].split("/v2/")[0]
    print(line.strip(), flush=True)
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("EDGE_ECO_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default="build/demo-report.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from edge_eco.datasets import fetch_clinc150
    from edge_eco.errors import EdgeEcoError

    try:
        requests = fetch_clinc150(Path(args.data)) / "data_full.json"
    except EdgeEcoError as exc:
        print(f"make demo: error: {exc}", file=sys.stderr)
        return 2
    proc, url = start_server(ROOT / "models" / "minilm")
    try:
        return subprocess.call([str(BIN / "edge-eco"), "run", str(ROOT / "models" / "clinc150"),
                                "--requests", str(requests), "--split", "test", "--remote", url,
                                "--out", args.out])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"remote generalist server stopped (exit {proc.returncode})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
