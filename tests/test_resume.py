"""Exact resume: a synchronous run killed with SIGKILL and resumed from its last periodic
checkpoint logs, step for step, the same metrics as a run that was never interrupted; an
asynchronous one reaches the same step count with the sample accounting intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncrl.checkpoint import find_checkpoint
from asyncrl.cli import main
from asyncrl.runtime.metrics_row import measures_the_clock

from conftest import assert_accounting, read_jsonl

pytestmark = pytest.mark.e2e

STEPS = 60
FLAGS = ["--steps", str(STEPS), "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "10",
         "--eval-limit", "16", "--max-new-tokens", "6", "--warmup-steps", "3", "--lr", "1e-3", "--save-every", "5",
         "--save-every-minutes", "none", "--keep-checkpoints", "0"]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not measures_the_clock(k)} for r in rows]


def kill_after(out: Path, flags: list[str], rows: int) -> None:
    """Start ``asyncrl train`` in a subprocess and SIGKILL it once metrics.jsonl holds ``rows`` rows."""
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "asyncrl.cli", "train", *flags, "--output-dir", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own: {proc.stderr.read()[-2000:]}"


@pytest.mark.parametrize("extra", [
    ["--loss", "tb"],
    ["--loss", "grpo", "--buffer", "tba", "--per-prompt-capacity", "8"],  # a buffer whose contents carry over
    ["--task", "env", "--env", "arithmetic_retry", "--lr", "1e-4"],  # multi-turn episodes
])
def test_a_killed_synchronous_run_resumes_bitwise(tmp_path, extra):
    flags = [*FLAGS, "--max-lag", "0", *extra]
    ref = tmp_path / "uninterrupted"
    assert main(["train", *flags, "--output-dir", str(ref)]) == 0
    out = tmp_path / "killed"
    kill_after(out, flags, 12)
    ckpt = find_checkpoint(out)
    k = int(ckpt.name.split("_")[1])
    logged = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert 10 <= k <= max(logged) < STEPS, (k, logged[-1])
    assert main(["train", "--resume", str(out)]) == 0  # the checkpoint's config.yaml supplies the rest
    got, want = read_jsonl(out / "metrics.jsonl"), read_jsonl(ref / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # steps after k logged once, by the resumed run
    assert comparable(got) == comparable(want)
    assert comparable(read_jsonl(out / "eval.jsonl")) == comparable(read_jsonl(ref / "eval.jsonl"))
    # The clock continues across the resume instead of restarting at 0.
    walls = [r["wall_time_s"] for r in got]
    assert walls == sorted(walls)


def test_a_killed_asynchronous_run_resumes_to_the_same_step_count(tmp_path):
    flags = [*FLAGS, "--max-lag", "2", "--num-generators", "2", "--workers", "process"]
    out = tmp_path / "killed"
    kill_after(out, flags, 12)
    assert main(["train", *flags, "--resume", str(out)]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and not summary["interrupted"]
    assert_accounting(summary)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["staleness_max"] <= 2 for r in rows)
    seen = [r["samples_seen"] for r in rows]
    assert seen == sorted(seen) and seen[-1] == STEPS * 4 * 4


def test_resume_refuses_a_changed_algorithm_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--eval-every", "0",
             "--eval-limit", "4", "--max-new-tokens", "4", "--max-lag", "0"]
    assert main(["train", *small, "--output-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "3", "--lr", "1e-3", "--loss", "grpo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different algorithm" in err[0], err
    assert "loss ('tb' -> 'grpo')" in err[0] and "lr (5e-05 -> 0.001)" in err[0] and "steps" not in err[0]
    # Changing how it runs is fine (steps, evaluation, where the generators run) ...
    assert main(["train", "--resume", str(out), "--steps", "3", "--workers", "thread", "--eval-every", "1"]) == 0
    # ... and --resume-force takes the new algorithm.
    assert main(["train", "--resume", str(out), "--steps", "4", "--lr", "1e-3", "--resume-force"]) == 0
    import yaml

    assert yaml.safe_load((out / "checkpoints" / "step_4" / "config.yaml").read_text())["optimizer"]["lr"] == 1e-3
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
