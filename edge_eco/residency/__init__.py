"""Residency: which models are loaded, within a byte budget.

``manager`` (shell: sessions, threads, locks), ``footprint`` (shell: /proc readings, OS hints),
``policy`` (pure: eviction scoring) and ``simulate`` (pure: trace replay, offline optimum).
"""

from .manager import SESSION_OVERHEAD_BYTES, Residency
from .state import ResidencyStats

__all__ = ["SESSION_OVERHEAD_BYTES", "Residency", "ResidencyStats"]
