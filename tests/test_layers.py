"""The package's layers (docs/architecture.md), kept by import-linter: a module imports only from
layers below its own, and no package's modules import each other in a circle, imports inside
functions included. The contracts are ``[tool.importlinter]`` in pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import asyncrl

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(asyncrl.__file__).resolve().parents[1]  # the asyncrl these tests import, not an installed copy


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else ["lint-imports"]
    out = subprocess.run([*cmd, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
    report = out.stdout + out.stderr
    # On failure the report names each import that breaks a layer or closes a circle, with its line.
    assert out.returncode == 0, report[report.find("Broken contracts"):] if "Broken contracts" in report else report
    assert "0 broken" in report


def test_the_cli_starts_without_torch():
    """``asyncrl --help`` / ``config`` / ``plot`` do not pay for torch and transformers (2.3 s here):
    only the commands that run models import them."""
    code = ("import sys, asyncrl.cli; heavy = sorted({'torch', 'transformers', 'matplotlib'} & set(sys.modules)); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"importing asyncrl.cli loaded {out.stdout.strip()} {out.stderr[-2000:]}"
