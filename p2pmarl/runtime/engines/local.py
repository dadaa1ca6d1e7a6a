"""The local engine: the world and every agent as processes forked on this machine.

Forked from a preloaded parent (each dies with the launcher: ``PR_SET_PDEATHSIG``), watched
through their exit codes, and stopped with SIGTERM then SIGKILL. It also executes and follows the
crashes of the fault spec (:mod:`p2pmarl.runtime.crashes`). The default engine of
``p2pmarl launch`` (``--engine local``).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2pmarl.config import RunConfig
from p2pmarl.runtime.crashes import CrashPlan
from p2pmarl.runtime.rundir import RunDir, write_json

POLL_INTERVAL = 0.25
"""Seconds between checks of the child processes and their progress files."""
SHUTDOWN_GRACE = 3.0
"""Seconds a child gets between SIGTERM and SIGKILL."""
FINISH_GRACE = 30.0
"""Seconds agents get to exit after the world has finished."""
LOG_TAIL_LINES = 20
"""Lines of a dead process's log printed by the launcher."""


CHILD_MODULES = ("p2pmarl.runtime.world", "p2pmarl.runtime.agent")
"""Imported once by the launcher, then forked: 24 agents start in well under a second."""
LAZY_MODULES = ("torch.fx.experimental.symbolic_shapes",)
"""Modules torch imports only on first use inside a learning step, preloaded for the same reason:
``torch.autograd.grad`` with ``grad_outputs`` (every Fisher-vector product) imports
``symbolic_shapes`` and with it sympy, about 2 s of CPU and 40 MB of private memory in every
agent process that imports it itself (issue 15)."""


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: multiprocessing.process.BaseProcess
    output: Path
    log: Path
    agent: int | None = None
    """The agent id of an agent process (None for the world)."""

    def poll(self) -> int | None:
        """Exit code (negative: killed by that signal), or None while running."""
        return self.process.exitcode

    def wait(self, timeout: float) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode



def _die_with_parent() -> None:
    """Child-side: get SIGKILL when the launcher dies, so no process is ever orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run_main(module: str, args: list[str], output: str | Path) -> int:
    """``module.main(args)`` with stdout and stderr appended to ``output``; its exit code.

    An exception is printed to ``output`` and gives 1; logging is shut down and both streams
    flushed on the way out. Shared by forked children and Ray actors.
    """
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    try:
        return importlib.import_module(module).main(args)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()


def _child_main(module: str, args: list[str], output: str) -> None:
    """Entry point of a forked child: own session, output to its file, then the module's main."""
    _die_with_parent()
    os.setsid()  # Ctrl-C reaches the launcher only; it stops the children itself
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 1
    try:
        code = run_main(module, args, output)
    finally:
        # Skip interpreter teardown inherited from the launcher (atexit hooks, zmq context
        # destructors, thread joins): a forked child must not hang on its way out.
        os._exit(code)



def _preload() -> None:
    """Import what every child needs once, here, so N forks do not each import it on 2 cores.

    Creating a network triggers torch's lazy imports; ``gc.freeze`` keeps the children's first
    garbage collections from touching (and so copying) the inherited objects.
    """
    for module in (*CHILD_MODULES, *LAZY_MODULES):
        importlib.import_module(module)
    from p2pmarl.algos.networks import CategoricalPolicy

    CategoricalPolicy(2, (2,), (2,))
    gc.collect()
    gc.freeze()



class LocalEngine:
    """Starts, watches and stops the processes of one run on this machine."""

    def __init__(
        self, run_dir: RunDir, config: RunConfig, n_agents: int, start: int,
        crash_plan: CrashPlan | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.n_agents = n_agents
        self.start = start
        self.crash_plan = crash_plan or CrashPlan(None)
        self.children: list[Child] = []
        """The world, then the running process of each agent (index 1 + agent id)."""
        self.retired: list[Child] = []
        """Agent processes that crashed as planned."""

    def spawn(self) -> None:
        _preload()
        # ``at_seconds`` counts from here: the preload's imports (seconds on a loaded machine)
        # are not part of the run, and a clock started before them could fire before the
        # agents have even connected.
        self.crash_plan.started = time.monotonic()
        self._spawn("world", CHILD_MODULES[0], self._common(self.start), self.run_dir.world_log)
        for agent in range(self.n_agents):
            self._spawn_agent(agent, self.start, life=0)
        self._write_pids()

    def _common(self, start: int) -> list[str]:
        return ["--run-dir", str(self.run_dir.root), "--start-iteration", str(start)]

    def _spawn_agent(self, agent: int, start: int, life: int) -> Child:
        args = [*self._common(start), "--agent", str(agent), "--life", str(life)]
        return self._spawn(f"agent {agent}", CHILD_MODULES[1], args, self.run_dir.agent_log(agent),
                           agent)

    def _write_pids(self) -> None:
        write_json(self.run_dir.pids, {c.name: c.process.pid for c in self.children})

    def _spawn(
        self, name: str, module: str, args: list[str], log: Path, agent: int | None = None
    ) -> Child:
        output = log.with_name(log.stem + ".out")
        output.parent.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("fork")
        process = context.Process(
            target=_child_main, args=(module, args, str(output)), name=name, daemon=False
        )
        process.start()
        child = Child(name, process, output, log, agent)
        if agent is None or len(self.children) <= 1 + agent:
            self.children.append(child)
        else:
            self.children[1 + agent] = child
        return child

    def _agents_running(self) -> list[Child]:
        return [c for c in self.children[1:] if c.agent not in self.crash_plan.ended]

    def _inject_kills(self) -> None:
        """``at_seconds`` crashes: SIGKILL the agent's running process."""
        for agent in self.crash_plan.due_kills(range(self.n_agents)):
            child = self.children[1 + agent]
            if child.poll() is None:
                logging.getLogger(__name__).warning("injected crash: SIGKILL %s", child.name)
                os.kill(child.process.pid, signal.SIGKILL)

    def _planned_crash(self, child: Child, code: int) -> bool:
        """Handle an agent process that ended with ``code``; False if that was not planned."""
        assert child.agent is not None
        crash = self.crash_plan.expected(child.agent, code)
        if crash is None:
            return False
        self.crash_plan.record_crash(child.agent, crash, child.process.pid)
        self.retired.append(child)
        if crash.restart:
            start = max(self.run_dir.checkpoint_iterations(child.agent), default=0)
            life = self.crash_plan.life(child.agent)
            new = self._spawn_agent(child.agent, start, life)
            self.crash_plan.record_restart(child.agent, start, new.process.pid)
            self._write_pids()
        return True

    def watch(self, on_poll: Callable[[], None]) -> tuple[str, str | None]:
        """Wait until the world finishes or a process dies unplanned; returns (status, culprit).

        Crashes of the fault spec are executed here (``at_seconds``) or noticed (the process
        ended with SIGKILL as planned) and followed by a restart when the spec asks for one.
        """
        world = self.children[0]
        finished_at: dict[str, float] = {}
        while True:
            on_poll()
            self._inject_kills()
            for child in self._agents_running():
                code = child.poll()
                if code is not None and code != 0:
                    if self._planned_crash(child, code):
                        continue
                    return "failed", child.name
                if code == 0:
                    # An agent that finished cleanly is normal while the world is shutting
                    # down; one that finished while the world keeps waiting for it is not.
                    since = finished_at.setdefault(child.name, time.monotonic())
                    if world.poll() is None and time.monotonic() - since > FINISH_GRACE:
                        return "failed", child.name
            code = world.poll()
            if code is not None:
                return ("completed", None) if code == 0 else ("failed", world.name)
            time.sleep(POLL_INTERVAL)

    def wait_agents(self, timeout: float) -> str | None:
        """After the world is done: wait for agents to exit; returns the first that failed."""
        deadline = time.monotonic() + timeout
        for child in self._agents_running():
            code = child.wait(max(0.1, deadline - time.monotonic()))
            if code != 0:
                return child.name
        return None

    def stop_all(self) -> None:
        """SIGTERM every live child, SIGKILL what is left after the grace period, reap all."""
        for child in self.retired:
            child.wait(SHUTDOWN_GRACE)
        for child in self.children:
            if child.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for child in self.children:
            if child.wait(max(0.05, deadline - time.monotonic())) is None:
                child.process.kill()
                child.wait(SHUTDOWN_GRACE)

    def describe(self) -> dict:
        return {"name": "local"}

    def describe_failure(self, name: str) -> str:
        child = next(c for c in self.children if c.name == name)
        code = child.poll()
        how = "is unresponsive" if code is None else f"exited with code {code}"
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        lines = [f"{name} {how}. Last lines of {child.log} and {child.output.name}:"]
        for path in (child.log, child.output):
            lines.extend("    " + line for line in _tail(path, LOG_TAIL_LINES))
        return "\n".join(lines)


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []

