"""``--env skyrl:...``: a skyrl-gym environment, unchanged, through :class:`asyncrl.envs.skyrl.SkyRLEnvironment`:
skyrl-gym's own ``gsm8k`` on SkyRL-format rows, a user's multi-turn ``BaseTextEnv`` given as
``module:Class``, the ``max_turns`` and ``init`` rules, closing, pickling, and bad inputs as one line."""

from __future__ import annotations

import gc
import itertools
import json

import pytest

pytest.importorskip("skyrl_gym")

from asyncrl.envs.base import EnvError, Step, checked_step  # noqa: E402
from asyncrl.envs.skyrl import SkyRLEnvironment  # noqa: E402

from conftest import write_jsonl  # noqa: E402
from tests import skyrl_envs  # noqa: E402

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May? Let's think step by step and output the "
            "final answer after \"####\".")
GSM8K_ROWS = [
    {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": QUESTION}], "env_class": "gsm8k",
     "reward_spec": {"method": "rule", "ground_truth": "72"}, "extra_info": {"split": "train", "index": 0}},
    {"data_source": "openai/gsm8k", "prompt": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "What is 3 + 4 + 5? Answer after ####."}],
     "env_class": "gsm8k", "reward_spec": {"method": "rule", "ground_truth": "12"},
     "extra_info": {"split": "train", "index": 1}},
]


def _stop_rows(*words: str) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"say {w}"}], "env_class": "stop_env",
             "reward_spec": {"method": "rule", "ground_truth": w}} for w in words]


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_gsm8k_rows_become_prompts_and_episodes_score_with_skyrl_gyms_reward(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    env = SkyRLEnvironment("gsm8k", str(path))
    assert env.name == "skyrl:gsm8k" and env.max_turns == 1  # gsm8k keeps BaseTextEnv's max_turns = 1
    p0, p1 = env.train_pool()
    assert [p0.prompt_id, p1.prompt_id] == ["train.jsonl:1", "train.jsonl:2"]
    assert p1.messages == GSM8K_ROWS[1]["prompt"] and p0.meta == GSM8K_ROWS[0]
    assert p1.text == "system: Be brief.\nuser: What is 3 + 4 + 5? Answer after ####."
    assert env.eval_prompts() == [p0, p1]  # no eval file: the training rows
    stream = list(itertools.islice(env.train_prompts(seed=3), 4))
    assert sorted(p.prompt_id for p in stream) == ["train.jsonl:1", "train.jsonl:1", "train.jsonl:2", "train.jsonl:2"]

    def play(prompt, turn: str) -> Step:
        return checked_step(env.step(env.reset(prompt), turn), "test")

    assert play(p0, "48 / 2 = 24 in May, 48 + 24 = 72.\n#### 72") == Step(None, 1.0, True)
    assert play(p1, "#### 12") == Step(None, 1.0, True)
    assert play(p0, "#### 71") == Step(None, 0.0, True)  # wrong number
    assert play(p0, "The answer is 72.") == Step(None, 0.0, True)  # right number, no "#### " (strict format)
    assert play(p1, "#### 72") == Step(None, 0.0, True)  # each episode scores against its own row


def test_eval_rows_come_from_their_own_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS[1:])
    env = SkyRLEnvironment("gsm8k", train, eval_prompts=test)
    assert [p.prompt_id for p in env.eval_prompts()] == ["test.jsonl:1"]
    assert len(env.train_pool()) == 2


def test_a_users_multi_turn_env_given_as_module_class_runs_three_turns(tmp_path):
    path = write_jsonl(tmp_path / "stop.jsonl", _stop_rows("stop", "halt"))
    skyrl_envs.CLOSED.clear()
    env = SkyRLEnvironment("tests.skyrl_envs:StopEnv", path, env_config={"prefix": "again"})
    assert skyrl_envs.CLOSED.count("stop") == 1  # the environment built at start-up (first row) is closed
    assert env.name == "skyrl:tests.skyrl_envs:StopEnv"
    assert env.max_turns == 7  # None: the environment's own (StopEnv's default, no extras["max_turns"])
    prompt = env.train_pool()[0]
    state = env.reset(prompt)
    skyrl_envs.CLOSED.clear()  # (after the start-up build's close)
    s1 = checked_step(env.step(state, "hello"), "test")
    s2 = checked_step(env.step(state, "hmm, no"), "test")
    assert (s1, s2) == (Step([{"role": "user", "content": "again 1"}], 0.0, False),
                        Step([{"role": "user", "content": "again 2"}], 0.0, False))
    assert "stop" not in skyrl_envs.CLOSED  # open while the episode runs
    s3 = checked_step(env.step(state, "ok: stop"), "test")
    assert s3 == Step(None, 1.0 / 3, True) and s3.reward == pytest.approx(0.3333333)
    assert skyrl_envs.CLOSED.count("stop") == 1  # closed once, when it ended
    assert state.metadata == {"said": True}
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step(state, "stop")
    # a second episode of the other row: a fresh environment, its own word
    other = env.reset(env.train_pool()[1])
    assert env.step(other, "stop").done is False
    assert env.step(other, "halt") == Step(None, 0.5, True)


def test_max_turns_goes_into_extras_like_skyrls_generator_max_turns(tmp_path):
    path = write_jsonl(tmp_path / "stop.jsonl", _stop_rows("stop"))
    env = SkyRLEnvironment(skyrl_envs.StopEnv, path, env_config={"prefix": "p"}, max_turns=2)  # the class itself
    assert env.max_turns == 2
    state = env.reset(env.train_pool()[0])
    assert env.step(state, "a") == Step([{"role": "user", "content": "p 1"}], 0.0, False)
    assert env.step(state, "b") == Step(None, 0.0, True)  # the environment itself ended at extras["max_turns"]


def test_an_episode_the_generator_cut_closes_its_environment_when_dropped(tmp_path):
    env = SkyRLEnvironment("tests.skyrl_envs:StopEnv", write_jsonl(tmp_path / "s.jsonl", _stop_rows("cut")),
                           env_config={"prefix": "p"})
    skyrl_envs.CLOSED.clear()
    state = env.reset(env.train_pool()[0])
    assert env.step(state, "no").done is False
    assert "cut" not in skyrl_envs.CLOSED
    del state
    gc.collect()
    assert skyrl_envs.CLOSED.count("cut") == 1


def test_an_init_that_rewrites_the_prompt_is_refused(tmp_path):
    env = SkyRLEnvironment("tests.skyrl_envs:RewritingEnv", write_jsonl(tmp_path / "s.jsonl", _stop_rows("rw")),
                           env_config={"prefix": "p"})
    skyrl_envs.CLOSED.clear()
    with pytest.raises(EnvError, match="init\\(\\) rewrote the prompt of 's.jsonl:1'") as e:
        env.reset(env.train_pool()[0])
    _one_line(e)
    assert skyrl_envs.CLOSED.count("rw") == 1  # closed at once


def test_the_adapter_travels_with_cloudpickle(tmp_path):
    cloudpickle = pytest.importorskip("cloudpickle")
    env = SkyRLEnvironment("gsm8k", write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS))
    copy = cloudpickle.loads(cloudpickle.dumps(env))
    assert copy.step(copy.reset(copy.train_pool()[1]), "#### 12") == Step(None, 1.0, True)


def test_parquet_rows_read_like_jsonl(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    path = tmp_path / "train.parquet"
    pd.DataFrame(GSM8K_ROWS).to_parquet(path)
    env = SkyRLEnvironment("gsm8k", str(path))
    p0 = env.train_pool()[0]
    assert p0.messages == GSM8K_ROWS[0]["prompt"] and p0.meta["reward_spec"]["ground_truth"] == "72"
    assert env.step(env.reset(p0), "#### 72") == Step(None, 1.0, True)


@pytest.mark.parametrize("rows, match", [
    ([{"question": "hi"}], r"bad.jsonl row 1: missing field 'prompt' \(fields present: question\)"),
    ([GSM8K_ROWS[0], {**GSM8K_ROWS[1], "prompt": "What is 3 + 4?"}],
     "bad.jsonl row 2: field 'prompt' must be a non-empty list of chat messages .* got str"),
    ([{**GSM8K_ROWS[0], "prompt": []}], "row 1: field 'prompt' must be a non-empty list .* got an empty list"),
    ([{**GSM8K_ROWS[0], "prompt": [{"role": "user", "text": "hi"}]}],
     r"row 1: prompt message 1 must be \{'role': str, 'content': str\}"),
    ([{**GSM8K_ROWS[0], "env_class": "text2sql"}], "row 1: env_class 'text2sql', but the environment is 'gsm8k'"),
])
def test_malformed_rows_are_one_line_errors(tmp_path, rows, match):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=match) as e:
        SkyRLEnvironment("gsm8k", path)
    _one_line(e)


def test_bad_files_envs_and_settings_are_one_line_errors(tmp_path):
    good = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    (tmp_path / "broken.jsonl").write_text(json.dumps(GSM8K_ROWS[0]) + "\n{not json\n")
    cases = [
        (dict(env="gsm8k", prompts=str(tmp_path / "missing.jsonl")), "data file not found: .*missing.jsonl"),
        (dict(env="gsm8k", prompts=tmp_path / "broken.jsonl"), "broken.jsonl line 2: not valid JSON"),
        (dict(env="gsm8kk", prompts=good), "unknown skyrl-gym environment 'gsm8kk'; did you mean gsm8k"),
        (dict(env="tests.skyrl_envs:Nope", prompts=good), "cannot load 'Nope' from module 'tests.skyrl_envs'"),
        (dict(env="no_such_module_xyz:Env", prompts=good), "cannot load 'Env' from module 'no_such_module_xyz'"),
        (dict(env="tests.skyrl_envs:NotAnEnv", prompts=good), "not a subclass of .*BaseTextEnv"),
        (dict(env="gsm8k", prompts=good, max_turns=0), "max_turns must be a positive integer"),
        # gsm8k asserts reward_spec in its extras: found when the adapter builds one at start-up
        (dict(env="gsm8k", prompts=[{"prompt": [{"role": "user", "content": "q"}]}]),
         "could not be built for prompt 'rows:1': AssertionError: reward_spec field is required"),
        # StopEnv reads env_config.prefix: a missing setting fails at start-up too
        (dict(env="tests.skyrl_envs:StopEnv", prompts=good), "could not be built .*prefix"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            SkyRLEnvironment(kw.pop("env"), kw.pop("prompts"), **kw)
        _one_line(e)
