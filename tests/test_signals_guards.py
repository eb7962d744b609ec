"""SIGTERM and the numerical guards (issue 10, items 4 and 6).

- SIGTERM, what schedulers and clusters send before they kill a job, stops a run like Ctrl-C: the
  generators stop, a final checkpoint is written, the process exits within seconds with code 143
  (128 + 15, as a shell reports a process killed by SIGTERM); a second signal aborts at once.
- A non-finite loss or gradient norm skips the optimizer update and is counted; too many in a row
  stop the run (exit code 1) with the weights of the last finite update in the final checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asyncrl import learner as learner_mod
from asyncrl.checkpoint import list_checkpoints
from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.runtime import controller as controller_mod
from asyncrl.runtime.controller import Controller, RunAborted
from asyncrl.signals import SignalStop

from conftest import read_jsonl, wait_for_rows

TINY = ["--steps", "10000", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--eval-every", "0",
        "--eval-limit", "4", "--max-new-tokens", "4", "--save-every", "0", "--save-every-minutes", "none"]


@pytest.mark.e2e
def test_sigterm_stops_process_generators_saves_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncrl.cli", "train", *TINY, "--workers", "process", "--num-generators", "2",
         "--max-lag", "2", "--output-dir", str(out)],
        env={**os.environ, "CI": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_rows(out / "metrics.jsonl", 3, timeout_s=180), proc.stderr.read() if proc.poll() else ""
        t_signal = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        exit_s = time.perf_counter() - t_signal
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert exit_s < 30, f"took {exit_s:.1f} s to stop after SIGTERM"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGTERM"
    steps = summary["steps"]
    assert f"interrupted at step {steps} (SIGTERM)" in stdout
    assert [p.name for p in list_checkpoints(out)] == [f"step_{steps}"]
    assert max(r["step"] for r in read_jsonl(out / "metrics.jsonl")) == steps


def test_a_second_signal_aborts_without_the_final_checkpoint(tmp_path, monkeypatch, capsys):
    """In-process so the timing is exact: the first SIGTERM arrives during step 3, the second
    while the final checkpoint is being written. The abort is a BaseException, so nothing on the
    way turns it into an ordinary error, and the periodic checkpoint stays the newest one."""
    out = tmp_path / "run"
    state = {"steps": 0}
    log_step = controller_mod.RunLogger.log_step

    def log_and_signal(self, row):
        log_step(self, row)
        state["steps"] += 1
        if state["steps"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    save = controller_mod.save_checkpoint

    def save_and_signal(run_dir, step, *a, **kw):
        if step == 3:  # the final checkpoint: a second SIGTERM lands while it is written
            os.kill(os.getpid(), signal.SIGTERM)
        return save(run_dir, step, *a, **kw)

    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's handler once a Ray test ran here
    monkeypatch.setattr(controller_mod.RunLogger, "log_step", log_and_signal)
    monkeypatch.setattr(controller_mod, "save_checkpoint", save_and_signal)
    code = main(["train", *TINY, "--save-every", "2", "--workers", "inline", "--max-lag", "0",
                 "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 143, err
    assert "aborted by a second SIGTERM" in err
    assert [p.name for p in list_checkpoints(out)] == ["step_2"]  # the periodic one, untouched
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_the_signal_handler_stops_first_and_aborts_second():
    ctl = Controller(Config(), Path("unused"))
    handler = SignalStop(ctl.request_stop)  # what Controller.run installs (asyncrl.signals.stop_on_signals)
    handler(signal.SIGTERM)
    assert ctl._stop_requested and ctl.stop_signal == "SIGTERM"
    with pytest.raises(RunAborted, match="second SIGINT"):
        handler(signal.SIGINT)


# --- numerical guards ------------------------------------------------------------------------------

def _nan_loss_at(monkeypatch, versions):
    """Make the loss NaN (keeping its graph, so backward runs) whenever the learner's version is
    in ``versions``: step ``v + 1`` of the run."""
    make_loss = learner_mod.make_loss

    def patched(cfg):
        fn = make_loss(cfg)

        def nan_fn(inp, step):
            loss, m = fn(inp, step)
            return (loss * math.nan if step in versions else loss), m

        return nan_fn

    monkeypatch.setattr(learner_mod, "make_loss", patched)


GUARD = ["--steps", "8", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--eval-every", "0",
         "--eval-limit", "4", "--max-new-tokens", "4", "--workers", "inline", "--max-lag", "0",
         "--save-every", "2", "--save-every-minutes", "none", "--keep-checkpoints", "0", "--lr", "1e-3"]


@pytest.mark.e2e
def test_a_nan_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {2, 3})  # steps 3 and 4
    out = tmp_path / "run"
    assert main(["train", *GUARD, "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["skipped_update"] for r in rows] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert [r["skipped_updates_total"] for r in rows] == [0, 0, 1, 2, 2, 2, 2, 2]
    assert rows[2]["loss"] is None or not math.isfinite(rows[2]["loss"])
    assert json.loads((out / "summary.json").read_text())["skipped_updates"] == 2
    # The skipped steps left the weights alone: step 2's weights are step 4's.
    w2, w4, w6 = (load_file(out / "checkpoints" / f"step_{s}" / "model.safetensors") for s in (2, 4, 6))
    assert all(torch.equal(w2[k], w4[k]) for k in w2)
    assert not all(torch.equal(w4[k], w6[k]) for k in w4)  # and training went on after them
    assert all(torch.isfinite(t).all() for t in w6.values())


@pytest.mark.e2e
def test_too_many_nan_updates_in_a_row_stop_the_run_with_good_weights(tmp_path, monkeypatch, capsys):
    _nan_loss_at(monkeypatch, set(range(3, 100)))  # every step from 4 on
    out = tmp_path / "run"
    assert main(["train", *GUARD, "--max-skipped-updates", "3", "--output-dir", str(out)]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("asyncrl: error")]
    assert len(err) == 1 and "3 updates in a row had a non-finite loss" in err[0], err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_updates"] == 3 and summary["failed"]
    # The final checkpoint holds the weights of the last finite update (step 3) = step_4's.
    w4, w6 = (load_file(out / "checkpoints" / f"step_{s}" / "model.safetensors") for s in (4, 6))
    assert all(torch.equal(w4[k], w6[k]) and torch.isfinite(w6[k]).all() for k in w4)
