"""In-flight weight updates (``--inflight-updates``, vllm engine): per-token versions, the
worker's between-steps hook, refused settings, vLLM conformance on CPU (each token's behaviour
log-prob is that of the weights its version names; a continuation equals a fresh engine fed the
prefix), per-token importance weights, and end-to-end runs (local process, Ray, a generator killed
mid-sequence)."""

from __future__ import annotations

import copy
import json
import os
import queue
import signal
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from asyncrl.buffer import BufferBatch
from asyncrl.cli import main
from asyncrl.config import Config, load_config
from asyncrl.learner import _pad_floats, flatten
from asyncrl.losses.corrections import token_tis
from asyncrl.policy import BUILTIN_MODELS, completion_logprobs, encode_prompts, load_model, load_tokenizer, pack
from asyncrl.runtime.controller import Controller
from asyncrl.runtime.messages import GenerateRequest, StopWorker, WeightsUpdate
from asyncrl.runtime.metrics_row import token_staleness
from asyncrl.runtime.worker import take_weights
from asyncrl.types import Group, Prompt, Sample, samples_from_state, samples_state

from conftest import assert_accounting, read_jsonl, run_killing_a_busy_worker
from test_engines import VLLM_TEST_KWARGS, vllm_or_skip

MODEL = str(BUILTIN_MODELS["arithmetic"])
ROOT = Path(__file__).resolve().parent.parent


def _sample(version: int, token_versions=None, n: int = 3) -> Sample:
    return Sample("p", [1], list(range(2, 2 + n)), [-0.5] * n, 1.0, version, True, "", None, token_versions)


# --- per-token versions --------------------------------------------------------------------------

def test_token_staleness_and_the_mixed_share_by_hand():
    mixed, plain = _sample(3, [3, 4, 5]), _sample(4)  # learner at 6: tokens 3, 2, 1 and 2, 2, 2 stale
    batch = BufferBatch(groups=[Group(Prompt("p", "p"), [mixed, plain])], staleness=[6 - 3, 6 - 4])
    assert token_staleness(batch) == {"token_staleness_mean": (3 + 2 + 1 + 2 + 2 + 2) / 6,
                                      "token_staleness_max": 3, "mixed_version_share": 0.5}


def test_token_versions_survive_a_checkpoint_and_old_states_load():
    samples = [_sample(3, [3, 4, 4]), _sample(5)]
    back = samples_from_state(samples_state(samples))
    assert [s.token_versions for s in back] == [[3, 4, 4], None]
    old = samples_state([_sample(5)])  # no sample with per-token versions: no keys (as older checkpoints)
    assert "token_versions" not in old and samples_from_state(old)[0].token_versions is None


def test_importance_weights_use_each_tokens_own_behaviour_logprob():
    # a sequence sampled across an update: its tokens' behaviour log-probs come from two versions
    s = Sample("p", [1], [5, 6, 7], [-0.1, -2.0, -0.7], 1.0, 3, True, "", None, [3, 4, 4])
    _, _, beh, _, _ = flatten(BufferBatch(groups=[Group(Prompt("p", "p"), [s])], staleness=[1]))
    target = torch.tensor([[-0.2, -1.5, -0.7]])  # [N, T] the learner's log-probs
    weight, _ = token_tis(target, _pad_floats(beh, 3), torch.ones(1, 3), cap=10.0)
    expected = [torch.exp(torch.tensor(-0.2 + 0.1)), torch.exp(torch.tensor(-1.5 + 2.0)), torch.tensor(1.0)]
    assert torch.allclose(weight[0], torch.stack(expected), atol=1e-7)


def test_the_worker_takes_waiting_weights_between_steps_and_defers_the_rest():
    loaded = []
    service = SimpleNamespace(load=lambda m: loaded.append(m.version))
    inbox, deferred = queue.Queue(), deque()
    msgs = [WeightsUpdate(1, None), GenerateRequest(7, 4), WeightsUpdate(2, None), StopWorker()]
    for m in msgs:
        inbox.put(m)
    take_weights(service, inbox, deferred)
    assert loaded == [1, 2] and list(deferred) == [msgs[1], msgs[3]] and inbox.empty()


class StepEngine:
    """A fake engine that decodes ``steps`` tokens per sample, calling ``between_steps`` before each
    step as the vLLM engine does; ``after_step(i)`` lets a test deliver weights mid-request."""

    def __init__(self, steps: int, after_step):
        self.version, self.steps, self.after_step = 0, steps, after_step

    def generate(self, prompts, k, greedy=False, between_steps=None):
        from asyncrl.engines.base import Completion

        ids, versions = [], []
        for i in range(self.steps):
            if between_steps is not None:
                between_steps()
            ids.append(5 + i)
            versions.append(self.version)
            self.after_step(i)
        return [[Completion(list(ids), [-0.5] * len(ids), False, list(versions)) for _ in range(k)] for _ in prompts]

    def load_weights(self, state, version):
        self.version = version


def test_weights_that_arrive_mid_request_reach_the_next_tokens_through_the_worker():
    """The plumbing of a local worker: inbox -> take_weights -> service.load -> engine, between two
    decoding steps; the sample records each token's version and its oldest as its version."""
    import dataclasses

    from asyncrl.runtime.transport import DirectReceiver
    from asyncrl.runtime.worker import GeneratorService, WorkerSpec, build_generator

    gen = build_generator(WorkerSpec.of(Config(samples_per_prompt=2, max_new_tokens=4), MODEL, 0))
    inbox, deferred = queue.Queue(), deque()
    gen.engine = StepEngine(3, lambda i: inbox.put(WeightsUpdate(1, {})) if i == 0 else None)
    service = GeneratorService(gen, DirectReceiver(), 0)
    service.between_steps = lambda: take_weights(service, inbox, deferred)
    done = service.generate(GenerateRequest(0, 2))  # inflight_updates off: the hook is not used
    assert {tuple(s.versions_of_tokens()) for g in done.groups for s in g.samples} == {(0, 0, 0)}
    assert isinstance(inbox.get_nowait(), WeightsUpdate)  # left waiting for the end of the request
    gen.settings = dataclasses.replace(gen.settings, inflight_updates=True)
    done = service.generate(GenerateRequest(1, 2))
    samples = [s for g in done.groups for s in g.samples]
    assert all(s.token_versions == [0, 1, 1] and s.version == 0 for s in samples)
    assert service.version == 1 and inbox.empty()


def test_a_ray_generator_takes_an_offered_update_in_flight_and_skips_its_ordered_load():
    from asyncrl.runtime.ray_host import _GeneratorActor

    loaded = []
    actor = _GeneratorActor(0)
    actor.service = SimpleNamespace(version=0, load=lambda m: (loaded.append(m.version),
                                                               setattr(actor.service, "version", m.version)))
    actor.offer(WeightsUpdate(2, None))
    actor.offer(WeightsUpdate(1, None))  # an older offer never replaces a newer one
    actor._take_offered()  # between two decoding steps
    actor._take_offered()  # nothing new
    assert loaded == [2]
    assert actor.load(WeightsUpdate(1, None)) is None and actor.load(WeightsUpdate(2, None)) is None  # taken already
    assert actor.load(WeightsUpdate(3, None)) is None and loaded == [2, 3]


@pytest.mark.parametrize("kw, message", [
    (dict(inflight_updates=True), "not used by engine 'hf'"),
    (dict(inflight_updates=True, eval_engine="vllm", max_lag=1), "needs engine vllm"),
    (dict(inflight_updates=True, engine="vllm", max_lag=0), "workers=inline"),
    (dict(inflight_updates=True, engine="vllm", max_lag=1, weight_transport="broadcast"), "broadcast"),
])
def test_settings_where_no_update_can_arrive_in_flight_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Config(**kw)


# --- vLLM on CPU ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_and_models():
    vllm_or_skip()
    from asyncrl.engines.vllm import VLLMEngine

    tok = load_tokenizer(MODEL)
    old = load_model(MODEL, torch.device("cpu")).eval()
    new = copy.deepcopy(old)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))  # far enough that every token's log-prob moves
    eng = VLLMEngine(MODEL, tok, max_new_tokens=8, temperature=1.0, device=torch.device("cpu"), seed=3,
                     kv_cache_gb=0.0625, llm_kwargs=VLLM_TEST_KWARGS)
    yield eng, tok, old, new
    eng.close()


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _update_before_step(eng, model, step: int, version: int):
    calls = [0]

    def between_steps():
        calls[0] += 1
        if calls[0] == step:
            eng.load_weights(_state(model), version)
    return between_steps


@pytest.mark.e2e
def test_vllm_tokens_across_an_update_carry_their_own_weights_logprobs(engine_and_models):
    eng, tok, old, new = engine_and_models
    eng.load_weights(_state(old), 0)
    prompts = encode_prompts(tok, ["12+3=", "40-9="], "none")
    # with nothing arriving, the step-by-step path samples exactly what generate() does
    eng._rng.manual_seed(5)
    plain = eng.generate(prompts, 3)
    eng._rng.manual_seed(5)
    stepwise = eng.generate(prompts, 3, between_steps=lambda: None)
    assert [[(c.ids, c.logprobs, c.finished) for c in g] for g in plain] == \
        [[(c.ids, c.logprobs, c.finished) for c in g] for g in stepwise]
    assert all(c.versions == [0] * len(c.ids) for g in stepwise for c in g)
    # new weights before the second decoding step: token 1 is version 0's, the rest version 1's
    out = eng.generate(prompts, 3, between_steps=_update_before_step(eng, new, 2, 1))
    checked = 0
    for b, group in enumerate(out):
        for c in group:
            assert c.versions == [0] + [1] * (len(c.ids) - 1)
            batch = pack([prompts[b]], [c.ids], tok.pad_token_id)
            lp_old = completion_logprobs(old, batch, 1.0)[0, : len(c.ids)]
            lp_new = completion_logprobs(new, batch, 1.0)[0, : len(c.ids)]
            got = torch.tensor(c.logprobs)
            assert torch.allclose(got[:1], lp_old[:1], atol=1e-4)
            assert torch.allclose(got[1:], lp_new[1:], atol=1e-4)
            assert not torch.allclose(lp_old[1:], lp_new[1:], atol=1e-2)  # the update did change them
            checked += len(c.ids) > 1
    assert checked >= 2
    assert eng.version == 1


@pytest.mark.e2e
def test_a_greedy_continuation_after_an_update_equals_a_fresh_engine_fed_the_prefix(engine_and_models):
    from asyncrl.engines.vllm import VLLMEngine

    eng, tok, old, new = engine_and_models
    eng.load_weights(_state(old), 0)
    prompts = encode_prompts(tok, ["12+3=", "7+7=", "40-9="], "none")
    out = eng.generate(prompts, 1, greedy=True, between_steps=_update_before_step(eng, new, 3, 1))
    fresh = VLLMEngine(MODEL, tok, max_new_tokens=8, temperature=1.0, device=torch.device("cpu"), seed=0,
                       kv_cache_gb=0.0625, llm_kwargs=VLLM_TEST_KWARGS)
    checked = 0
    try:
        fresh.load_weights(_state(new), 1)
        for p, (c,) in zip(prompts, out):
            cut = c.versions.index(1) if 1 in c.versions else len(c.ids)
            if cut == len(c.ids):
                continue  # finished before the update
            fresh.max_new_tokens = 8 - cut
            (cont,), = fresh.generate([p + c.ids[:cut]], 1, greedy=True)
            assert cont.ids == c.ids[cut:] and cont.finished == c.finished
            assert torch.allclose(torch.tensor(cont.logprobs), torch.tensor(c.logprobs[cut:]), atol=1e-4)
            checked += 1
    finally:
        fresh.close()
    assert checked >= 1


# --- end to end ----------------------------------------------------------------------------------

TINY = ["--steps", "6", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "0",
        "--eval-limit", "8", "--max-new-tokens", "16", "--warmup-steps", "0", "--lr", "1e-3",
        "--vllm-kv-cache-gb", "0.0625", "--engine", "vllm", "--eval-engine", "hf", "--inflight-updates", "true"]


@pytest.mark.e2e
@pytest.mark.parametrize("runtime", [["--workers", "process"], ["--runtime", "ray"]])
def test_an_asynchronous_run_with_inflight_updates(tmp_path, runtime):
    vllm_or_skip()
    if "ray" in runtime:
        pytest.importorskip("ray")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--max-lag", "2", *runtime, "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:  # the bound holds per token: a sample's version is its oldest token's
        assert r["token_staleness_max"] <= r["staleness_max"] <= 2
        assert 0.0 <= r["mixed_version_share"] <= 1.0
    assert_accounting(json.loads((out / "summary.json").read_text()))


@pytest.mark.e2e
def test_a_generator_killed_mid_sequence_is_replaced(tmp_path, monkeypatch):
    vllm_or_skip()
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    cfg = load_config(None, dict(steps=8, prompts_per_step=4, samples_per_prompt=4, eval_every=0, eval_limit=8,
                                 max_new_tokens=16, warmup_steps=0, lr=1e-3, vllm_kv_cache_gb=0.0625, engine="vllm",
                                 eval_engine="hf", inflight_updates=True, workers="process", num_generators=2,
                                 max_lag=2, output_dir=str(out)))
    summary, killed = run_killing_a_busy_worker(Controller(cfg, out), lambda w: os.kill(w.pid, signal.SIGKILL),
                                                after_rows=2, timeout_s=300)
    assert killed, "no generator was killed"
    assert summary["steps"] == 8 and summary["failed"] is None and summary["generator_restarts"] == 1
    assert all(r["token_staleness_max"] <= 2 for r in read_jsonl(out / "metrics.jsonl"))
    assert_accounting(summary)
