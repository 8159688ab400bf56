"""CI runs the README's test command verbatim: the two must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(text: str | None = None) -> list[str]:
    """The README's ``bash`` blocks (of ``text``, a part of it, if given)."""
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text() if text is None else text,
                      flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    tests = [c for c in readme_commands() if "pytest" in c]
    assert len(tests) >= 1, "the README must show the command that runs the tests"
    command = tests[0].strip()
    assert "-n 2" in command  # two xdist workers, one per core of the machines CI runs on
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, f".ci/run does not run the README's test command {command!r}"


def test_the_readme_first_screen_gives_the_demo_and_the_test_commands() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    commands = readme_commands(head)
    assert any("excise demo" in c for c in commands) and any("pytest" in c for c in commands)
