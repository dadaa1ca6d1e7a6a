"""Shared fixtures: single-threaded torch, and a check that no test leaks a p2pmarl process."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_leaked_processes(tmp_path: Path):
    """Yields a run output folder; after the test, nothing started from it may be alive."""
    out = tmp_path / "runs"
    yield out
    leaked = processes_mentioning(str(out))
    for pid in leaked:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    assert not leaked, f"processes leaked by the test: {leaked}"
