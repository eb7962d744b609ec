"""``--task reasoning_gym``: reasoning-gym's procedural problems as a task source (prompts, the
dataset's own verifier as the reward, the same problems in every process), bad settings as one
line, ``--rg-dataset list``, and tiny end-to-end runs, synchronous and asynchronous."""

from __future__ import annotations

import json

import pytest

from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.policy import BUILTIN_MODELS
from asyncrl.tasks import make_task

from conftest import assert_accounting, read_jsonl

pytest.importorskip("reasoning_gym")

SMALL = '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "allow_parentheses": false, ' \
        '"allow_negation": false, "operators": ["+", "-"]}'


def _task(**kw):
    return make_task(Config(task="reasoning_gym", rg_dataset="basic_arithmetic", rg_config=SMALL, rg_size=50,
                            rg_eval_size=10, **kw))


def test_prompts_rewards_and_evaluation_come_from_the_dataset():
    task = _task()
    train, evals = task.train_pool(), task.eval_prompts()
    assert len(train) == 50 and len(evals) == 10
    p = train[0]
    assert p.meta == {"split": "train", "index": 0} and "<answer></answer>" in p.text
    expression = p.text.split("Calculate ", 1)[1].split(".", 1)[0]  # e.g. "4 - 1"
    right = str(eval(expression))  # noqa: S307 - two one-digit terms from the test's own dataset
    wrong = str(eval(expression) + 1)  # noqa: S307
    completions = [f"so <answer>{right}</answer>", f"<answer>{wrong}</answer>", right, f"<answer>1</answer> <answer>{right}</answer>"]
    assert task.reward([p] * 4, completions) == [1.0, 0.0, 0.0, 1.0]  # the last tags count; none = 0
    metrics, rows = task.evaluate([p, p], [completions[0], completions[1]])
    assert metrics == {"accuracy": 0.5, "score_mean": 0.5} and rows[0]["predicted"] == right


def test_every_process_rebuilds_the_same_problems_and_the_eval_set_ignores_the_run_seed():
    a, b = _task(seed=1), _task(seed=2)
    assert [p.text for p in a.train_pool()] == [p.text for p in b.train_pool()]
    assert [p.text for p in a.eval_prompts()] == [p.text for p in b.eval_prompts()]
    assert [p.text for p in a.eval_prompts()] != [p.text for p in a.train_pool()[:10]]


@pytest.mark.parametrize("kw, message", [
    (dict(rg_dataset="chainsum"), "did you mean chain_sum"),
    (dict(rg_dataset="chain_sum", rg_config='{"bogus": 1}'), "refused rg_config"),
    (dict(rg_dataset="chain_sum", rg_config="[1, 2]"), "JSON object"),
    (dict(rg_dataset="chain_sum", rg_config="{nope"), "not valid JSON"),
])
def test_bad_settings_are_one_line_errors(kw, message, capsys, tmp_path):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    code = main(["train", "--task", "reasoning_gym", "--model", str(BUILTIN_MODELS["arithmetic"]), *flags,
                 "--steps", "1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_rg_dataset_list_prints_every_name(capsys):
    assert main(["train", "--task", "reasoning_gym", "--rg-dataset", "list"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) > 90 and "chain_sum" in names and names == sorted(names)


@pytest.mark.e2e
@pytest.mark.parametrize("lag", ["0", "2"])
def test_a_reasoning_gym_run_trains_sync_and_async(tmp_path, lag):
    out = tmp_path / "run"
    assert main(["train", "--task", "reasoning_gym", "--model", str(BUILTIN_MODELS["arithmetic"]),
                 "--rg-dataset", "basic_arithmetic", "--rg-config", SMALL, "--prompt-template", "{question}",
                 "--steps", "3", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--max-lag", lag,
                 "--eval-limit", "8", "--max-new-tokens", "8", "--output-dir", str(out)]) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    rows = read_jsonl(out / "generations.jsonl")
    assert rows and all(r["prompt_id"].startswith("rg-basic_arithmetic-eval-") for r in rows)
    assert_accounting(json.loads((out / "summary.json").read_text()))
