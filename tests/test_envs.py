"""Multi-turn episodes: the rollout loop (masks, limits, errors), observation rendering, and the
learner's masking of environment tokens."""

import copy

import pytest
import torch

from asyncrl.buffer import BufferBatch
from asyncrl.config import Config
from asyncrl.engines.base import Completion
from asyncrl.envs import EnvError, Environment, Step, make_task
from asyncrl.envs.retry import ArithmeticRetryEnvironment
from asyncrl.learner import Learner
from asyncrl.policy import BUILTIN_MODELS, load_model, load_tokenizer
from asyncrl.rollout import Limits, ObservationRenderer, TaskEnvironment, run_episodes
from asyncrl.runtime.worker import WorkerSpec, build_generator
from asyncrl.tasks.arithmetic import ArithmeticTask
from asyncrl.types import Prompt, samples_from_state, samples_state

BASE = str(BUILTIN_MODELS["arithmetic"])
CPU = torch.device("cpu")
NO_LIMIT = Limits(max_turns=10, max_episode_tokens=10**9)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BASE)


class ScriptedEngine:
    """Answers every context with the next scripted turn text (+ EOS), log-prob -0.5 per token;
    records the contexts it was given."""

    version = 3

    def __init__(self, tok, turns: list[str]):
        self.tok, self.turns, self.calls = tok, list(turns), []

    def generate(self, prompts, k, greedy=False):
        self.calls.append((copy.deepcopy(prompts), k))
        out = []
        for _ in prompts:
            group = []
            for _ in range(k):
                ids = self.tok(self.turns.pop(0), add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
                group.append(Completion(ids, [-0.5] * len(ids), True))
            out.append(group)
        return out


class Echo(Environment):
    """Answers every turn with ``"7="`` until the turn is ``"1"``; reward 0.25 per turn, 1 at the end."""

    name, max_turns = "echo", 5

    def reset(self, prompt):
        return {"prompt": prompt}

    def step(self, state, turn):
        if turn == "1":
            return Step(reward=1.0, done=True)
        return Step("7=", 0.25, False)


def _run(tok, env, turns, limits=NO_LIMIT, k=1, policy="stop"):
    engine = ScriptedEngine(tok, turns)
    prompt = Prompt("p", "3+4=", {"answer": 7})
    ids = tok("3+4=")["input_ids"]
    eps = run_episodes(engine, env, tok, [prompt], [ids], k, limits=limits,
                       renderer=ObservationRenderer(tok, "auto"), reward_errors=policy)
    return eps, engine, ids


def test_an_episode_is_one_sequence_with_environment_tokens_masked(tok):
    eps, engine, prompt_ids = _run(tok, Echo(), ["22", "1"])
    e = eps[0]
    eos = tok.eos_token_id
    turn1 = tok("22", add_special_tokens=False)["input_ids"] + [eos]
    obs = tok("7=", add_special_tokens=False)["input_ids"]
    turn2 = tok("1", add_special_tokens=False)["input_ids"] + [eos]
    assert e.ids == turn1 + obs + turn2
    assert e.mask == [1] * len(turn1) + [0] * len(obs) + [1] * len(turn2)
    assert e.logprobs == [-0.5] * len(turn1) + [0.0] * len(obs) + [-0.5] * len(turn2)
    assert e.reward == pytest.approx(1.25) and e.turns == 2 and e.finished and not e.truncated
    # the second turn's context is the prompt, the first turn and the observation
    assert engine.calls[1] == ([prompt_ids + turn1 + obs], 1)
    assert e.loss_mask == e.mask and e.texts == ["22", "1"]


def test_first_turn_is_one_request_of_k_samples(tok):
    eps, engine, _ = _run(tok, Echo(), ["1", "22", "1"], k=2)
    assert engine.calls[0][1] == 2 and len(engine.calls) == 2 and engine.calls[1][1] == 1
    assert [e.turns for e in eps] == [1, 2]
    assert eps[0].loss_mask is None  # one policy turn only: every token is the policy's


def test_turn_limit_ends_an_endless_episode_truncated(tok):
    eps, engine, _ = _run(tok, Echo(), ["5", "5", "5"], limits=Limits(3, 10**9))
    e = eps[0]
    assert e.turns == 3 and e.truncated and not e.finished and e.reward == pytest.approx(0.75)
    # no observation after the last turn: the sequence ends with the policy's EOS
    assert e.mask[-1] == 1 and len(engine.calls) == 3


def test_token_limit_cuts_the_episode(tok):
    eos = tok.eos_token_id
    eps, _, _ = _run(tok, Echo(), ["22", "333"], limits=Limits(5, 5))
    e = eps[0]
    # "22"+EOS (3) + "7=" (2) = 5 = the limit: no room for a policy token, cut after the observation
    assert e.ids == tok("22", add_special_tokens=False)["input_ids"] + [eos] + tok("7=", add_special_tokens=False)["input_ids"]
    assert e.truncated and e.turns == 1 and e.reward == pytest.approx(0.25)
    eps, _, _ = _run(tok, Echo(), ["22", "333"], limits=Limits(5, 6))
    e = eps[0]
    assert len(e.ids) == 6 and e.turns == 2 and e.truncated and e.mask == [1, 1, 1, 0, 0, 1]
    assert e.reward == pytest.approx(0.25)  # the environment is not asked about the cut turn


def test_an_episode_ends_before_a_turn_that_would_not_fit_the_context(tok):
    # prompt "3+4=" (5 tokens with BOS) + "22"+EOS (3) + "7=" (2) + max_new_tokens 4 = 14
    eps, engine, _ = _run(tok, Echo(), ["22", "1"], limits=Limits(5, 10**9, context_tokens=13, max_new_tokens=4))
    e = eps[0]
    assert e.turns == 1 and e.truncated and e.mask == [1, 1, 1] and len(engine.calls) == 1
    eps, engine, _ = _run(tok, Echo(), ["22", "1"], limits=Limits(5, 10**9, context_tokens=14, max_new_tokens=4))
    assert eps[0].turns == 2 and eps[0].finished and len(engine.calls) == 2


class Raises(Echo):
    def step(self, state, turn):
        raise RuntimeError("board exploded\nsecond line")


class Malformed(Echo):
    def step(self, state, turn):
        return Step({"role": "user"}, 0.0, False)


class NoObservation(Echo):
    def step(self, state, turn):
        return Step(None, 0.0, False)


class BadReward(Echo):
    def step(self, state, turn):
        return Step("x", float("nan"), False)


@pytest.mark.parametrize("env, fragment", [
    (Raises(), "step raised RuntimeError: board exploded second line"),
    (Malformed(), "returned an observation of type dict"),
    (NoObservation(), "returned no observation for an episode that is not done"),
    (BadReward(), "returned reward=nan, expected a finite number"),
])
def test_environment_errors_are_one_line(tok, env, fragment):
    with pytest.raises(EnvError) as e:
        _run(tok, env, ["22"])
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg and "prompt id 'p'" in msg and "--reward-errors skip" in msg
    eps, _, _ = _run(tok, env, ["22"], policy="skip")
    assert eps[0].error is not None and fragment in eps[0].error and eps[0].done


def test_malformed_observation_messages_are_refused(tok):
    class BadRole(Echo):
        def step(self, state, turn):
            return Step([{"role": "narrator", "content": "hi"}], 0.0, False)

    with pytest.raises(EnvError, match="malformed observation message"):
        _run(tok, BadRole(), ["22"])


def test_a_task_is_the_one_turn_case(tok):
    env = TaskEnvironment(ArithmeticTask())
    eps, engine, _ = _run(tok, env, ["7", "8"], k=2)
    assert [e.reward for e in eps] == [1.0, 0.0] and all(e.finished and e.turns == 1 for e in eps)
    assert len(engine.calls) == 1 and all(e.loss_mask is None for e in eps)


def test_observations_use_the_chat_template_roles(tok):
    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                       "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    t.eos_token = "<|im_end|>"
    r = ObservationRenderer(t, "auto")
    tool = [{"role": "tool", "content": "42"}]
    # the policy's turn ended with <|im_end|>: the rest of its turn's end, the message, the next prompt
    assert r.text(tool, True) == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    # cut at max_new_tokens: the end-of-turn marker closes the turn first
    assert r.text(tool, False) == "<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    assert ObservationRenderer(t, "never").text(tool, True) == "42"


def _env_batch(n_prompts: int, k: int = 4):
    torch.manual_seed(0)
    cfg = Config(task="env", env="arithmetic_retry", samples_per_prompt=k, prompts_per_step=n_prompts,
                 warmup_steps=0, lr=1e-3, max_grad_norm=None)
    groups, stats = build_generator(WorkerSpec.of(cfg, BASE)).generate(n_prompts)
    return cfg, BufferBatch(groups=groups, staleness=[0] * (n_prompts * k), dropped=0), stats


def test_generator_episodes_carry_masks_and_survive_a_checkpoint():
    _, batch, stats = _env_batch(6)
    samples = [s for g in batch.groups for s in g.samples]
    multi = [s for s in samples if s.loss_mask is not None]
    assert multi, "the tiny model gets some problems wrong, so some episodes take several turns"
    for s in multi:
        assert len(s.loss_mask) == len(s.completion_ids) == len(s.behaviour_logprobs) == len(s.ref_logprobs)
        assert all(lp == 0.0 for lp, m in zip(s.behaviour_logprobs, s.loss_mask) if m == 0)
        assert 0 in s.loss_mask and s.loss_mask[0] == 1
    assert stats.episodes == 24 and stats.turns > 24 and stats.tokens == sum(sum(s.loss_mask or [1] * len(s.completion_ids)) for s in samples)
    back = samples_from_state(samples_state(samples))
    assert [s.loss_mask for s in back] == [s.loss_mask for s in samples]


@pytest.mark.parametrize("loss", ["tb", "grpo", "ppo"])
def test_environment_tokens_get_no_gradient_and_no_behaviour_logprob(loss):
    cfg, batch, _ = _env_batch(4)
    cfg = Config(**{**cfg.model_dump(), "loss": {"name": loss}}) if loss != "tb" else cfg
    learner = Learner(cfg, load_model(BASE, CPU), None, 0, CPU)
    seen = []
    real = learner.loss_fn

    def spy(inp, version):
        inp.logp.retain_grad()
        seen.append(inp)
        return real(inp, version)

    learner.loss_fn = spy
    m1 = learner.step(batch)
    grads = [p.grad.clone() for p in learner.model.parameters()]
    env_positions = 0
    for inp in seen:
        env = inp.mask == 0
        env_positions += int(env.sum())
        assert torch.all(inp.logp.grad[env] == 0)
    assert env_positions > 0 and seen[0].logp.grad.abs().sum() > 0
    # garbage behaviour log-probs at environment tokens change nothing
    garbled = copy.deepcopy(batch)
    for g in garbled.groups:
        for s in g.samples:
            if s.loss_mask is not None:
                s.behaviour_logprobs = [lp if m else -50.0 for lp, m in zip(s.behaviour_logprobs, s.loss_mask)]
                s.ref_logprobs = [lp if m else -50.0 for lp, m in zip(s.ref_logprobs, s.loss_mask)]
    other = Learner(cfg, load_model(BASE, CPU), None, 0, CPU)
    m2 = other.step(garbled)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-6)
    for a, p in zip(grads, other.model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_masked_batches_are_micro_batch_invariant():
    cfg, batch, _ = _env_batch(4)
    full = Learner(cfg, load_model(BASE, CPU), None, 0, CPU)
    micro = Learner(cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"micro_batch_prompts": 1})}),
                    load_model(BASE, CPU), None, 0, CPU)
    mf, mm = full.step(batch), micro.step(batch)
    assert mf["loss"] == pytest.approx(mm["loss"], rel=1e-5) and mf["grad_norm"] > 0
    for p, q in zip(full.model.parameters(), micro.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4)


def test_env_task_builds_and_lists(tmp_path):
    env = make_task(Config(task="env", env="arithmetic_retry", env_args='{"max_turns": 2}'))
    assert isinstance(env, ArithmeticRetryEnvironment) and env.max_turns == 2
    with pytest.raises(ValueError, match="env_args must be a JSON object"):
        make_task(Config(task="env", env_args="[1]"))


def test_retry_environment_rewards_the_try():
    env = ArithmeticRetryEnvironment(max_turns=3)
    p = Prompt("3+4=", "3+4=", {"answer": 7})
    s = env.reset(p)
    assert env.step(s, "8") == Step("3+4=", 0.0, False)
    assert env.step(s, "7") == Step(None, 0.5, True)


def test_the_engine_context_is_the_smaller_of_the_model_and_vllm_limits():
    from asyncrl.engines import engine_context

    assert engine_context(Config(), BASE) == 64  # the shipped model's max_position_embeddings
    assert engine_context(Config(engine="vllm", vllm_max_model_len=48), BASE) == 48
    assert engine_context(Config(engine="vllm", vllm_max_model_len=480), BASE) == 64
    assert engine_context(Config(engine="vllm", vllm_max_model_len=48), BASE, "hf") == 64
