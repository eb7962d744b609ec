"""Dynamic sampling (``--dynamic-sampling``): groups whose rewards all tie are held back and
counted; a short step waits for more generation, then tops up; the accounting identity holds."""

from __future__ import annotations

import json

import pytest

from asyncrl.buffer import FifoBuffer, split_informative
from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.runtime.dynamic_sampling import DynamicSampler
from asyncrl.types import Group, Prompt, Sample

from conftest import assert_accounting, read_jsonl


def _group(name: str, rewards: list[float], version: int = 0) -> Group:
    return Group(Prompt(name, name), [Sample(prompt_id=name, prompt_ids=[1], completion_ids=[2], behaviour_logprobs=[-1.0],
                                             reward=r, version=version, finished=True) for r in rewards])


def test_groups_whose_rewards_all_tie_are_split_off():
    groups = [_group("a", [1, 0]), _group("b", [1, 1]), _group("c", [0, 0]), _group("d", [0.5, 0.25])]
    keep, tied = split_informative(groups)
    assert [g.prompt.prompt_id for g in keep] == ["a", "d"] and [g.prompt.prompt_id for g in tied] == ["b", "c"]


def test_a_short_step_waits_then_trains_topped_up_with_the_latest_tied_groups():
    buffer = FifoBuffer(max_lag=5)
    dyn = DynamicSampler(prompts_per_step=3, attempts=2)
    # Request 1: one informative group, two tied ones (2 samples each).
    buffer.add(dyn.admit([_group("a", [1, 0]), _group("b", [1, 1]), _group("c", [0, 0])]))
    assert (dyn.filtered_here, dyn.filtered_groups_here) == (4, 2)
    assert dyn.batch(buffer, 0) is None and dyn.waited == 1  # attempt 1: wait for another request
    buffer.add(dyn.admit([_group("d", [0, 1]), _group("e", [0, 0])]))  # request 2: one more of each
    assert dyn.batch(buffer, 0) is None and dyn.waited == 2  # attempt 2
    buffer.add(dyn.admit([_group("f", [1, 1])]))  # request 3: all tied; the attempts are spent
    batch = dyn.batch(buffer, 0)
    # a, d from the buffer, topped up to 3 with the newest held-back group (f).
    assert [g.prompt.prompt_id for g in batch.groups] == ["a", "d", "f"]
    assert (dyn.filtered_here, dyn.filtered_groups_here) == (6, 3)  # b, c, e stay filtered; f was trained
    assert dyn.row(6) == {"dynamic_sampling/extra_requests": 2, "dynamic_sampling/topped_up": 1,
                          "dynamic_sampling/groups": 3, "dynamic_sampling/filtered_fraction": 8 / 12,
                          "filtered_total": 6}
    assert len(buffer) == 0 and dyn.waited == 0 and [g.prompt.prompt_id for g in dyn.held] == ["c", "e"]


def test_a_full_batch_needs_no_wait():
    buffer = FifoBuffer(max_lag=5)
    dyn = DynamicSampler(prompts_per_step=2, attempts=4)
    buffer.add(dyn.admit([_group("a", [1, 0]), _group("b", [0, 1]), _group("c", [1, 1])]))
    batch = dyn.batch(buffer, 0)
    assert [g.prompt.prompt_id for g in batch.groups] == ["a", "b"] and dyn.row(2)["dynamic_sampling/topped_up"] == 0


@pytest.mark.parametrize("kw, message", [
    (dict(dynamic_sampling_attempts=2), "dynamic_sampling_attempts is not used by dynamic_sampling false"),
    (dict(dynamic_sampling=True, samples_per_prompt=1, loss="ppo"), "needs samples_per_prompt >= 2"),
])
def test_dynamic_sampling_settings_that_would_be_ignored_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Config(**kw)


@pytest.mark.e2e
def test_a_run_filters_counts_and_keeps_the_accounting_identity_across_a_resume(tmp_path):
    out = tmp_path / "run"
    flags = ["--dynamic-sampling", "true", "--loss", "grpo", "--max-lag", "1", "--eval-every", "0",
             "--max-new-tokens", "6", "--save-every", "3", "--output-dir", str(out)]
    assert main(["train", *flags, "--steps", "4"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert all(r["dynamic_sampling/groups"] == 16 for r in rows)  # full batches of groups with an advantage
    assert rows[-1]["filtered_total"] > 0 and any(r["dynamic_sampling/extra_requests"] for r in rows)
    assert all(r["staleness_max"] <= 1 for r in rows)  # waiting for more never breaks the lag bound
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounting"]["samples_filtered"] > 0
    assert_accounting(summary)
    before = rows[-1]["filtered_total"]
    assert main(["train", "--resume", str(out), "--steps", "6"]) == 0
    resumed = read_jsonl(out / "metrics.jsonl")
    assert resumed[-1]["step"] == 6 and resumed[-1]["filtered_total"] >= before  # the run total carries over
    assert_accounting(json.loads((out / "summary.json").read_text()))
