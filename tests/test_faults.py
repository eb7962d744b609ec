"""Generator faults in the local runtime: a worker killed or raising mid-run is replaced, gets the
latest weights, its requests are re-dispatched, and the run reaches its step target; only more
than ``max_generator_restarts`` stops it (one line, final checkpoint); user errors are not retried."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.config import load_config
from asyncrl.generator import Generator
from asyncrl.policy import BUILTIN_MODELS
from asyncrl.runtime.controller import Controller

from conftest import assert_accounting, read_jsonl, run_killing_a_busy_worker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BASE = str(BUILTIN_MODELS["arithmetic"])
SMALL = dict(steps=10, prompts_per_step=4, samples_per_prompt=4, eval_every=0, eval_limit=8, max_new_tokens=6,
             warmup_steps=0, lr=1e-3)


def _rows(tmp_path: Path) -> Path:
    rows = [{"question": f"{a}+{b}=", "answer": a + b} for a, b in [(1, 2), (12, 3), (40, 9), (7, 7), (3, 5)]]
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("transport, generation", [("queue", "gated"), ("broadcast", "gated"),
                                                   ("queue", "continuous")])
def test_sigkilled_process_generator_is_replaced_and_its_requests_redispatched(tmp_path, monkeypatch, transport,
                                                                             generation):
    monkeypatch.chdir(ROOT)  # the spawned workers import tests.reward_fns from the current directory
    cfg = load_config(None, dict(SMALL, task="custom", model=BASE, prompts=str(_rows(tmp_path)),
                                 prompt_field="question", reward="tests.reward_fns:slow_exact", workers="process",
                                 num_generators=2, max_lag=2, weight_transport=transport, generation=generation,
                                 output_dir=str(tmp_path / "run")))
    summary, killed = run_killing_a_busy_worker(Controller(cfg, tmp_path / "run"),
                                                lambda w: os.kill(w.pid, signal.SIGKILL))
    assert killed, "no generator was killed"
    assert summary["steps"] == 10 and not summary["interrupted"] and summary["failed"] is None
    assert summary["generator_restarts"] == 1 and summary["requests_redispatched"] >= 1
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[-1]["generator_restarts_total"] == 1 and rows[-1]["requests_redispatched_total"] >= 1
    assert all(r["staleness_max"] <= 2 for r in rows)
    assert_accounting(summary)


def _flaky_generate(fail_calls: set[int]):
    real = Generator.generate
    calls = {"n": 0}
    lock = threading.Lock()

    def generate(self, num_prompts, **kw):
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n in fail_calls:
            raise RuntimeError(f"injected generator fault on call {n}")
        return real(self, num_prompts, **kw)

    return generate


def test_exception_inside_a_thread_generator_restarts_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Generator, "generate", _flaky_generate({3}))
    out = tmp_path / "run"
    cfg = load_config(None, dict(SMALL, workers="thread", num_generators=2, max_lag=1, output_dir=str(out)))
    summary = Controller(cfg, out).run()
    assert summary["steps"] == 10 and summary["generator_restarts"] == 1 and summary["requests_redispatched"] == 1
    assert_accounting(summary)


def test_inline_generator_fault_is_survived_and_sync_stays_on_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(Generator, "generate", _flaky_generate({2, 5}))
    out = tmp_path / "run"
    cfg = load_config(None, dict(SMALL, max_lag=0, output_dir=str(out)))
    summary = Controller(cfg, out).run()
    assert summary["steps"] == 10 and summary["generator_restarts"] == 2
    assert all(r["staleness_max"] == 0 for r in read_jsonl(out / "metrics.jsonl"))
    assert_accounting(summary)


def test_too_many_restarts_stop_with_one_line_and_a_final_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Generator, "generate", _flaky_generate(set(range(4, 100))))
    out = tmp_path / "run"
    code = main(["train", "--steps", "10", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every",
                 "0", "--eval-limit", "8", "--max-new-tokens", "6", "--workers", "thread", "--max-lag", "1",
                 "--max-generator-restarts", "2", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "more than max_generator_restarts=2" in err[0] and "injected generator fault" in err[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generator_restarts"] == 3 and summary["steps"] >= 1
    assert (out / "checkpoints" / f"step_{summary['steps']}" / "trainer_state.json").is_file()


def test_user_reward_error_stops_at_once_without_restarts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rows = _rows(tmp_path)
    code = main(["train", "--task", "custom", "--model", BASE, "--prompts", str(rows), "--prompt-field", "question",
                 "--reward", "tests.reward_fns:not_a_list", "--steps", "3", "--prompts-per-step", "2",
                 "--samples-per-prompt", "2", "--eval-every", "0", "--max-new-tokens", "4", "--workers", "thread",
                 "--max-lag", "1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "reward error" in err and "restart" not in err

