"""``--micro-batch-tokens``: micro-batches by padded-token budget, whole groups, bucketed by length."""

from __future__ import annotations

import pytest
import torch

from asyncrl.config import Config
from asyncrl.learner import micro_batches_by_tokens
from asyncrl.policy import pack
from asyncrl.types import Group, Prompt, Sample

from test_mini_batches import _batch, _groups, _learner


def _group(name: str, prompt: int, completions: list[int]) -> Group:
    return Group(Prompt(name, name), [Sample(prompt_id=name, prompt_ids=[1] * prompt, completion_ids=[2] * c,
                                             behaviour_logprobs=[-1.0] * c, reward=0.0, version=0, finished=True)
                                      for c in completions])


def _padded(micro: list[list[Group]]) -> int:
    return sum(pack([s.prompt_ids for g in m for s in g.samples], [s.completion_ids for g in m for s in g.samples],
                    0).input_ids.numel() for m in micro)


def test_groups_are_bucketed_by_length_and_packed_under_the_budget():
    groups = [_group("a", 4, [20, 18]), _group("b", 4, [2, 3]), _group("c", 4, [19, 20]), _group("d", 4, [3, 1]),
              _group("e", 4, [60, 10])]
    micro = micro_batches_by_tokens(groups, budget_tokens=100)
    # b, d (width 4+3=7: 4 rows x 7 = 28), then a, c (4 rows x 24 = 96), then e alone (over budget: 2 x 64 = 128)
    assert [[g.prompt.prompt_id for g in m] for m in micro] == [["b", "d"], ["a", "c"], ["e"]]
    for m in micro[:-1]:
        assert _padded([m]) <= 100
    # Each group once, whole.
    assert sorted(g.prompt.prompt_id for m in micro for g in m) == ["a", "b", "c", "d", "e"]
    # Fewer padded tokens than the same number of micro-batches by prompt count in batch order.
    by_count = [groups[0:2], groups[2:4], groups[4:5]]
    assert _padded(micro) < _padded(by_count)


@pytest.mark.parametrize("loss", ["tb", "grpo", "ppo"])
def test_token_budget_micro_batches_do_not_change_the_update(loss):
    base = Config(loss=loss, samples_per_prompt=4, prompts_per_step=4, warmup_steps=0, lr=1e-3, max_grad_norm=None)
    batch = _batch(_groups(base, 4))
    full = _learner(base)
    micro = _learner(base.model_copy(update={"micro_batch_tokens": 40}))
    plan = micro_batches_by_tokens(batch.groups, 40)
    assert len(plan) > 1  # the budget does split this batch
    mf, mm = full.step(batch), micro.step(batch)
    assert mm["loss"] == pytest.approx(mf["loss"], rel=1e-5, abs=1e-7)
    assert mm["learner_tokens"] == mf["learner_tokens"]
    for (name, p), q in zip(full.model.named_parameters(), micro.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_one_micro_batch_size_at_a_time():
    with pytest.raises(ValueError, match="micro_batch_tokens and micro_batch_prompts both"):
        Config(micro_batch_tokens=512, micro_batch_prompts=2)


@pytest.mark.parametrize("loss", ["grpo", "ppo"])
def test_a_padding_free_learner_step_equals_the_padded_one(loss):
    base = Config(loss=loss, samples_per_prompt=4, prompts_per_step=3, warmup_steps=0, lr=1e-3, max_grad_norm=None)
    batch = _batch(_groups(base, 3))
    padded, free = _learner(base), _learner(base.model_copy(update={"padding_free": True}))
    assert free.padding_free and not padded.padding_free  # SDPA here: off unless asked
    mp, mf = padded.step(batch), free.step(batch)
    assert mf["loss"] == pytest.approx(mp["loss"], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(padded.model.named_parameters(), free.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_padding_free_needs_the_lean_path():
    with pytest.raises(ValueError, match="padding_free packs the rows for the lean log-prob path"):
        Config(padding_free=True, logprob_chunk_tokens=None)


@pytest.mark.parametrize("loss", ["grpo", "rloo", "ppo"])
def test_truncated_completions_can_be_masked_out_of_the_loss(loss):
    import copy

    base = Config(loss=loss, samples_per_prompt=4, prompts_per_step=2, warmup_steps=0, lr=1e-3, max_grad_norm=None,
                  max_new_tokens=6)
    batch = _batch(_groups(base, 2))
    for i, s in enumerate(s for g in batch.groups for s in g.samples):
        s.finished = i not in (1, 6)  # two completions "cut at max_new_tokens" (the learner reads the flag)
    masked = _learner(base.model_copy(update={"mask_truncated_completions": True}))
    m = masked.step(batch)
    # By hand: the same learner on a copy whose cut completions carry no tokens to train on is the
    # same update, since a masked row contributes nothing but its reward (kept in the baselines).
    ref = _learner(base)
    emptied = copy.deepcopy(batch)
    for g in emptied.groups:
        for s in g.samples:
            if not s.finished:
                s.completion_ids, s.behaviour_logprobs = s.completion_ids[:0], []
                s.ref_logprobs = [] if s.ref_logprobs is not None else None
    r = ref.step(emptied)
    assert m["loss"] == pytest.approx(r["loss"], rel=1e-5, abs=1e-7)
    for (name, p), q in zip(masked.model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    unmasked = _learner(base).step(batch)
    assert unmasked["loss"] != pytest.approx(m["loss"], rel=1e-3)  # the mask does change the update


def test_tb_and_online_dpo_do_not_offer_masking_truncated_completions():
    for loss in ("tb", "online_dpo"):
        with pytest.raises(ValueError):
            Config(loss=loss, mask_truncated_completions=True)
