"""Before/after guard: the existing algorithms' seeded numbers stay bit-identical.

``tests/golden.json`` holds, for a tiny seeded run of each existing variant, the team-return curve
and a hash of every agent's final policy and value parameters, recorded at commit 420e35b (before
the runtime grew rollout phases, copy groups, retransmission, off-policy cadence and new
backends). A change to the runtime that alters these numbers fails here; an issue that changes
them on purpose must say so and re-record them with ``python -m tests.test_golden --record``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden.json"
RUNS = {
    "itrpo": ["--algo", "itrpo"],
    "matrpo": ["--algo", "matrpo", "--admm-schedule", "seeded", "--admm-iterations", "9"],
    "ctrpo": ["--algo", "ctrpo"],
}
COMMON = [
    "--topology", str(REPO / "topologies/ring3.yaml"), "--env", "spread",
    "--steps-per-iteration", "64", "--n-envs", "4", "--episode-length", "8", "--iterations", "2",
    "--seed", "3", "--no-progress", "--json",
]
EXTRA: list[str] = ["--env-backend", "mpe2"]
"""Flags that pin the reference configuration where a later default differs: the batched
particle world became the default backend (issue 15); the hashes were recorded on mpe2."""


def parameter_hash(checkpoint: Path) -> str:
    """SHA-256 over the policy and value parameters of one checkpoint, in key order."""
    state = torch.load(checkpoint, weights_only=False)["algorithm"]
    digest = hashlib.sha256()
    for net in ("policy", "value_net"):
        for key, tensor in sorted(state[net].items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def seeded_numbers(algo: str, out: Path) -> dict:
    """Run one tiny seeded launch of ``algo``; its return curve and parameter hashes."""
    result = subprocess.run(
        [sys.executable, "-m", "p2pmarl", "launch", *COMMON, *RUNS[algo], *EXTRA,
         "--out", str(out)],
        capture_output=True, text=True, timeout=150, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    run = Path(summary["run_dir"])
    hashes = {}
    for agent_dir in sorted((run / "agents").iterdir()):
        checkpoints = sorted((agent_dir / "checkpoints").glob("iter-*.pt"))
        hashes[agent_dir.name] = parameter_hash(checkpoints[-1])
    return {"team_return_curve": summary["team_return_curve"], "parameters": hashes}


@pytest.mark.parametrize("algo", sorted(RUNS))
def test_seeded_numbers_match_the_recorded_ones(algo, no_leaked_processes):
    golden = json.loads(GOLDEN.read_text())[algo]
    assert seeded_numbers(algo, no_leaked_processes) == golden


if __name__ == "__main__":
    import tempfile

    if "--record" not in sys.argv:
        raise SystemExit("usage: python -m tests.test_golden --record")
    with tempfile.TemporaryDirectory() as folder:
        recorded = {algo: seeded_numbers(algo, Path(folder) / algo) for algo in sorted(RUNS)}
    GOLDEN.write_text(json.dumps(recorded, indent=1) + "\n")
    print(json.dumps(recorded, indent=1))
