"""Multi-turn environments end to end: sync and async runs (local and Ray), environment errors as
one line, the turn limit, and a generator killed mid-episode."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.config import load_config
from asyncrl.runtime.controller import Controller

from conftest import assert_accounting, read_jsonl, run_killing_a_busy_worker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--task", "env", "--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "2",
        "--eval-limit", "16", "--max-new-tokens", "6", "--warmup-steps", "0", "--lr", "1e-4"]


@pytest.mark.parametrize("mode", [["--max-lag", "0"],
                                  ["--max-lag", "2", "--num-generators", "2", "--workers", "process"],
                                  ["--max-lag", "1", "--generation", "continuous", "--workers", "thread"]])
def test_retry_environment_trains_sync_and_async(tmp_path, mode):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--env", "arithmetic_retry", *mode, "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the tiny model gets many problems wrong: episodes take several tries, some all four (a row
    # without a new reply, possible when asynchronous, has null episode stats)
    fresh = [r for r in rows if r["episode_turns_mean"] is not None]
    assert fresh and all(1 < r["episode_turns_mean"] <= 4 and 0 < r["episode_truncated_mean"] <= 1 for r in fresh)
    assert all("episode_turns_mean" in r for r in rows)
    if mode[1] == "0":
        assert all(r["staleness_max"] == 0 for r in rows)
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 4] and all(1 <= e["turns_mean"] <= 4 for e in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["failed"] is None
    assert_accounting(summary)


def test_turn_limit_ends_an_environment_that_never_does(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--env", "tests.env_fixtures:Endless", "--max-turns", "3", "--max-lag", "0",
                 "--eval-every", "0", "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert all(r["episode_turns_mean"] == 3 and r["episode_truncated_mean"] == 1 for r in rows)


def test_an_environment_that_raises_is_one_line_or_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    flags = [*TINY, "--env", "tests.env_fixtures:Raising", "--max-lag", "0", "--eval-every", "0"]
    assert main(["train", *flags, "--output-dir", str(tmp_path / "stop")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "environment error" in err[0] and "the board is on fire" in err[0], err
    assert "--reward-errors skip" in err[0]
    out = tmp_path / "skip"
    assert main(["train", *flags, "--reward-errors", "skip", "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["reward_errors_total"] > 0 and [r["step"] for r in rows] == [1, 2, 3, 4]


def test_a_generator_killed_mid_episode_is_survived(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the spawned workers import tests.env_fixtures from the current directory
    cfg = load_config(None, dict(task="env", env="tests.env_fixtures:slow_retry", env_args='{"delay_s": 0.02}',
                                 steps=8, prompts_per_step=4, samples_per_prompt=4, eval_every=0, max_new_tokens=6,
                                 warmup_steps=0, lr=1e-3, workers="process", num_generators=2, max_lag=2,
                                 output_dir=str(tmp_path / "run")))
    summary, killed = run_killing_a_busy_worker(Controller(cfg, tmp_path / "run"),
                                                lambda w: os.kill(w.pid, signal.SIGKILL))
    assert killed, "no generator was killed"
    assert summary["steps"] == 8 and summary["failed"] is None and summary["generator_restarts"] == 1
    assert summary["requests_redispatched"] >= 1
    assert_accounting(summary)


def test_environment_on_ray(tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "run"
    try:
        assert main(["train", *TINY, "--env", "arithmetic_retry", "--runtime", "ray", "--num-generators", "2",
                     "--max-lag", "1", "--eval-every", "0", "--output-dir", str(out)]) == 0
    finally:
        assert not ray.is_initialized()
    rows = read_jsonl(out / "metrics.jsonl")
    fresh = [r for r in rows if r["episode_turns_mean"] is not None]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and fresh and all(r["episode_turns_mean"] > 1 for r in fresh)
