"""Live progress of a run (iteration, env steps, mean team return, elapsed, ETA) from its files."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from p2pmarl.algos import algorithm_class
from p2pmarl.config import RunConfig
from p2pmarl.runtime.rundir import RunDir
from p2pmarl.runtime.summary import team_return_curve

REFRESH_SECONDS = 1.0
"""How often the metrics files are re-read."""


class ProgressView:
    """A rich progress bar on a terminal, one plain line per iteration otherwise."""

    def __init__(
        self, run_dir: RunDir, config: RunConfig, n_agents: int, start: int, enabled: bool = True
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.n_agents = n_agents
        self.start = start
        self.enabled = enabled
        phases = algorithm_class(config.algo).rollout_phases(config, n_agents)
        self.steps_per_iteration = sum(phase.steps for phase in phases) * config.n_envs
        """Env transitions of one iteration over all its rollout phases and copies."""
        self.ended: set[int] = set()
        """Agents that crashed for good (the launcher shares its set): left out of the curve."""
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._shown = start
        self._next_read = 0.0

    def __enter__(self) -> ProgressView:
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("iter {task.completed:.0f}/{task.total:.0f}"),
                TextColumn("{task.fields[steps]} env steps"),
                TextColumn("team return {task.fields[team_return]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                f"{self.config.algo} on {self.config.env}",
                total=self.config.iterations,
                completed=self.start,
                steps=0,
                team_return="-",
            )
        return self

    def update(self) -> None:
        if not self.enabled or time.monotonic() < self._next_read:
            return
        self._next_read = time.monotonic() + REFRESH_SECONDS
        curve = team_return_curve(self.run_dir, self.n_agents, self.ended)
        done = len(curve)
        if done <= self._shown and self._progress is None:
            return
        latest = curve[-1] if curve else None
        text = "-" if latest is None else f"{latest:.2f}"
        steps = done * self.steps_per_iteration
        if self._progress is not None:
            self._progress.update(self._task, completed=done, steps=steps, team_return=text)
        else:
            for iteration in range(self._shown, done):
                value = curve[iteration]
                shown = "-" if value is None else f"{value:.2f}"
                self.console.print(
                    f"iteration {iteration + 1}/{self.config.iterations}  "
                    f"env steps {(iteration + 1) * self.steps_per_iteration}"
                    f"  team return {shown}"
                )
        self._shown = done

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, error, traceback)
