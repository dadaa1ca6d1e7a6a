"""The launcher's side of crash injection: which agent process dies when, and what follows.

The fault spec's ``crash`` entries (see :mod:`p2pmarl.runtime.faults`) are per agent and in order:
entry n applies to the agent's process of *life* n (0 for the first process, n after the n-th
restart). ``at_iteration`` crashes are executed by the agent itself (exact and reproducible);
``at_seconds`` crashes by the launcher, which sends SIGKILL. Either way the launcher sees the
process end with SIGKILL, checks that the plan expected it (anything else is a failure of the run),
records it, and, for ``restart: true``, starts the agent again from its last checkpoint.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

from p2pmarl.runtime.faults import Crash, FaultSpec, agent_crashes


@dataclass
class CrashPlan:
    """Crash entries of a run and what has happened to them so far."""

    spec: FaultSpec | None
    started: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when the run started (the launcher sets it just before it forks the
    run's processes, after its preload): the origin of ``at_seconds``."""
    lives: dict[int, int] = field(default_factory=dict)
    """Current life of every agent that has crashed at least once."""
    ended: set[int] = field(default_factory=set)
    """Agents that crashed without restart: no process of theirs runs any more."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """``crash`` and ``restart`` events, in the format of ``faults.jsonl``."""
    _killed: set[tuple[int, int]] = field(default_factory=set)

    def life(self, agent: int) -> int:
        return self.lives.get(agent, 0)

    def current(self, agent: int) -> Crash | None:
        """The crash entry that applies to the agent's running process, if any."""
        crashes = agent_crashes(self.spec, agent)
        life = self.life(agent)
        return crashes[life] if life < len(crashes) else None

    def due_kills(self, agents: range) -> list[int]:
        """Agents whose running process is due an ``at_seconds`` SIGKILL now (each only once)."""
        elapsed = time.monotonic() - self.started
        due = []
        for agent in agents:
            crash = self.current(agent)
            key = (agent, self.life(agent))
            if crash is None or crash.at_seconds is None or key in self._killed:
                continue
            if agent not in self.ended and elapsed >= crash.at_seconds:
                self._killed.add(key)
                due.append(agent)
        return due

    def expected(self, agent: int, exit_code: int) -> Crash | None:
        """The entry explaining the agent's process ending with ``exit_code``, or None when the
        exit was not planned (then it is a failure of the run)."""
        crash = self.current(agent)
        if crash is None or exit_code != -signal.SIGKILL:
            return None
        return crash

    def record_crash(self, agent: int, crash: Crash, pid: int) -> None:
        """The agent's process is gone as planned; next life if it restarts, else ended."""
        self.events.append({
            "time": time.time(), "elapsed": round(time.monotonic() - self.started, 6),
            "agent": agent, "event": "crash", "kind": "process", "reason": "sigkill",
            "life": self.life(agent), "pid": pid, "at_iteration": crash.at_iteration,
            "at_seconds": crash.at_seconds, "restart": crash.restart,
        })
        if crash.restart:
            self.lives[agent] = self.life(agent) + 1
        else:
            self.ended.add(agent)

    def record_restart(self, agent: int, checkpoint_iteration: int, pid: int) -> None:
        self.events.append({
            "time": time.time(), "elapsed": round(time.monotonic() - self.started, 6),
            "agent": agent, "event": "restart", "kind": "process", "reason": "checkpoint",
            "life": self.life(agent), "pid": pid, "checkpoint_iteration": checkpoint_iteration,
        })
