"""Reward functions in TRL's convention (asyncrl.rewards), conversational rows and dataset sources."""

import asyncio
import logging
import json
import time
from pathlib import Path

import pytest

from asyncrl.config import Config
from asyncrl.data import DataError, load_rows, rows_of
from asyncrl.rewards import make_reward_funcs, score
from asyncrl.tasks import TaskInputs, make_task
from asyncrl.tasks.base import RewardError, checked_rewards
from tests import reward_fns

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"question": "1+2=", "answer": 3, "id": 0}, {"question": "12+3=", "answer": 15, "id": 1},
        {"question": "40+9=", "answer": 49, "id": 2}, {"question": "7+7=", "answer": 14, "id": 3}]
CHAT = "{% for m in messages %}<s>{{ m['role'][0] }}:{{ m['content'] }}|{% endfor %}a:"


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def task_of(funcs, rows=ROWS, weights=None, **kw):
    cfg = Config(task="custom", prompt_field=kw.pop("prompt_field", "question"), reward_weights=weights, **kw)
    return make_task(cfg, TaskInputs(reward_funcs=funcs, train_dataset=rows))


def test_trl_keyword_arguments_reach_the_function():
    reward_fns.everything.calls.clear()
    task = task_of([reward_fns.everything], steps=50)
    prompts = task.eval_prompts()[:2]
    rewards, errors = checked_rewards(task, prompts, ["3", "0"], completion_ids=[[5, 2], [3]], step=7)
    assert rewards == [0.0, 0.0] and errors == {}
    call = reward_fns.everything.calls[-1]
    assert call["prompts"] == ["1+2=", "12+3="] and call["completions"] == ["3", "0"]
    assert call["completion_ids"] == [[5, 2], [3]]
    assert call["trainer_state"].global_step == 7 and call["trainer_state"].max_steps == 50
    # every dataset column but the prompt's, as a list (TRL passes the same)
    assert call["answer"] == [3, 15] and call["id"] == [0, 1] and "question" not in call


def test_a_function_gets_only_what_it_names_when_it_has_no_kwargs():
    def f(completions, answer):
        return [float(c == str(a)) for c, a in zip(completions, answer)]

    task = task_of([f])
    assert task.reward(task.eval_prompts()[:2], ["3", "1"]) == [1.0, 0.0]


def test_weights_none_and_per_function_means():
    # exact (w=1) scores every row; only_even_ids (w=0.5) scores ids 0 and 2 and returns None for 1, 3
    task = task_of([reward_fns.exact, reward_fns.only_even_ids], weights=[1.0, 0.5])
    prompts = task.eval_prompts()
    parts: dict = {}
    rewards, errors = checked_rewards(task, prompts, ["3", "0", "49", "0"], components=parts)
    assert errors == {}
    assert rewards == [1.5, 0.0, 1.5, 0.0]  # 1*1 + 0.5*1 ; 1*0 ; 1*1 + 0.5*1 ; 1*0
    assert parts == {"exact": [1.0, 0.0, 1.0, 0.0], "only_even_ids": [1.0, None, 1.0, None]}
    metrics, rows = task.evaluate(prompts, ["3", "0", "49", "0"])
    assert metrics["reward_mean"] == pytest.approx(0.75)
    assert metrics["rewards/exact/mean"] == pytest.approx(0.5) and metrics["rewards/only_even_ids/mean"] == 1.0
    assert rows[1]["rewards/only_even_ids"] is None and rows[0]["rewards/exact"] == 1.0


def test_a_row_no_function_scores_is_a_reward_error():
    task = task_of([reward_fns.none_always])
    with pytest.raises(RewardError, match=r"scored nothing \(every reward function returned None\) for prompt id"):
        checked_rewards(task, task.eval_prompts()[:2], ["3", "0"])
    rewards, errors = checked_rewards(task, task.eval_prompts()[:2], ["3", "0"], "skip")
    assert rewards == [None, None] and set(errors) == {0, 1}


def test_several_functions_name_the_one_that_raised():
    task = task_of([reward_fns.exact, reward_fns.raises_on_bad], rows=[dict(ROWS[0]), {**ROWS[1], "bad": True}])
    with pytest.raises(RewardError) as e:
        checked_rewards(task, task.eval_prompts(), ["3", "15"])
    msg = str(e.value)
    assert "raises_on_bad raised ZeroDivisionError: bad row reached the reward" in msg and "'12+3='" in msg, msg


def test_async_functions_are_awaited_concurrently():
    async def slow_a(completions, **kw):
        await asyncio.sleep(0.3)
        return [1.0] * len(completions)

    async def slow_b(completions, **kw):
        await asyncio.sleep(0.3)
        return [2.0] * len(completions)

    task = task_of([slow_a, slow_b, reward_fns.exact])
    t0 = time.perf_counter()
    out = task.reward(task.eval_prompts()[:2], ["3", "0"])
    elapsed = time.perf_counter() - t0
    assert list(out) == [4.0, 3.0]
    assert elapsed < 0.55, f"two 0.3 s async rewards took {elapsed:.2f} s: not concurrent"


def test_async_reward_inside_a_running_event_loop():
    # A notebook runs its cells inside an event loop: scoring must not call asyncio.run there.
    task = task_of([reward_fns.async_exact])

    async def cell():
        return list(task.reward(task.eval_prompts()[:2], ["3", "1"]))

    assert asyncio.run(cell()) == [1.0, 0.0]


def test_legacy_three_list_form_still_works_with_a_warning(capsys, caplog):
    task = task_of(["tests.reward_fns:exact_legacy"])
    with caplog.at_level(logging.WARNING, logger="asyncrl"):
        assert list(task.reward(task.eval_prompts()[:2], ["3", "15"])) == [1.0, 1.0]
        assert list(task.reward(task.eval_prompts()[:2], ["3", "15"])) == [1.0, 1.0]  # warned once
    (record,) = caplog.records  # logged by the library (the CLI shows it as "asyncrl: warning: ..."), not printed
    assert record.name == "asyncrl.rewards" and record.levelno == logging.WARNING
    assert "uses the old form fn(prompts, completions, rows)" in record.getMessage() and "**kwargs" in record.getMessage()
    assert capsys.readouterr() == ("", "")


def test_reward_names_are_unique_and_specs_kept():
    funcs = make_reward_funcs([reward_fns.exact, "tests.reward_fns:exact", lambda completions, **k: [0.0]])
    assert [f.name for f in funcs] == ["exact", "exact_2", "_lambda_"]
    assert funcs[1].spec == "tests.reward_fns:exact"


def test_reward_model_folder_as_a_reward_function(tiny_rm_dir):
    from asyncrl.hf_models import RewardModelScorer

    task = task_of([tiny_rm_dir, reward_fns.exact], weights=[2.0, 1.0], reward_device="cpu")
    prompts = task.eval_prompts()[:2]
    parts: dict = {}
    rewards, _ = checked_rewards(task, prompts, ["3", "1"], components=parts)
    expected = RewardModelScorer(tiny_rm_dir, device="cpu").score(["1+2=", "12+3="], ["3", "1"])
    name = Path(tiny_rm_dir).name
    assert parts[name] == pytest.approx(expected, abs=1e-6)
    assert rewards == pytest.approx([2 * expected[0] + 1.0, 2 * expected[1]], abs=1e-6)


# --- conversational rows ------------------------------------------------------------------------------

def conv_rows():
    return [{"prompt": [{"role": "system", "content": "add"}, {"role": "user", "content": q["question"]}],
             "answer": q["answer"]} for q in ROWS]


def test_conversational_prompts_render_with_the_chat_template_and_completions_are_messages(tmp_path):
    from asyncrl.policy import encode_prompts, load_tokenizer
    from tests.conftest import build_tiny_model_dir

    reward_fns.everything.calls.clear()
    task = task_of([reward_fns.everything], rows=conv_rows(), prompt_field="prompt")
    p = task.eval_prompts()[0]
    assert p.messages == conv_rows()[0]["prompt"] and p.text == "system: add\nuser: 1+2="
    task.reward([p], ["3"])
    call = reward_fns.everything.calls[-1]
    assert call["prompts"] == [conv_rows()[0]["prompt"]]
    assert call["completions"] == [[{"role": "assistant", "content": "3"}]]
    tok = load_tokenizer(str(build_tiny_model_dir(tmp_path / "m", chat_template=CHAT)))
    ids = encode_prompts(tok, [p.model_input], "auto")[0]
    assert tok.decode(ids) == "<s>s:add|<s>u:1+2=|a:"
    with pytest.raises(ValueError, match="needs the tokenizer's chat template: chat_template is 'never'"):
        encode_prompts(tok, [p.model_input], "never")


def test_standard_and_conversational_rows_score_the_same():
    std = task_of([reward_fns.exact])
    conv = task_of([reward_fns.exact], rows=[{**r, "prompt": r["prompt"]} for r in conv_rows()], prompt_field="prompt")

    def exact_msgs(completions, answer, **kw):
        return reward_fns.exact([c[0]["content"] for c in completions], answer)

    conv = task_of([exact_msgs], rows=conv_rows(), prompt_field="prompt")
    comps = ["3", "0", "49", "14"]
    assert list(std.reward(std.eval_prompts(), comps)) == list(conv.reward(conv.eval_prompts(), comps)) == [1, 0, 1, 1]


def test_bad_prompt_values_are_refused_with_the_row():
    with pytest.raises(DataError, match=r"row 2: field 'question' must be a string or a list of chat messages"):
        task_of([reward_fns.exact], rows=[ROWS[0], {"question": 5, "answer": 1}])
    with pytest.raises(DataError, match="prompt_template applies to text prompts"):
        task_of([reward_fns.exact], rows=conv_rows(), prompt_field="prompt", prompt_template="Q: {question}")


# --- dataset sources ----------------------------------------------------------------------------------

def test_dataset_objects_splits_and_column_map(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS).filter(lambda r: r["id"] != 3)  # the user's own filter
    assert [r["id"] for r in rows_of(ds)] == [0, 1, 2]
    with pytest.raises(DataError, match="DatasetDict with splits train; pass one split"):
        rows_of(datasets.DatasetDict({"train": ds}))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(tmp_path / "dd", "test")) == 1 and len(load_rows(tmp_path / "dd")) == 3
    with pytest.raises(DataError, match="holds splits train, test but no 'validation'"):
        load_rows(tmp_path / "dd", "validation")
    # column_map: a dataset with `question` feeds a TRL function that expects `prompt`-less columns renamed
    task = make_task(Config(task="custom", prompts=str(tmp_path / "dd"), eval_prompts=str(tmp_path / "dd"),
                            column_map="question=prompt,answer=solution", reward_funcs=["tests.reward_fns:exact"]))
    assert [p.text for p in task.eval_prompts()] == ["1+2="] and task.eval_prompts()[0].meta["solution"] == 3
    with pytest.raises(DataError, match="column_map: .* has no column 'nope'"):
        make_task(Config(task="custom", prompts=str(tmp_path / "dd"), column_map="nope=prompt",
                         reward_funcs=["tests.reward_fns:exact"]))


def test_hub_name_offline_is_one_line(monkeypatch, tmp_path):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError) as e:
        load_rows("nobody-here/no-such-dataset", "train")
    assert "cannot load hub dataset 'nobody-here/no-such-dataset' (split 'train')" in str(e.value)
    assert "\n" not in str(e.value)


def test_task_inputs_travel_by_cloudpickle():
    scale = 3.0
    inputs = TaskInputs(reward_funcs=[lambda completions, **kw: [scale] * len(completions)], train_dataset=ROWS)
    back = TaskInputs.loads(inputs.dumps())
    task = make_task(Config(task="custom", prompt_field="question"), back)
    assert list(task.reward(task.eval_prompts()[:2], ["a", "b"])) == [3.0, 3.0]


def test_jsonl_rows_keep_working(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    task = make_task(Config(task="custom", prompts=str(path), prompt_field="question",
                            reward_funcs="tests.reward_fns:exact,tests.reward_fns:short", reward_weights="1,0.5"))
    assert [f.name for f in task.funcs] == ["exact", "short"] and [f.weight for f in task.funcs] == [1.0, 0.5]
