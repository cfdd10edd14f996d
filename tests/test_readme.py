"""The README's promise to a new user: its set-up section opens with exactly two
commands, `make demo` and `make test`, and both are targets the Makefile has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_setup_opens_with_the_two_commands_and_make_knows_them() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set-up", 1)[1]
    block = re.search(r"```sh\n(.*?)```", setup, re.S)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    # A dry run: both targets exist and resolve (nothing is built or run).
    dry = subprocess.run(["make", "-n", "demo", "test"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "scripts/demo.exs" in dry.stdout and "pytest" in dry.stdout
    assert (REPO / ".ci" / "run").read_text(encoding="utf-8").count("make test") == 1
