"""Several optimizer steps per generated batch (``--mini-batches M``, ``--batch-epochs E``): each is
the update a one-step learner makes on that mini-batch; versions count optimizer steps, the lag
bound and the cadences learner steps."""

from __future__ import annotations

import json

import pytest
import torch

from asyncrl.buffer import BufferBatch
from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.learner import Learner
from asyncrl.optim import lr_lambda
from asyncrl.policy import BUILTIN_MODELS, load_model
from asyncrl.runtime.worker import WorkerSpec, build_generator

from conftest import read_jsonl

BASE = str(BUILTIN_MODELS["arithmetic"])
CPU = torch.device("cpu")


def _groups(cfg: Config, n: int):
    torch.manual_seed(0)
    groups, _ = build_generator(WorkerSpec.of(cfg, BASE)).generate(n)
    return groups


def _batch(groups) -> BufferBatch:
    return BufferBatch(groups=list(groups), staleness=[0] * sum(len(g.samples) for g in groups), dropped=0)


def _learner(cfg: Config) -> Learner:
    torch.manual_seed(0)
    return Learner(cfg, load_model(BASE, CPU), None, 0, CPU)


def _params(learner: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


@pytest.mark.parametrize("loss", ["tb", "grpo", "ppo"])
def test_mini_batches_are_one_step_learners_updates_on_each_mini_batch_in_turn(loss):
    kw = dict(loss=loss, samples_per_prompt=4, lr=1e-3, warmup_steps=2, steps=5)
    many = Config(**kw, prompts_per_step=4, mini_batches=2)
    groups = _groups(many, 4)
    a = _learner(many)
    m = a.step(_batch(groups))
    # The same optimizer steps as a one-step-per-batch learner fed the halves in order, whose
    # schedule counts the same optimizer steps (steps and warmup x 2).
    b = _learner(Config(**{**kw, "steps": 10, "warmup_steps": 4}, prompts_per_step=2))
    first, second = b.step(_batch(groups[:2])), b.step(_batch(groups[2:]))
    for p, q in zip(_params(a), _params(b)):
        assert torch.equal(p, q)
    assert (a.version, a.steps_done, b.version) == (2, 1, 2)
    assert m["optimizer_steps"] == 2
    assert m["loss"] == pytest.approx((first["loss"] + second["loss"]) / 2, rel=1e-12)
    assert m["learner_tokens"] == first["learner_tokens"] + second["learner_tokens"]
    assert m["lr"] == second["lr"]


def test_batch_epochs_pass_over_the_same_batch_again():
    kw = dict(samples_per_prompt=4, prompts_per_step=2, lr=1e-3, warmup_steps=0, steps=5)
    groups = _groups(Config(**kw), 2)
    a = _learner(Config(**kw, batch_epochs=3))
    m = a.step(_batch(groups))
    b = _learner(Config(**{**kw, "steps": 15}))
    rows = [b.step(_batch(groups)) for _ in range(3)]
    for p, q in zip(_params(a), _params(b)):
        assert torch.equal(p, q)
    assert (a.version, a.steps_done, m["optimizer_steps"]) == (3, 1, 3)
    assert m["learner_tokens"] == 3 * rows[0]["learner_tokens"]
    assert rows[1]["loss"] != rows[0]["loss"]  # the later epochs do see moved weights


def test_the_lr_schedule_runs_over_optimizer_steps():
    # warmup 2 learner steps = 6 optimizer steps at 3 per step; cosine to 0 over steps x 3 = 12.
    f = lr_lambda(Config(steps=4, warmup_steps=2, mini_batches=1, batch_epochs=3))
    assert [f(u) for u in range(6)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert f(12) == pytest.approx(0.0, abs=1e-12) and f(9) == pytest.approx(0.5)


def test_decoupled_ppos_proximal_policy_is_the_weights_at_the_start_of_the_batch():
    cfg = Config(loss="ppo", decoupled=True, samples_per_prompt=4, prompts_per_step=4, mini_batches=2, lr=1e-2,
                 warmup_steps=0)
    learner = _learner(cfg)
    groups = _groups(cfg, 4)
    before = _params(learner)
    learner.step(_batch(groups))
    prox = [p.detach() for p in learner._prox_model.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(prox, before))
    after_first = _params(learner)
    assert not all(torch.equal(p, q) for p, q in zip(after_first, before))  # the policy moved
    learner.step(_batch(groups))  # the next batch's proximal policy: the moved weights
    assert all(torch.equal(p.detach(), q) for p, q in zip(learner._prox_model.parameters(), after_first))


def test_mini_batches_must_divide_the_batch():
    with pytest.raises(ValueError, match="mini_batches=3 must divide prompts_per_step=4"):
        Config(prompts_per_step=4, mini_batches=3)
    with pytest.raises(ValueError, match=r"prompts_per_step / mini_batches \(2\) must be >= learner_ranks"):
        Config(prompts_per_step=4, mini_batches=2, learner_ranks=3)


@pytest.mark.e2e
def test_a_run_counts_versions_in_optimizer_steps_and_bounds_lag_in_learner_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), "--steps", "6", "--mini-batches", "2", "--batch-epochs", "2",
                 "--max-lag", "1", "--workers", "process", "--eval-every", "3", "--eval-limit", "16",
                 "--max-new-tokens", "6", "--save-every", "3"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))  # learner steps
    assert all(r["optimizer_steps"] == 4 for r in rows)
    # Staleness is in optimizer steps: at most max_lag learner steps = 4 optimizer steps, in whole steps.
    assert all(r["staleness_max"] <= 4 for r in rows) and any(r["staleness_max"] == 4 for r in rows)
    state = json.loads((out / "checkpoints" / "step_6" / "trainer_state.json").read_text())
    assert state["learner"]["version"] == 24
    assert [e["step"] for e in read_jsonl(out / "eval.jsonl")] == [0, 3, 6]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    # Resume continues on the learner-step clock (and may not change the optimizer steps per batch).
    assert main(["train", "--resume", str(out), "--steps", "7"]) == 0
    assert read_jsonl(out / "metrics.jsonl")[-1]["step"] == 7
    assert main(["train", "--resume", str(out), "--steps", "8", "--mini-batches", "1"]) == 2


def test_reward_functions_see_optimizer_steps_in_global_step_and_max_steps(tmp_path):
    from asyncrl.tasks import make_task

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": i + 1}) + "\n" for i in range(4)))
    task = make_task(Config(task="custom", prompts=str(rows), prompt_field="question",
                            reward_funcs=["tests.reward_fns:exact"], steps=5, prompts_per_step=4, mini_batches=2,
                            batch_epochs=3))
    assert task.max_steps == 30  # 5 learner steps x 2 x 3: the unit of the versions (global_step)
