"""Tasks: the dispatch point, gsm8k grading and data, arithmetic metrics, reward-result checking."""

import json
import math
import multiprocessing as mp
import threading
from pathlib import Path

import pytest

from asyncrl.config import Config, ConfigError, load_config
from asyncrl.tasks import TASKS, RewardError, checked_rewards, make_task
from asyncrl.tasks.arithmetic import ArithmeticTask
from asyncrl.tasks.gsm8k import DEFAULT_TEMPLATE, GSM8KTask, gold_answer, grade
from asyncrl.types import Prompt

SHARED_GSM8K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k"


# --- dispatch -------------------------------------------------------------------------------------

def test_make_task_dispatches_on_config(tmp_path):
    assert isinstance(make_task(Config()), ArithmeticTask)
    _write_gsm8k(tmp_path)
    assert isinstance(make_task(Config(task="gsm8k", gsm8k_data=str(tmp_path))), GSM8KTask)
    assert TASKS == ("arithmetic", "gsm8k", "custom", "reward_model", "redteam", "reasoning_gym", "env")
    with pytest.raises(ValueError, match="unknown task 'chess'; known tasks: arithmetic, gsm8k, custom, "
                                         "reward_model, redteam, reasoning_gym, env"):
        make_task(Config(task="chess"))


@pytest.mark.parametrize("overrides, fragment", [
    ({"task": "gsm8k", "prompt_template": "no placeholder"}, "prompt_template must contain the placeholder {question}"),
    ({"prompt_template": "{question}?"}, "prompt_template is not used by task 'arithmetic'"),
    ({"reward_errors": "ignore"}, "reward_errors: unknown value 'ignore' (choose one of stop, skip)"),
])
def test_task_config_errors_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [{"task": "custom"}, {"task": "custom", "prompts": "x.jsonl"}])
def test_custom_task_needs_prompts_and_rewards(overrides):
    # checked when the task is built (asyncrl.train may give them as objects), still before any run folder
    with pytest.raises(ValueError) as e:
        make_task(load_config(overrides=overrides))
    assert "task 'custom' needs prompts (--prompts PATH, or train_dataset=) and reward functions" in str(e.value)


# --- gsm8k grading --------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, gold", [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18", "18"),
    ("... so 1,000 + 234\n#### 1,234", "1234"),
    ("lost 5\n#### -5", "-5"),
    ("half\n#### 0.5", "0.5"),
    ("spaces\n####   7  ", "7"),
])
def test_gold_answer_is_the_number_after_hashes(answer, gold):
    assert gold_answer(answer) == gold


def test_gold_answer_without_hashes_is_an_error():
    with pytest.raises(ValueError, match="no '#### N' final line"):
        gold_answer("The answer is 5")


@pytest.mark.parametrize("completion, gold, correct", [
    # commas as thousands separators, on either side
    ("So the total is 1,234 dollars.", "1234", True),
    ("#### 1,234", "1234", True),
    ("\\boxed{1,234}", "1234", True),
    ("The total is 1234.", "1234", True),
    ("The total is 1,243.", "1234", False),
    # negatives
    ("The temperature fell to -5 degrees.", "-5", True),
    ("\u22125", "-5", True),  # unicode minus
    ("The answer is 5.", "-5", False),
    # decimals and fractions
    ("0.5", "0.5", True),
    ("1/2", "0.5", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("0.25", "0.5", False),
    ("18.00", "18", True),
    # LaTeX
    ("The answer is \\boxed{42}.", "42", True),
    ("$42$", "42", True),
    ("\\boxed{42} and later I mention 43", "42", True),  # the boxed answer wins over later numbers
    ("\\boxed{41}", "42", False),
    # the last number is the answer when nothing is boxed
    ("9 * 2 = 18, then she sells 18 eggs; 42", "42", True),
    ("42 then 43", "42", False),
    # GSM8K-style final line in the completion
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18", True),
    ("16 - 3 - 4 = 9\n#### 9", "18", False),
    # nothing to extract
    ("I don't know", "42", False),
    ("", "42", False),
])
def test_gsm8k_grading_hand_written_cases(completion, gold, correct):
    ok, predicted = grade(completion, gold)
    assert ok is correct, (completion, gold, predicted)
    if completion.strip() and "know" not in completion:
        assert predicted is not None


def test_gsm8k_reward_and_evaluate():
    task = GSM8KTask.__new__(GSM8KTask)  # no data needed for scoring
    prompts = [Prompt("a", "q1", {"answer": "1234"}), Prompt("b", "q2", {"answer": "-3"})]
    comps = ["The answer is \\boxed{1,234}.", "It is 3."]
    assert task.reward(prompts, comps) == [1.0, 0.0]
    metrics, rows = task.evaluate(prompts, comps)
    assert metrics == {"accuracy": 0.5}
    assert [r["correct"] for r in rows] == [True, False] and rows[1]["predicted"] == "3"
    assert rows[0]["answer"] == "1234" and rows[0]["completion"] == comps[0]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        task.reward(prompts, comps[:1])


def _mv_worker(out):
    out.put(grade("so \\boxed{42}", "42"))


def test_math_verify_works_in_threads_and_spawned_processes():
    # math-verify's signal.alarm timeouts only work in a main thread; the task switches them off in
    # other threads (workers: thread) and keeps them in spawned processes (workers: process).
    results = []
    t = threading.Thread(target=lambda: results.append(grade("so \\boxed{42}", "42")))
    t.start()
    t.join()
    assert results == [(True, "42")]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_mv_worker, args=(q,))
    p.start()
    assert q.get(timeout=120) == (True, "42")
    p.join(30)
    assert p.exitcode == 0


# --- gsm8k data -----------------------------------------------------------------------------------

def _write_gsm8k(folder: Path, n_train: int = 5, n_test: int = 3) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [{"question": f"{split} q{i}: what is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"}
                for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_gsm8k_loads_splits_from_a_folder(tmp_path):
    _write_gsm8k(tmp_path, n_train=5, n_test=3)
    task = GSM8KTask(str(tmp_path), "Q: {question}\nA:")
    ev = task.eval_prompts()
    assert [p.prompt_id for p in ev] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert ev[2].text == "Q: test q2: what is 2 + 2?\nA:" and ev[2].meta["answer"] == "4"
    stream = task.train_prompts(seed=1)
    first = [next(stream).prompt_id for _ in range(10)]
    assert sorted(first[:5]) == sorted(first[5:]) == [f"gsm8k-train-{i}" for i in range(5)]  # epochs
    again = task.train_prompts(seed=1)
    assert [next(again).prompt_id for _ in range(10)] == first
    other = task.train_prompts(seed=2)
    assert [next(other).prompt_id for _ in range(10)] != first


def test_gsm8k_default_template_and_errors(tmp_path):
    _write_gsm8k(tmp_path)
    task = make_task(Config(task="gsm8k", gsm8k_data=str(tmp_path)))
    assert task.eval_prompts()[0].text == DEFAULT_TEMPLATE.replace("{question}", "test q0: what is 0 + 0?")
    with pytest.raises(ValueError, match="gsm8k data folder not found: .*missing.*set --gsm8k-data"):
        make_task(Config(task="gsm8k", gsm8k_data=str(tmp_path / "missing")))
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(ValueError, match="has no test.jsonl"):
        make_task(Config(task="gsm8k", gsm8k_data=str(tmp_path))).eval_prompts()
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "1\\n#### 1"}\nnot json\n')
    with pytest.raises(ValueError, match="train.jsonl line 2 is not valid JSON"):
        next(make_task(Config(task="gsm8k", gsm8k_data=str(tmp_path))).train_prompts(0))


def test_gsm8k_shared_data():
    if not (SHARED_GSM8K / "test.jsonl").is_file():
        pytest.skip(f"GSM8K files not present at {SHARED_GSM8K}")
    task = GSM8KTask(str(SHARED_GSM8K))
    ev = task.eval_prompts()
    assert len(ev) == 1319
    assert ev[0].meta["answer"] == "18" and "Janet" in ev[0].text
    # every gold answer parses as a number and grades itself correct
    for p in ev[:50]:
        assert grade(f"\\boxed{{{p.meta['answer']}}}", p.meta["answer"])[0], p.meta["answer"]
    assert next(task.train_prompts(0)).prompt_id.startswith("gsm8k-train-")


# --- arithmetic metric ----------------------------------------------------------------------------

def test_arithmetic_evaluate():
    task = ArithmeticTask(eval_size=3)
    prompts = task.eval_prompts()
    comps = [str(p.meta["answer"]) for p in prompts[:2]] + ["x"]
    metrics, rows = task.evaluate(prompts, comps)
    assert metrics == {"accuracy": pytest.approx(2 / 3)}
    assert [r["correct"] for r in rows] == [True, True, False] and rows[2]["predicted"] is None
    assert task.reward(prompts, comps) == [r["reward"] for r in rows]


# --- reward checking ------------------------------------------------------------------------------

class FnTask:
    name = "fn"

    def __init__(self, fn):
        self.fn = fn
        self.reward_name = "reward tests:fn"

    def reward(self, prompts, completions):
        return self.fn(prompts, completions)


def _rows(n=4):
    return [Prompt(f"row-{i}", f"{i}+1=", {"i": i}) for i in range(n)], [str(i + 1) for i in range(n)]


def test_checked_rewards_passes_good_values_through():
    prompts, comps = _rows()
    rewards, errors = checked_rewards(FnTask(lambda p, c: [1, 0.5, True, 0]), prompts, comps)
    assert rewards == [1.0, 0.5, 1.0, 0.0] and errors == {}


def _raise_on_2(prompts, comps):
    if any(p.meta["i"] == 2 for p in prompts):
        raise KeyError("answer")
    return [1.0] * len(prompts)


@pytest.mark.parametrize("fn, fragment, bad_rows", [
    (_raise_on_2, "raised KeyError: 'answer' on prompt id 'row-2' (prompt '2+1=', completion '3')", {2}),
    (lambda p, c: [math.nan if x.meta["i"] == 1 else 1.0 for x in p],
     "returned nan (not a finite number) for prompt id 'row-1'", {1}),
    (lambda p, c: [math.inf] * len(p), "returned inf (not a finite number) for prompt id 'row-0'", {0, 1, 2, 3}),
    (lambda p, c: ["high"] * len(p), "returned 'high' (not a finite number) for prompt id 'row-0'", {0, 1, 2, 3}),
    (lambda p, c: [1.0] * (len(p) - 1), "returned 0 values for 1 completion on prompt id 'row-0'", {0, 1, 2, 3}),
    (lambda p, c: [1.0] * (len(p) + 1), "returned 2 values for 1 completion on prompt id 'row-0'", {0, 1, 2, 3}),
    (lambda p, c: 1.0, "returned float, expected a list of 1 floats for prompt id 'row-0'", {0, 1, 2, 3}),
    (lambda p, c: [1.0] * 3 if len(p) > 1 else [1.0],
     "returned 3 values for 4 completions (first row: prompt id 'row-0'", {0, 1, 2, 3}),
])
def test_checked_rewards_names_the_bad_row(fn, fragment, bad_rows):
    prompts, comps = _rows()
    with pytest.raises(RewardError) as e:
        checked_rewards(FnTask(fn), prompts, comps, "stop")
    msg = str(e.value)
    assert msg.startswith("reward error: reward tests:fn ") and fragment in msg, msg
    assert "--reward-errors skip" in msg and "\n" not in msg
    rewards, errors = checked_rewards(FnTask(fn), prompts, comps, "skip")
    assert set(errors) == bad_rows and all(fragment.split(" for ")[0].split(" on ")[0] in m for m in errors.values())
    assert [i for i, r in enumerate(rewards) if r is None] == sorted(bad_rows)


def test_checked_rewards_batch_only_failure_is_reported():
    prompts, comps = _rows()

    def fn(p, c):
        if len(p) > 1:
            raise RuntimeError("batch too big")
        return [0.5]

    with pytest.raises(RewardError, match="raised RuntimeError: batch too big on a batch of 4 completions"):
        checked_rewards(FnTask(fn), prompts, comps)
