"""OpenAI-compatible vLLM simulator (no GPU, no model): one replica or several, for tests."""

from __future__ import annotations

from .app import STATE, create_sim_app
from .engine import SimStats
from .runner import SimCluster, SimServer, start_replicas, start_simulator
from .settings import DEFAULT_MODEL, FAULT_MODES, SimSettings

__all__ = [
    "DEFAULT_MODEL",
    "FAULT_MODES",
    "STATE",
    "SimCluster",
    "SimServer",
    "SimSettings",
    "SimStats",
    "create_sim_app",
    "start_replicas",
    "start_simulator",
]
