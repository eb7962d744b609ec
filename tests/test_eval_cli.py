"""``asyncrl eval CHECKPOINT --task NAME [--limit N] [--output-dir DIR]`` and gsm8k through the CLI."""

import json
from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.policy import BUILTIN_MODELS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BASE = str(BUILTIN_MODELS["arithmetic"])
BASE_ACCURACY = 0.275  # the shipped base model, greedy, on the 200 arithmetic eval prompts


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_arithmetic_base_model(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", BASE, "--task", "arithmetic", "--output-dir", str(out)]) == 0
    report = json.loads((out / "eval_report.json").read_text())
    assert report["accuracy"] == pytest.approx(BASE_ACCURACY) and report["n"] == 200
    assert report["task"] == "arithmetic" and report["config"]["max_new_tokens"] == 8
    examples = _lines(out / "eval_examples.jsonl")
    assert len(examples) == 200 and sum(e["correct"] for e in examples) == 55
    assert set(examples[0]) >= {"prompt_id", "prompt", "completion", "answer", "predicted", "correct", "reward"}
    assert "accuracy 0.2750, n=200" in capsys.readouterr().out


def test_eval_limit_and_default_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", BASE, "--task", "arithmetic", "--limit", "16"]) == 0
    out = tmp_path / "eval-arithmetic-arithmetic-base"
    report = json.loads((out / "eval_report.json").read_text())
    examples = _lines(out / "eval_examples.jsonl")
    assert report["n"] == len(examples) == 16 and report["config"]["eval_limit"] == 16
    assert report["accuracy"] == pytest.approx(sum(e["correct"] for e in examples) / 16)


def test_eval_of_a_run_uses_its_config_and_matches_training_eval(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--prompts-per-step", "4", "--samples-per-prompt", "2",
                 "--eval-every", "0", "--eval-limit", "24", "--warmup-steps", "0", "--lr", "1e-3",
                 "--workers", "thread", "--output-dir", str(run)]) == 0
    assert main(["eval", str(run)]) == 0  # task, eval_limit, max_new_tokens from the run's config.yaml
    report = json.loads((run / "eval" / "step_2-arithmetic" / "eval_report.json").read_text())
    final = _lines(run / "eval.jsonl")[-1]
    assert report["n"] == final["n"] == 24 and report["accuracy"] == final["accuracy"]
    assert report["checkpoint"].endswith("step_2")
    assert not (run / "checkpoints" / "step_2" / "eval_report.json").exists()


@pytest.mark.parametrize("args, fragment, code", [
    (["{tmp}/missing", "--task", "arithmetic"], "checkpoint not found", 2),
    (["{tmp}", "--task", "arithmetic"], "is not a model folder (no config.json), a run folder or a .gguf file", 2),
    (["{tmp}/notes.txt", "--task", "arithmetic"], "is not a .gguf file", 2),
    ([BASE], "pass --task NAME", 2),
    ([BASE, "--task", "chess"], "unknown task 'chess'", 2),
    ([BASE, "--task", "arithmetic", "--limit", "0"], "eval_limit: Input should be greater than or equal to 1", 2),
    ([BASE, "--task", "gsm8k", "--gsm8k-data", "{tmp}/nothing"], "gsm8k data folder not found", 2),
])
def test_eval_bad_input_one_line_errors(tmp_path, capsys, args, fragment, code):
    (tmp_path / "notes.txt").write_text("hi")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["eval", *args, "--output-dir", str(tmp_path / "ev")]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: ") and fragment in err and "\n" not in err, err
    assert not (tmp_path / "ev").exists()


def test_eval_custom_task_reports_mean_reward(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"{a}+{a}=", "answer": 2 * a}) + "\n" for a in range(10)))
    out = tmp_path / "ev"
    assert main(["eval", BASE, "--task", "custom", "--prompts", str(prompts), "--prompt-field", "question",
                 "--reward", "tests.reward_fns:exact", "--output-dir", str(out)]) == 0
    report = json.loads((out / "eval_report.json").read_text())
    examples = _lines(out / "eval_examples.jsonl")
    assert "accuracy" not in report and report["n"] == 10 and report["reward_errors"] == 0
    assert report["reward_mean"] == pytest.approx(sum(e["reward"] for e in examples) / 10)
    assert report["config"]["reward_funcs"] == ["tests.reward_fns:exact"]


def _gsm8k_folder(folder: Path) -> Path:
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"question": f"what is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"} for i in range(6)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_gsm8k_train_and_eval_through_the_cli(tmp_path, tiny_model_dir):
    data = _gsm8k_folder(tmp_path / "gsm8k")
    run = tmp_path / "run"
    assert main(["train", "--task", "gsm8k", "--gsm8k-data", str(data), "--model", tiny_model_dir,
                 "--prompt-template", "q: {question} a:", "--steps", "2", "--prompts-per-step", "2",
                 "--samples-per-prompt", "2", "--max-new-tokens", "4", "--eval-every", "1", "--eval-limit", "3",
                 "--warmup-steps", "0", "--workers", "thread", "--output-dir", str(run)]) == 0
    evals = _lines(run / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 1, 2] and all(e["n"] == 3 and 0 <= e["accuracy"] <= 1 for e in evals)
    gens = _lines(run / "generations.jsonl")
    assert gens[0]["prompt"] == "q: what is 0 plus 0? a:" and gens[0]["answer"] == "0"
    assert main(["eval", str(run), "--limit", "2", "--output-dir", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "eval_report.json").read_text())
    assert report["task"] == "gsm8k" and report["n"] == 2 and report["config"]["gsm8k_data"] == str(data)
