"""Every `p2pmarl …` command shown in the README and docs/ is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from p2pmarl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for document in DOCUMENTS:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", document.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("p2pmarl "):
                    command = re.split(r"\s[#>|]", line)[0]
                    commands.append((document.name, command))
    return commands


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20
    assert {c.split()[1] for _, c in COMMANDS} >= {"launch", "topology", "inspect", "evaluate"}


@pytest.mark.parametrize(("document", "command"), COMMANDS)
def test_documented_command_parses(document, command):
    words = [w for w in shlex.split(command)[1:] if not (w.startswith("[") or w.endswith("]"))]
    try:
        build_parser().parse_args(words)
    except SystemExit as error:
        pytest.fail(f"{document}: `{command}` is rejected by the CLI ({error})")
