"""TensorBoard scalars from a run directory's JSONL records (``--tensorboard``, optional extra).

The agents' ``metrics.jsonl`` (one record per training iteration) and ``admm.jsonl`` (one per
edge activation) stay the source of truth; :class:`TensorBoardExporter` turns them into event
files under ``RUN_DIR/tensorboard/agent-I/``, incrementally while the launcher watches a run
(so TensorBoard shows it as it goes) or all at once for an existing run
(``p2pmarl inspect RUN --tensorboard``). Nothing is added to the agent processes.

Tags: every numeric field of an iteration record under its own key (``rollout/return``,
``train/kl``, ``train/value_loss``, ``net/bytes_sent``, ``faults/dropped``, ...; lists as
``key/INDEX``), step = iteration; and per edge of a committed activation
``admm/edge-I-J/{disagreement,primal,dual}`` (RMS residuals), step = that edge's activation
count at this agent.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from p2pmarl.config import ConfigError
from p2pmarl.runtime.rundir import RunDir

TENSORBOARD_DIR = "tensorboard"
"""Folder of the event files inside a run directory."""
REFRESH_SECONDS = 2.0
"""How often a running export reads the JSONL files again."""
RESIDUALS = {"disagreement_rms": "disagreement", "primal_rms": "primal", "dual_rms": "dual"}
SKIPPED = frozenset({"iteration", "agent"})
INSTALL_HINT = "pip install 'p2pmarl[tensorboard]' (tensorboardX)"


def summary_writer_class() -> Any:
    """tensorboardX's SummaryWriter, or a ConfigError that says how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard needs tensorboardX: {INSTALL_HINT}") from None
    return SummaryWriter


class _Tail:
    """New complete lines of a growing JSONL file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every finite number in ``record``; lists become ``key/INDEX``."""
    for key, value in record.items():
        if key in SKIPPED and not prefix:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, list):
            yield from scalars({str(i): v for i, v in enumerate(value)}, tag + "/")
        elif isinstance(value, int | float) and math.isfinite(value):
            yield tag, float(value)


class TensorBoardExporter:
    """Writes each learner's records to ``RUN_DIR/tensorboard/agent-I/``.

    Starts from scratch (an existing ``tensorboard/`` folder is replaced) so that a resumed run
    or a second conversion never duplicates points; :meth:`update` converts what was appended.
    """

    def __init__(self, run_dir: RunDir, n_learners: int) -> None:
        writer_class = summary_writer_class()
        self.root = run_dir.root / TENSORBOARD_DIR
        shutil.rmtree(self.root, ignore_errors=True)
        self.writers = [
            writer_class(logdir=str(self.root / f"agent-{agent}")) for agent in range(n_learners)
        ]
        self.metrics = [_Tail(run_dir.agent_metrics(agent)) for agent in range(n_learners)]
        self.activations = [_Tail(run_dir.agent_admm(agent)) for agent in range(n_learners)]
        self.edge_counts: list[defaultdict[str, int]] = [
            defaultdict(int) for _ in range(n_learners)
        ]
        self._next = 0.0

    def update(self, force: bool = False) -> int:
        """Convert new records (at most every :data:`REFRESH_SECONDS` unless ``force``);
        returns the number of scalars written."""
        if not force and time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + REFRESH_SECONDS
        written = 0
        for agent, writer in enumerate(self.writers):
            for record in self.metrics[agent].records():
                if "iteration" not in record:
                    continue
                for tag, value in scalars(record):
                    writer.add_scalar(tag, value, int(record["iteration"]))
                    written += 1
            for record in self.activations[agent].records():
                written += self._activation(agent, record)
            writer.flush()
        return written

    def _activation(self, agent: int, record: dict[str, Any]) -> int:
        edge = record.get("edge")
        if record.get("status") != "committed" or not isinstance(edge, list) or len(edge) != 2:
            return 0
        name = f"admm/edge-{edge[0]}-{edge[1]}"
        step = self.edge_counts[agent][name]
        self.edge_counts[agent][name] += 1
        written = 0
        for key, short in RESIDUALS.items():
            value = record.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                self.writers[agent].add_scalar(f"{name}/{short}", float(value), step)
                written += 1
        return written

    def close(self) -> None:
        self.update(force=True)
        for writer in self.writers:
            writer.close()


def export_run(root: str | Path) -> Path:
    """Convert an existing run directory; returns its ``tensorboard/`` folder."""
    run_dir = RunDir(root)
    learners = 0
    while run_dir.agent_metrics(learners).exists():
        learners += 1
    if not learners:
        raise ConfigError(f"{root}: no agents/agent-0/metrics.jsonl; is this a p2pmarl run?")
    exporter = TensorBoardExporter(run_dir, learners)
    exporter.close()
    return exporter.root


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``logdir``: tag → [(step, value)], file order.

    Reads the TFRecord framing (length, length CRC, record, record CRC) and the ``Event``
    protocol buffer directly, so a run can be checked without TensorBoard itself.
    """
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            body = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(body)
            for value in event.summary.value:
                found[value.tag].append((int(event.step), float(value.simple_value)))
    return dict(found)
