"""The Python API (`from asyncrl import Config, train`): same runs as the CLI, Python objects for
reward functions and datasets, TRL names, and the example in examples/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl import Config, RunFailed, train
from asyncrl.cli import main
from asyncrl.config import ConfigError
from asyncrl.policy import BUILTIN_MODELS
from tests import reward_fns
from tests.conftest import build_tiny_model_dir, read_jsonl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BASE = str(BUILTIN_MODELS["arithmetic"])
ROWS = [{"question": f"{a}+{b}=", "answer": a + b, "id": i} for i, (a, b) in enumerate([(1, 2), (12, 3), (40, 9), (7, 7)])]
SMALL = dict(model=BASE, prompt_field="question", steps=2, prompts_per_step=4, samples_per_prompt=2, eval_limit=4,
             eval_every=1, max_new_tokens=4, warmup_steps=0)


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def test_the_api_and_the_cli_run_the_same_training(tmp_path):
    rows = tmp_path / "p.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    flags = ["--task", "custom", "--model", BASE, "--prompt-field", "question", "--steps", "2", "--prompts-per-step",
             "4", "--samples-per-prompt", "2", "--eval-limit", "4", "--eval-every", "1", "--max-new-tokens", "4",
             "--warmup-steps", "0", "--max-lag", "0", "--prompts", str(rows), "--reward-funcs",
             "tests.reward_fns:exact"]
    assert main(["train", *flags, "--output-dir", str(tmp_path / "cli")]) == 0
    summary = train(Config(**SMALL, max_lag=0, output_dir=str(tmp_path / "api")), reward_funcs=reward_fns.exact,
                    train_dataset=str(rows))
    cli, api = read_jsonl(tmp_path / "cli" / "metrics.jsonl"), read_jsonl(tmp_path / "api" / "metrics.jsonl")
    # synchronous and seeded: bitwise the same losses and rewards either way
    assert [(r["loss"], r["reward_mean"]) for r in cli] == [(r["loss"], r["reward_mean"]) for r in api]
    assert summary == json.loads((tmp_path / "api" / "summary.json").read_text())
    assert summary["run_dir"] == str(tmp_path / "api") and [e["step"] for e in summary["eval_history"]] == [0, 1, 2]


def test_dataset_objects_and_notebook_functions_reach_process_workers(tmp_path):
    datasets = pytest.importorskip("datasets")
    bonus = 0.25  # a closure over a local: must travel by value (cloudpickle), as from a notebook

    def exact_plus(completions, answer, **kwargs):
        return [bonus + (1.0 if c.strip() == str(a) else 0.0) for c, a in zip(completions, answer)]

    ds = datasets.Dataset.from_list(ROWS).map(lambda r: {"answer": r["answer"]})  # the user's own map
    out = tmp_path / "run"
    summary = train({**SMALL, "max_lag": 1, "workers": "process", "reward_weights": [1.0, 2.0],
                     "output_dir": str(out)},
                    reward_funcs=[exact_plus, reward_fns.async_exact], train_dataset=ds, eval_dataset=ROWS[:2])
    assert summary["steps"] == 2 and not summary["failed"]
    rows = read_jsonl(out / "metrics.jsonl")
    for r in rows:
        parts = r["rewards/exact_plus/mean"], r["rewards/async_exact/mean"]
        assert parts[0] == pytest.approx(parts[1] + bonus)
        # reward = 1 * exact_plus + 2 * async_exact, averaged over the same fresh samples
        assert r["fresh_reward_mean"] == pytest.approx(parts[0] + 2 * parts[1])
    evals = read_jsonl(out / "eval.jsonl")
    assert all(e["n"] == 2 and "rewards/async_exact/mean" in e for e in evals)


def test_conversational_rows_end_to_end(tmp_path):
    model = build_tiny_model_dir(tmp_path / "chat-model",
                                 chat_template="{% for m in messages %}<s>{{ m['content'] }}|{% endfor %}")
    seen = []

    def exact_msgs(prompts, completions, answer, **kwargs):
        seen.append((prompts[0], completions[0]))
        return [1.0 if c[0]["content"].strip() == str(a) else 0.0 for c, a in zip(completions, answer)]

    conv = [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in ROWS]
    out = tmp_path / "run"
    train({**SMALL, "model": str(model), "prompt_field": None, "max_lag": 0, "output_dir": str(out)},
          reward_funcs=exact_msgs, train_dataset=conv)
    prompt, completion = seen[0]
    assert isinstance(prompt, list) and prompt[0]["role"] == "user"
    assert isinstance(completion, list) and completion[0]["role"] == "assistant"
    gens = read_jsonl(out / "generations.jsonl")
    assert gens[0]["prompt"] == "user: 1+2="


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(config={"task": "gsm8k"}, reward_funcs=reward_fns.exact), "for task 'custom'"),
    (dict(config={"prompts": "x.jsonl"}, train_dataset=ROWS, reward_funcs=reward_fns.exact),
     "prompts set in the config and given to train() as objects"),
    (dict(config={"lossx": "grpo"}), "lossx: unknown field"),
    (dict(config=3), "config must be a Config, a dict, a YAML path or None"),
    (dict(config={}, train_dataset=ROWS), "needs prompts (--prompts PATH, or train_dataset=) and reward functions"),
    (dict(config={"reward_weights": [1.0, 2.0]}, train_dataset=ROWS, reward_funcs=reward_fns.exact),
     "reward_weights has 2 values for 1 reward functions"),
    (dict(config={"prompt_field": "question"}, train_dataset={"question": ["1+1="]}, reward_funcs=reward_fns.exact),
     "train_dataset is a dict"),
])
def test_bad_api_input_raises_one_line(tmp_path, kwargs, fragment):
    config = kwargs.pop("config")
    if isinstance(config, dict):
        config = {"output_dir": str(tmp_path / "run"), **config}
    with pytest.raises((ConfigError, ValueError)) as e:
        train(config, **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_failed_run_raises(tmp_path):
    from asyncrl.tasks import RewardError

    # in a generator process: the run fails (RunFailed); in this process (evaluation): RewardError
    with pytest.raises(RunFailed, match="reward error: tests.reward_fns:raises_on_bad raised ZeroDivisionError"):
        train({**SMALL, "max_lag": 1, "workers": "process", "eval_every": 0, "eval_prompts": None,
               "output_dir": str(tmp_path / "run")}, reward_funcs="tests.reward_fns:raises_on_bad",
              train_dataset=[{**r, "bad": True} for r in ROWS], eval_dataset=ROWS)
    with pytest.raises(RewardError, match="reward error: not_a_list returned float"):
        train({**SMALL, "max_lag": 0, "output_dir": str(tmp_path / "run2")}, reward_funcs=reward_fns.not_a_list,
              train_dataset=ROWS)


def test_the_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), "--steps", "3", "--output-dir",
                           str(tmp_path / "ex")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reward_mean" in proc.stdout and "in 3 steps" in proc.stdout
    rows = read_jsonl(tmp_path / "ex" / "metrics.jsonl")
    assert len(rows) == 3 and {"rewards/accuracy/mean", "rewards/well_formed/mean"} <= set(rows[0])
