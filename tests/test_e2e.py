"""Tiny end-to-end runs on CPU (seconds each) through the real CLI entry point."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl.checkpoint import load_trainer_state
from asyncrl.cli import main
from asyncrl.policy import BUILTIN_MODELS

from conftest import read_jsonl, wait_for_rows

pytestmark = pytest.mark.e2e

BASE = BUILTIN_MODELS["arithmetic"]
TINY = ["--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "2",
        "--eval-limit", "16", "--max-new-tokens", "6", "--warmup-steps", "0", "--lr", "1e-3"]



def _run(tmp_path, *flags) -> Path:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--output-dir", str(out), *flags]) == 0
    return out


def _param_delta(ckpt: Path) -> float:
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(BASE).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()  # plain transformers can load it
    return max((after[k].float() - before[k].float()).abs().max().item() for k in before)


@pytest.mark.parametrize("max_lag", [0, 2])
@pytest.mark.parametrize("loss", ["tb", "online_dpo", "rloo", "grpo", "ppo"])
def test_each_loss_sync_and_async(tmp_path, loss, max_lag):
    out = _run(tmp_path, "--loss", loss, "--max-lag", str(max_lag), "--workers", "thread",
               "--reference-on", "learner" if loss == "ppo" else "generator")
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["staleness_max"] <= max_lag
        assert all(v is not None for v in r.values()), r
    if max_lag == 0:
        assert all(r["staleness_mean"] == 0 for r in rows)
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 4] and evals[0]["wall_time_s"] >= 0
    # an evaluation is stamped with the training time of its weights, not including its own duration
    assert evals[1]["wall_time_s"] - rows[1]["wall_time_s"] < evals[1]["eval_time_s"]
    assert (out / "config.yaml").is_file() and list((out / "tb").iterdir())
    assert _param_delta(out / "checkpoints" / "step_4") > 0


@pytest.mark.parametrize("max_lag", [1, 3])
def test_inline_simulated_lag_is_exact_and_deterministic(tmp_path, max_lag):
    """workers=inline with max_lag N: the first N+1 batches come from the initial weights (staleness
    0..N), then every batch is exactly N updates stale; two runs with one seed are identical."""
    flags = ["--loss", "grpo", "--max-lag", str(max_lag), "--workers", "inline", "--steps", "6", "--eval-every", "0"]
    a = read_jsonl(_run(tmp_path / "a", *flags) / "metrics.jsonl")
    b = read_jsonl(_run(tmp_path / "b", *flags) / "metrics.jsonl")
    assert [r["staleness_max"] for r in a] == [min(s, max_lag) for s in range(6)]
    assert [r["staleness_mean"] for r in a] == [min(s, max_lag) for s in range(6)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_process_workers_two_generators_and_resume(tmp_path):
    out = _run(tmp_path, "--workers", "process", "--num-generators", "2", "--max-lag", "1",
               "--save-every", "2")
    rows = read_jsonl(out / "metrics.jsonl")
    assert max(r["staleness_max"] for r in rows) <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples_seen"] == 4 * 4 * 4
    # resume the same run folder for two more steps: versions and counters continue
    assert main(["train", *TINY, "--steps", "6", "--resume", str(out), "--workers", "thread"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["samples_seen"] == 6 * 4 * 4
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_6"


def test_tba_buffer_run(tmp_path):
    out = _run(tmp_path, "--buffer", "tba", "--workers", "thread", "--max-lag", "1")
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["buffer/size"] > 0
    # replay: later batches may hold samples older than the newest request
    assert all(r["staleness_max"] >= 0 for r in rows)


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = _run(tmp_path, "--workers", "thread")
    assert main(["train", *TINY, "--output-dir", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_ctrl_c_writes_final_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "CI": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncrl.cli", "train", *TINY, "--steps", "100000", "--eval-every", "0",
         "--output-dir", str(out), "--workers", "process"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if not wait_for_rows(out / "metrics.jsonl", 3):
        proc.kill()
        pytest.fail("run did not start")
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    state = load_trainer_state(ckpt)
    assert state["learner"]["version"] == int(ckpt.name.split("_")[1]) >= 3
    assert "interrupted at step" in stdout


@pytest.mark.parametrize("flags", [
    ["--loss", "grpo", "--off-policy-correction", "token_mask", "--is-low", "0.5", "--is-high", "2"],
    ["--loss", "grpo", "--off-policy-correction", "sequence_tis"],
    ["--loss", "grpo", "--off-policy-correction", "sequence_mask", "--kl-bias-correction", "true"],
    ["--loss", "grpo", "--off-policy-correction", "geometric_mask", "--is-geo-delta", "0.2"],
    ["--loss", "grpo", "--decoupled", "true", "--sync-every", "2", "--clip-ratio-c", "3"],
    ["--loss", "ppo", "--decoupled", "true", "--sync-every", "2", "--clip-ratio-c", "3"],
    ["--loss", "ppo", "--off-policy-correction", "token_mask", "--clip-ratio-c", "3"],
    ["--loss", "rloo", "--off-policy-correction", "token_tis"],
], ids=["grpo-token_mask", "grpo-sequence_tis", "grpo-sequence_mask-klbias", "grpo-geometric_mask",
        "grpo-decoupled-dualclip", "ppo-decoupled-dualclip", "ppo-token_mask-dualclip", "rloo-token_tis"])
def test_off_policy_corrections_run(tmp_path, flags):
    """Every correction, dual-clip and decoupled PPO train end to end with exact lag 1, and their
    metrics reach metrics.jsonl."""
    out = _run(tmp_path, *flags, "--max-lag", "1", "--workers", "inline", "--eval-every", "0")
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert all(v is not None for v in r.values()), r
        for k in ("is_weight_mean", "is_masked_token_fraction", "is_masked_seq_fraction",
                  "is_clipped_token_fraction", "is_clipped_seq_fraction"):
            assert 0 <= r[f"loss/{k}"] < 1e6, (k, r[f"loss/{k}"])
    if "--clip-ratio-c" in flags:
        assert all("loss/dual_clip_fraction" in r for r in rows)
    assert _param_delta(out / "checkpoints" / "step_4") > 0
