"""The list of experiments, in suite order, and their descriptors by name.

Adding an experiment: write its module (ending in `EXPERIMENT = Experiment(...)`, see
`experiments.descriptor`) and add its module name here. Nothing else.
"""

from __future__ import annotations

import importlib

from experiments.descriptor import Experiment

# browser-connections follows the capacity experiments (scale, idle): how many streams one
# browser tab holds to one origin; it needs Chromium (skipped with the reason without it)
MODULES = ("latency", "rtt", "reconnect", "cancel", "proxy", "idle_timeout", "loss", "scale",
           "idle", "scale_out", "browser_connections", "relay", "tls", "http2", "hol_blocking",
           "failover", "storm", "auth", "http3")  # fmt: skip


def _load() -> dict[str, Experiment]:
    out: dict[str, Experiment] = {}
    for module_name in MODULES:
        experiment = importlib.import_module(f"experiments.{module_name}").EXPERIMENT
        out[experiment.name] = experiment
    return out


EXPERIMENTS: dict[str, Experiment] = _load()
SUITE: tuple[str, ...] = tuple(name for name, e in EXPERIMENTS.items() if e.in_suite)


def get(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        known = ", ".join(EXPERIMENTS)
        raise ValueError(f"unknown experiment {name!r}; choose from {known}") from None
