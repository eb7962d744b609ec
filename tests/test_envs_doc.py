"""The environment script of docs/envs.md runs as it is: a plain file without a main guard, its
environment class defined in the main module and sent to process workers by value."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_environment_script_trains(tmp_path):
    text = (ROOT / "docs" / "envs.md").read_text()
    section = text[text.index("This script runs as it is"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    (tmp_path / "guess.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "guess.py"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps: 2" in proc.stdout
    assert (tmp_path / "runs" / "guess-env" / "metrics.jsonl").is_file()
