"""Learner.timings (the per-phase timing hook used by benchmarks/throughput.py) must not change a step."""

import copy

import pytest
import torch

from asyncrl.buffer import BufferBatch
from asyncrl.config import Config
from asyncrl.learner import Learner
from asyncrl.policy import BUILTIN_MODELS, load_model
from asyncrl.runtime.worker import WorkerSpec, build_generator

BASE = str(BUILTIN_MODELS["arithmetic"])
CPU = torch.device("cpu")
PHASES = {"policy_forward", "ref_forward", "loss", "backward", "optimizer", "other"}


def _learner(cfg: Config, with_ref: bool, timed: bool) -> Learner:
    torch.manual_seed(0)
    learner = Learner(cfg, load_model(BASE, CPU), load_model(BASE, CPU) if with_ref else None, 0, CPU)
    if timed:
        learner.timings = {}
    return learner


@pytest.mark.parametrize("loss,reference_on,micro", [("tb", "generator", None), ("grpo", "learner", 1)])
def test_timings_do_not_change_the_step(loss, reference_on, micro):
    cfg = Config(loss=loss, samples_per_prompt=4, prompts_per_step=2, warmup_steps=0, lr=1e-3,
                 reference_on=reference_on, micro_batch_prompts=micro)
    torch.manual_seed(0)
    groups, _ = build_generator(WorkerSpec.of(cfg.model_copy(update={"reference_on": "generator"}), BASE)).generate(2)
    batch = BufferBatch(groups=groups, staleness=[0] * 8)
    if reference_on == "learner":  # the learner's own reference model computes them
        batch = copy.deepcopy(batch)
        for g in batch.groups:
            for s in g.samples:
                s.ref_logprobs = None
    plain, timed = (_learner(cfg, reference_on == "learner", t) for t in (False, True))
    for _ in range(2):  # the second step also exercises the optimizer state the first one built
        a, b = plain.step(batch), timed.step(batch)
        for k in ("loss", "kl", "grad_norm", "learner_tokens"):
            assert a[k] == b[k], k
    for p, q in zip(plain.model.parameters(), timed.model.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    assert plain.timings is None
    want = PHASES if reference_on == "learner" else PHASES - {"ref_forward"}
    assert set(timed.timings) == want and all(v >= 0 for v in timed.timings.values())
    # The phases partition the step: together they are its whole wall time.
    assert sum(timed.timings.values()) == pytest.approx(b["train_time_s"], rel=0.05, abs=1e-3)
