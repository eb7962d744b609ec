"""User-defined tasks from the command line: prompt files, reward import paths, reward-error policy."""

import json
from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.policy import BUILTIN_MODELS
from asyncrl.tasks import make_task


def _task(prompts, reward, **kw):
    return make_task(Config(task="custom", prompts=prompts, prompt_field="question", reward_funcs=[reward], **kw))

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BASE = str(BUILTIN_MODELS["arithmetic"])
# 4 rows, prompts_per_step 4: every request holds each row once (one shuffled epoch).
TINY = ["--task", "custom", "--model", BASE, "--prompt-field", "question", "--steps", "2",
        "--prompts-per-step", "4", "--samples-per-prompt", "2", "--eval-limit", "4", "--eval-every", "1",
        "--max-new-tokens", "4", "--warmup-steps", "0", "--workers", "thread"]


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    # `tests.reward_fns` must import however pytest was started (the CLI also adds the cwd).
    monkeypatch.syspath_prepend(str(ROOT))


def _write_rows(path: Path, bad_index: int | None = None) -> Path:
    rows = [{"question": f"{a}+{b}=", "answer": a + b, "id": i} for i, (a, b) in enumerate([(1, 2), (12, 3), (40, 9), (7, 7)])]
    if bad_index is not None:
        rows[bad_index]["bad"] = True
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_custom_task_end_to_end_through_the_cli(tmp_path):
    prompts = _write_rows(tmp_path / "tmp.jsonl")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--prompts", str(prompts), "--reward-funcs", "tests.reward_fns:exact",
                 "--output-dir", str(out)]) == 0
    rows = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["reward_errors_total"] == 0 for r in rows)
    evals = _lines(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 1, 2]
    # a custom reward has no notion of "correct": the eval metric is its mean reward
    assert all("accuracy" not in e and 0 <= e["reward_mean"] <= 1 and e["n"] == 4 for e in evals)
    gens = _lines(out / "generations.jsonl")
    assert gens[0]["prompt_id"] == "tmp.jsonl:1" and gens[0]["prompt"] == "1+2="
    # the eval mean is the user's reward on the greedy completions logged beside it
    first = [g for g in gens if g["step"] == 0]
    assert evals[0]["reward_mean"] == pytest.approx(sum(g["reward"] for g in first) / len(first))
    assert all(g["reward"] == (1.0 if g["completion"].strip() == str(a) else 0.0)
               for g, a in zip(first, [3, 15, 49, 14]))


def test_prompt_template_and_row_fields_reach_the_reward(tmp_path):
    prompts = _write_rows(tmp_path / "p.jsonl")
    task = make_task(Config(task="custom", prompts=str(prompts), prompt_field="question",
                            reward_funcs=["tests.reward_fns:exact"], prompt_template="1{question}"))
    ev = task.eval_prompts()
    assert ev[1].text == "112+3=" and ev[1].meta == {"question": "12+3=", "answer": 15, "id": 1}
    assert task.reward(ev[:2], ["3", "15"]) == [1.0, 1.0]
    assert task.evaluate(ev[:2], ["3", "0"])[0] == {"reward_mean": 0.5, "reward_errors": 0.0,
                                                     "rewards/exact/mean": 0.5}


def test_parquet_and_datasets_folder_prompts(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _lines(_write_rows(tmp_path / "p.jsonl"))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    for src in ("p.parquet", "folder", "dict"):
        task = _task(str(tmp_path / src), "tests.reward_fns:exact")
        assert [p.text for p in task.eval_prompts()] == ["1+2=", "12+3=", "40+9=", "7+7="], src
        assert task.eval_prompts()[3].meta["answer"] == 14


def test_eval_prompts_file(tmp_path):
    train = _write_rows(tmp_path / "train.jsonl")
    ev = tmp_path / "ev.jsonl"
    ev.write_text(json.dumps({"question": "5+5=", "answer": 10}) + "\n")
    task = _task(str(train), "tests.reward_fns:exact", eval_prompts=str(ev))
    assert [p.prompt_id for p in task.eval_prompts()] == ["ev.jsonl:1"]
    assert {next(task.train_prompts(0)).prompt_id for _ in range(1)} <= {f"train.jsonl:{i}" for i in range(1, 5)}


@pytest.mark.parametrize("flags, fragment", [
    (["--prompts", "{tmp}/missing.jsonl", "--reward-funcs", "tests.reward_fns:exact"], "data file not found"),
    (["--prompts", "{tmp}/p.jsonl", "--reward-funcs", "tests.reward_fns:exact", "--prompt-field", "text"],
     "row 1: missing field 'text' (fields present: question, answer, id)"),
    (["--prompts", "{tmp}/p.jsonl", "--reward-funcs", "tests.reward_fns"], "must look like package.module:function"),
    (["--prompts", "{tmp}/p.jsonl", "--reward-funcs", "tests.no_such_module:fn"],
     "cannot import reward module 'tests.no_such_module': ModuleNotFoundError"),
    (["--prompts", "{tmp}/p.jsonl", "--reward-funcs", "tests.reward_fns:nope"],
     "reward module 'tests.reward_fns' has no attribute 'nope'"),
    (["--prompts", "{tmp}/p.jsonl", "--reward-funcs", "tests.reward_fns:not_callable"], "is not callable"),
    (["--prompts", "{tmp}/p.txt", "--reward-funcs", "tests.reward_fns:exact"], "unknown data format"),
    (["--reward-funcs", "tests.reward_fns:exact"], "task 'custom' needs prompts (--prompts PATH"),
])
def test_bad_custom_task_inputs_get_one_line_errors(tmp_path, capsys, flags, fragment):
    _write_rows(tmp_path / "p.jsonl")
    (tmp_path / "p.txt").write_text("1+2=\n")
    out = tmp_path / "run"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(["train", *TINY, *flags, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: ") and fragment in err and "\n" not in err, err
    assert not out.exists()  # the task is checked before the run folder is created


def test_reward_module_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def length(completions, **kwargs):\n"
                                            "    return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    task = _task(str(_write_rows(tmp_path / "p.jsonl")), "my_rewards:length")
    assert task.reward(task.eval_prompts()[:2], ["1", "123"]) == [1.0, 3.0]


# --- reward errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, fragment", [
    ("raises_on_bad", "raised ZeroDivisionError: bad row reached the reward on prompt id 'p.jsonl:3' "
                      "(prompt '40+9=', completion "),
    ("nan_on_bad", "returned nan (not a finite number) for prompt id 'p.jsonl:3' (prompt '40+9='"),
    ("one_short", "returned 0 values for 1 completion on prompt id 'p.jsonl:"),
])
def test_reward_errors_stop_names_the_row(tmp_path, capsys, fn, fragment):
    prompts = _write_rows(tmp_path / "p.jsonl", bad_index=2)
    # eval only at the end, so the failure comes from the generator (the worker path)
    assert main(["train", *TINY, "--eval-every", "0", "--prompts", str(prompts), "--reward",
                 f"tests.reward_fns:{fn}", "--output-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"asyncrl: error: reward error: tests.reward_fns:{fn} ") and fragment in err, err
    assert err.endswith("pass --reward-errors skip to drop and count such groups instead")


def test_reward_errors_stop_in_a_spawned_worker_process(tmp_path):
    import subprocess
    import sys

    prompts = _write_rows(tmp_path / "p.jsonl", bad_index=0)
    proc = subprocess.run(
        [sys.executable, "-m", "asyncrl.cli", "train", *TINY, "--workers", "process", "--eval-every", "0",
         "--prompts", str(prompts), "--reward-funcs", "tests.reward_fns:raises_on_bad", "--output-dir", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("asyncrl: error: reward error: tests.reward_fns:raises_on_bad raised ZeroDivisionError")
    assert "prompt id 'p.jsonl:1' (prompt '1+2='" in last and "Traceback" not in proc.stderr


@pytest.mark.parametrize("fn", ["raises_on_bad", "nan_on_bad"])
def test_reward_errors_skip_drops_and_counts_groups(tmp_path, capsys, fn):
    prompts = _write_rows(tmp_path / "p.jsonl", bad_index=1)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--eval-every", "0", "--max-lag", "0", "--prompts", str(prompts),
                 "--reward-funcs", f"tests.reward_fns:{fn}", "--reward-errors", "skip", "--output-dir", str(out)]) == 0
    rows = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    # Synchronous, 4 rows per request with one bad: each request drops the bad row's group (K=2
    # samples) and yields 3 groups. Step 1 takes 2 requests (6 groups: 4 trained, 2 left over); the
    # leftovers are then 1 step stale > max_lag 0, so fifo drops them and step 2 takes 2 more requests.
    assert [r["reward_errors_total"] for r in rows] == [4, 8]
    assert [r["dropped_total"] for r in rows] == [0, 4]
    assert json.loads((out / "summary.json").read_text())["reward_errors"] == 8
    assert "asyncrl: warning: skipping groups with reward errors" in capsys.readouterr().err
    # the final evaluation skips (and counts) the bad row too
    final = _lines(out / "eval.jsonl")[-1]
    assert final["reward_errors"] == 1 and final["n"] == 4


def test_reward_errors_skip_gives_up_when_everything_fails(tmp_path, capsys):
    prompts = _write_rows(tmp_path / "p.jsonl")
    assert main(["train", *TINY, "--eval-every", "0", "--prompts", str(prompts), "--reward",
                 "tests.reward_fns:one_short", "--reward-errors", "skip", "--output-dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "every group had a reward error in 3 requests in a row" in err and "p.jsonl:" in err
