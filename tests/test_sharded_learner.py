"""The sharded learner (``--learner-ranks N``, FSDP2): the same training as one rank, resume across
rank counts, and a failed rank that stops the run with one line instead of hanging it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.errors import LearnerFailed
from asyncrl.sharding import split_groups_by_tokens
from asyncrl.types import Group, Prompt, Sample

from conftest import assert_accounting, read_jsonl

SYNC = ["--max-lag", "0", "--eval-every", "0", "--save-every-minutes", "none", "--max-new-tokens", "6"]


def _group(tokens: int) -> Group:
    return Group(Prompt("p", "p"), [Sample(prompt_id="p", prompt_ids=[1] * tokens, completion_ids=[], behaviour_logprobs=[],
                                           reward=0.0, version=0, finished=True)])


# --- the batch split -------------------------------------------------------------------------------

def test_groups_are_split_by_tokens_into_balanced_non_empty_shares():
    groups = [_group(t) for t in (50, 10, 10, 10, 10, 10, 40)]
    split = split_groups_by_tokens(groups, 2)
    loads = [sum(len(groups[i].samples[0].prompt_ids) for i in idx) for idx in split]
    assert sorted(i for idx in split for i in idx) == list(range(7))  # each group once
    assert loads == [70, 70]  # by tokens, not by count (3 groups vs 4)
    assert all(idx == sorted(idx) for idx in split)  # batch order within a rank
    assert split == split_groups_by_tokens(groups, 2)  # every rank computes the same split
    assert all(split_groups_by_tokens([_group(1)] * 3, 3))  # as many groups as ranks: one each
    with pytest.raises(ValueError, match="cannot be split across 3 learner ranks"):
        split_groups_by_tokens([_group(5)] * 2, 3)


@pytest.mark.parametrize("kw, message", [
    (dict(prompts_per_step=2), r"prompts_per_step / mini_batches \(2\) must be >= learner_ranks"),
    (dict(lora_rank=4, lora_save_merged=True), "lora_save_merged with learner_ranks > 1 is not supported"),
    (dict(runtime="ray", workers="process", learner_num_nodes=3), "cannot exceed learner_ranks - 1"),
])
def test_what_the_sharded_learner_does_not_run_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Config(learner_ranks=3, **kw)


def test_rank_actor_settings_are_refused_without_ranks():
    with pytest.raises(ValueError, match="learner_num_nodes is not used by learner_ranks 1"):
        Config(runtime="ray", workers="process", learner_num_nodes=2)
    with pytest.raises(ValueError, match="learner_num_cpus is not used by ray_learner 'driver'"):
        Config(runtime="ray", workers="process", learner_num_cpus=2)
    Config(runtime="ray", workers="process", learner_ranks=2, learner_num_cpus=2)  # each rank actor's


# --- the same training as one rank -----------------------------------------------------------------

def _train(out: Path, *flags: str) -> list[dict]:
    assert main(["train", "--output-dir", str(out), *flags]) == 0
    return read_jsonl(out / "metrics.jsonl")


@pytest.mark.e2e
@pytest.mark.parametrize("extra", [
    ["--loss", "tb", "--steps", "10"],
    # an uneven split (3 + 2 groups) in micro-batches of 2: rank 1 runs a weight-0 pass to match rank 0;
    # PPO's value head is sharded with the root; the reference lives on the learner
    ["--loss", "ppo", "--steps", "6", "--prompts-per-step", "5", "--micro-batch-prompts", "2",
     "--reference-on", "learner", "--kl-coef", "0.05"],
    # several optimizer steps per batch: each mini-batch split across the ranks
    ["--loss", "grpo", "--steps", "4", "--mini-batches", "2", "--batch-epochs", "2"],
    # micro-batches by token budget on each rank's share
    ["--loss", "rloo", "--steps", "3", "--micro-batch-tokens", "160"],
    # decoupled PPO: a sharded proximal copy, refreshed at each batch's start (2 mini-batches)
    ["--loss", "ppo", "--decoupled", "true", "--steps", "3", "--mini-batches", "2"],
    # LoRA: frozen base and trained adapter in the same units (rank 0's random A on every rank), the
    # reference = the adapter switched off through the sharded root, adapter-only publish and checkpoint
    ["--lora-rank", "4", "--steps", "4", "--lr", "1e-3", "--reference-on", "learner", "--kl-coef", "0.05"],
])
def test_two_ranks_train_as_one_rank(tmp_path, extra):
    one = _train(tmp_path / "one", *SYNC, *extra)
    two = _train(tmp_path / "two", *SYNC, *extra, "--learner-ranks", "2")
    assert len(one) == len(two)
    for a, b in zip(one, two):
        # Same samples (the generator got the same weights from the gathered publish) ...
        assert a["reward_mean"] == b["reward_mean"], a["step"]
        # ... and the same update, up to the order of float sums across ranks.
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5, rel=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["step"]
        assert b["learner_tokens"] == a["learner_tokens"]
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-6)
    weights = "adapter_model.safetensors" if "--lora-rank" in extra else "model.safetensors"
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / f"step_{one[-1]['step']}" / weights))
    w2 = load_file(str(tmp_path / "two" / "checkpoints" / f"step_{two[-1]['step']}" / weights))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_an_asynchronous_run_with_two_ranks_and_process_generators(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), "--learner-ranks", "2", "--max-lag", "2", "--workers", "process",
                 "--num-generators", "2", "--steps", "6", "--eval-every", "3", "--eval-limit", "16",
                 "--max-new-tokens", "6"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert max(r["staleness_max"] for r in rows) >= 1  # asynchronous indeed
    assert_accounting(json.loads((out / "summary.json").read_text()))
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 3, 6]  # evaluation on a whole copy (the model is sharded)


# --- checkpoints -----------------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_two_rank_checkpoint_resumes_on_two_ranks_exactly_and_on_one_rank(tmp_path):
    flags = [*SYNC, "--save-every", "2", "--learner-ranks", "2"]
    ref = _train(tmp_path / "ref", *flags, "--steps", "6")
    _train(tmp_path / "a", *flags, "--steps", "4")
    (tmp_path / "b").mkdir()
    os.system(f"cp -r {tmp_path / 'a'}/. {tmp_path / 'b'}")  # the same step-4 run, resumed twice
    on_two = _train_resume(tmp_path / "a")
    on_one = _train_resume(tmp_path / "b", "--learner-ranks", "1")
    for rows in (on_two, on_one):
        assert [r["step"] for r in rows] == list(range(1, 7))
        for a, b in zip(ref[4:], rows[4:]):
            assert a["reward_mean"] == b["reward_mean"]
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-5, rel=1e-5)
    assert [r["loss"] for r in on_two[4:]] == [r["loss"] for r in ref[4:]]  # same rank count: exact here
    # The folder is a plain transformers model, whatever the rank count that wrote it.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "checkpoints" / "step_6")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied


def _train_resume(run: Path, *flags: str) -> list[dict]:
    assert main(["train", "--resume", str(run), "--steps", "6", *flags]) == 0
    return read_jsonl(run / "metrics.jsonl")


# --- a failed rank ---------------------------------------------------------------------------------

def _run_and_break_rank_1(tmp_path: Path, sig: int, timeout_s: float) -> tuple[str, float]:
    """Train 2 ranks; once step 3 is done, send ``sig`` to rank 1; returns the error and the
    seconds from the signal to the end of the run."""
    from asyncrl.runtime.controller import Controller

    cfg = Config(learner_ranks=2, steps=10_000, max_lag=0, eval_every=0, save_every=2, save_every_minutes=None,
                 learner_timeout_s=timeout_s)
    controller = Controller(cfg, tmp_path / "run")
    sent: list[float] = []

    def breaker():
        while getattr(getattr(controller, "_learner", None), "version", 0) < 3:
            time.sleep(0.01)
        os.kill(controller._learner._ranks.procs[0].pid, sig)
        sent.append(time.monotonic())

    threading.Thread(target=breaker, daemon=True).start()
    with pytest.raises(LearnerFailed) as e:
        controller.run()
    return str(e.value), time.monotonic() - sent[0]


@pytest.mark.e2e
def test_a_killed_rank_stops_the_run_with_one_line_and_keeps_the_checkpoints(tmp_path):
    message, took_s = _run_and_break_rank_1(tmp_path, signal.SIGKILL, timeout_s=120)
    assert "learner rank 1 exited (exit code -9)" in message and "\n" not in message
    assert f"the last one is {tmp_path / 'run' / 'checkpoints'}" in message
    assert took_s < 30  # noticed at once, not after learner_timeout_s
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts and all(int(n[5:]) % 2 == 0 for n in ckpts)  # periodic ones only, complete
    # The checkpoint resumes (on one rank: the other one is gone).
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", str(int(ckpts[-1][5:]) + 1),
                 "--learner-ranks", "1"]) == 0


@pytest.mark.e2e
def test_a_hung_rank_stops_the_run_within_the_timeout(tmp_path):
    message, took_s = _run_and_break_rank_1(tmp_path, signal.SIGSTOP, timeout_s=5)
    assert "did not take part within learner_timeout_s=5s" in message
    assert took_s < 40  # the timeout, plus killing the stopped rank


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("offload", [[], ["--learner-cpu-offload", "true"]])
def test_two_gpu_ranks_train_as_one_rank(tmp_path, offload):
    extra = ["--device", "cuda", "--loss", "tb", "--steps", "5"]
    one = _train(tmp_path / "one", *SYNC, *extra)
    two = _train(tmp_path / "two", *SYNC, *extra, "--learner-ranks", "2", *offload)
    for a, b in zip(one, two):  # bf16 compute: looser than on CPU
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2)


def test_cpu_offload_is_for_sharded_gpu_learners():
    for kw in (dict(), dict(learner_ranks=2, device="cpu")):
        with pytest.raises(ValueError, match="learner_cpu_offload .* needs learner_ranks > 1 and a GPU device"):
            Config(learner_cpu_offload=True, **kw)
    Config(learner_cpu_offload=True, learner_ranks=2, device="cuda")


@pytest.mark.e2e
def test_torchrun_starts_the_ranks_and_trains_as_one_rank(tmp_path):
    import subprocess
    import sys

    one = _train(tmp_path / "one", *SYNC, "--steps", "4")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "asyncrl.cli", "train", *SYNC, "--steps", "4", "--output-dir", str(tmp_path / "tr")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_jsonl(tmp_path / "tr" / "metrics.jsonl")
    assert [r["reward_mean"] for r in two] == [r["reward_mean"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-5, rel=1e-5)
    # Under torchrun the launcher's world size is the rank count; another one is refused.
    bad = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "asyncrl.cli", "train", "--learner-ranks", "3", "--output-dir", str(tmp_path / "bad")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "learner_ranks=3 but torchrun started 2 processes" in bad.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_whole_process_group_stops_every_rank_after_a_final_checkpoint(tmp_path, sig, code):
    """A terminal's Ctrl-C (or a scheduler's SIGTERM) reaches every rank: rank 0 stops after the step and
    writes the final checkpoint, which needs the other ranks, so they leave the signal to it."""
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "asyncrl.cli", "train", "--learner-ranks", "2", "--steps", "100000",
                             "--max-lag", "0", "--eval-every", "0", "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").is_file() and
                                          len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # the whole group, as a terminal does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and (out / "checkpoints" / f"step_{summary['steps']}").is_dir()


@pytest.mark.e2e
def test_a_sigkilled_two_rank_run_resumes_exactly_and_leaves_no_rank_behind(tmp_path, monkeypatch):
    from test_resume import comparable, kill_after

    run = tmp_path / "run"
    monkeypatch.setenv("ASYNCRL_TEST_RUN", str(run))  # marks the killed run's processes (inherited)
    flags = [*SYNC, "--save-every", "2", "--learner-ranks", "2", "--steps", "6"]
    ref = _train(tmp_path / "ref", *flags)
    kill_after(run, flags, rows=3)  # SIGKILL of rank 0 (the controller) after step 3: step_2 is the last checkpoint
    deadline = time.time() + 30  # rank 1 notices its store is gone and exits by itself
    while time.time() < deadline and _ranks_of(run):
        time.sleep(0.2)
    assert not _ranks_of(run), "a learner rank outlived rank 0"
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 0
    rows = read_jsonl(run / "metrics.jsonl")
    resumed = {r["step"]: r for r in rows}  # steps 3.. were logged twice: the resumed rows come last
    assert comparable([resumed[s] for s in range(1, 7)]) == comparable(ref)


def _ranks_of(run: Path) -> list[int]:
    """Live processes spawned for the learner (their command line names multiprocessing's spawn and
    the run's parent is gone); found through /proc, since the killed parent cannot be asked."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ")
            env = (p / "environ").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd and f"ASYNCRL_TEST_RUN={run}".encode() in env:
            out.append(int(p.name))
    return out
