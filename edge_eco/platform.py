"""Device-class presets (``platforms/*.toml``): budgets a deployment must respect. Pure parsing.

A platform names a memory budget for resident models, a latency budget for the local path, the
threads a model may use, the network class (which sets whether and how fast the remote generalist
is reachable), the share of requests that may go remote, and a CPU speed factor: how many times
longer than the machine that measured the device profile a local computation takes there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import tomlread
from .backends import MAX_THREADS
from .errors import ManifestError

NETWORKS = ("offline", "cellular", "wifi", "ethernet")
# Round-trip time added to a remote call, per network class (ms). Estimates: loopback/LAN
# ethernet ~0.5-1 ms; home Wi-Fi to a nearby server a few ms; 4G/LTE typically 30-60 ms.
NETWORK_RTT_MS = {"offline": None, "cellular": 50.0, "wifi": 5.0, "ethernet": 1.0}
PLATFORMS_DIR = Path(__file__).resolve().parent.parent / "platforms"
_FIELDS = {"name", "memory_budget_bytes", "latency_budget_ms", "threads", "network", "remote_budget_rate",
           "cpu_factor", "source", "estimates"}


@dataclass(frozen=True)
class Platform:
    """A device class's budgets.

    ``cpu_factor`` multiplies local times measured on the profiling machine (1.0: same speed).
    ``remote_budget_rate`` is the largest share of requests that may go remote (0 when offline).
    """

    name: str
    memory_budget_bytes: int
    latency_budget_ms: float
    threads: int = 1
    network: str = "ethernet"
    remote_budget_rate: float = 0.2
    cpu_factor: float = 1.0
    source: str = ""
    estimates: str = ""

    @property
    def remote_rtt_ms(self) -> float | None:
        """Round trip added to a remote call on this network; None when offline."""
        return NETWORK_RTT_MS[self.network]


def parse_platform(text: str, where: str = "platform") -> Platform:
    """Parse and validate the text of a platform TOML file.

    Raises:
        ManifestError: invalid TOML, a missing or unknown field, a value out of range.
    """
    try:
        data = tomlread.loads(text)
    except tomlread.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {unknown}")

    def num(key: str, kind: type, lo: float, hi: float, default=...):
        if key not in data:
            if default is ...:
                raise ManifestError(f"{where}: missing required field {key!r}")
            return default
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise ManifestError(f"{where}.{key}: expected {kind.__name__}, got {v!r}")
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ManifestError(f"{where}.{key}: {v!r} is out of range [{lo}, {hi}]")
        return kind(v)

    def text_field(key: str, default=...) -> str:
        v = data.get(key, default)
        if v is ...:
            raise ManifestError(f"{where}: missing required field {key!r}")
        if not isinstance(v, str):
            raise ManifestError(f"{where}.{key}: expected a string, got {v!r}")
        return v

    network = text_field("network", "ethernet")
    if network not in NETWORKS:
        raise ManifestError(f"{where}.network: {network!r} is not one of {list(NETWORKS)}")
    remote_rate = num("remote_budget_rate", float, 0.0, 1.0, 0.0 if network == "offline" else 0.2)
    if network == "offline" and remote_rate > 0:
        raise ManifestError(f"{where}.remote_budget_rate: an offline platform cannot send requests remote")
    return Platform(name=text_field("name"), memory_budget_bytes=num("memory_budget_bytes", int, 1, 1 << 50),
                    latency_budget_ms=num("latency_budget_ms", float, 1e-3, 1e6),
                    threads=num("threads", int, 1, MAX_THREADS, 1), network=network, remote_budget_rate=remote_rate,
                    cpu_factor=num("cpu_factor", float, 1e-3, 1e4, 1.0), source=text_field("source", ""),
                    estimates=text_field("estimates", ""))


def load_platform(name_or_path: str | Path, presets: Path = PLATFORMS_DIR) -> Platform:
    """A platform by preset name (``platforms/NAME.toml``) or by path to a TOML file.

    Raises:
        ManifestError: no such preset or file, or the file is malformed.
    """
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = presets / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in preset_paths(presets)) or "none"
        raise ManifestError(f"platform {str(name_or_path)!r}: no such file or preset (presets: {known})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"platform {path}: cannot read it ({exc})") from exc
    return parse_platform(text, str(path))


def preset_paths(presets: Path = PLATFORMS_DIR) -> list[Path]:
    """The preset files, sorted by name."""
    return sorted(presets.glob("*.toml")) if presets.is_dir() else []
