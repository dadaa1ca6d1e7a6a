"""Layout of a run directory, seeds, metrics recorder and per-process logging.

::

    RUN_DIR/
      config.json          resolved config, package versions, seeds
      topology.json        the topology as networkx node-link JSON
      endpoints.json       where every process listens (ipc:// or tcp://)
      world.log            world diagnostics;  world.jsonl  world events (connect time, steps)
      agents/agent-I/      log.txt, metrics.jsonl, admm.jsonl, checkpoints/iter-KKKKKK.pt
      pids.json            process id of every child, by name
      summary.json         written by the launcher at the end
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def topology(self) -> Path:
        return self.root / "topology.json"

    @property
    def endpoints(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def pids(self) -> Path:
        return self.root / "pids.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def world_log(self) -> Path:
        return self.root / "world.log"

    @property
    def world_events(self) -> Path:
        return self.root / "world.jsonl"

    def agent_dir(self, agent_id: int) -> Path:
        return self.root / "agents" / f"agent-{agent_id}"

    def agent_log(self, agent_id: int) -> Path:
        return self.agent_dir(agent_id) / "log.txt"

    def agent_metrics(self, agent_id: int) -> Path:
        return self.agent_dir(agent_id) / "metrics.jsonl"

    def agent_admm(self, agent_id: int) -> Path:
        return self.agent_dir(agent_id) / "admm.jsonl"

    def checkpoint(self, agent_id: int, iteration: int) -> Path:
        return self.agent_dir(agent_id) / "checkpoints" / f"iter-{iteration:06d}.pt"

    def checkpoint_iterations(self, agent_id: int) -> list[int]:
        """Iterations (the count completed) for which agent ``agent_id`` has a checkpoint."""
        folder = self.agent_dir(agent_id) / "checkpoints"
        return sorted(int(p.stem.split("-")[1]) for p in folder.glob("iter-*.pt"))


def process_seeds(root_seed: int, n_agents: int) -> tuple[int, list[int]]:
    """World seed and one seed per agent, derived from the root seed (independent streams)."""
    children = np.random.SeedSequence(root_seed).spawn(n_agents + 1)
    seeds = [int(child.generate_state(1, dtype=np.uint32)[0]) for child in children]
    return seeds[0], seeds[1:]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    temporary.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class MetricsRecorder:
    """Appends one JSON object per line; keys are namespaced (``rollout/return``, ``train/kl``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", buffering=1)

    def record(self, values: dict[str, Any]) -> None:
        clean = {k: _finite_or_none(v) for k, v in values.items()}
        self._file.write(json.dumps(clean, default=_json_default) + "\n")

    def close(self) -> None:
        self._file.close()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete JSON lines of a file (a half-written last line is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def setup_process_logging(path: Path, name: str) -> logging.Logger:
    """Log diagnostics of one process to ``path`` with its name in every line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.Formatter.converter = time.gmtime
    return logging.getLogger(f"p2pmarl.{name}")
