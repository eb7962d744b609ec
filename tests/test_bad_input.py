"""Bad input users hit, each ending in one line ``asyncrl: error: ...`` and a non-zero exit, with no
half-made run folder left behind (issue 10, item 5; the list is docs/bad_input.md).

Each case is (id, argv builder, fragment of the error line, exit code): 2 for bad input found
before anything runs (config, paths, files, models, prompts), 1 for a run that started and then
failed (a reward function that misbehaves). The table runs ``main()`` in this process, so every
case costs a fraction of a second except those that load a model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.policy import BUILTIN_MODELS

from conftest import write_jsonl

BASE = str(BUILTIN_MODELS["arithmetic"])
SMALL = ["--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--eval-every", "0",
         "--eval-limit", "4", "--max-new-tokens", "4", "--workers", "inline"]


def rows_file(tmp: Path, rows=None, text: str | None = None, name: str = "rows.jsonl") -> str:
    path = tmp / name
    if text is not None:
        path.write_text(text)
    else:
        write_jsonl(path, rows if rows is not None else [{"question": f"{i}+1=", "answer": str(i + 1)}
                                                         for i in range(8)])
    return str(path)


def custom(tmp: Path, reward: str = "tests.reward_fns:exact", **rows) -> list[str]:
    return ["--task", "custom", "--model", BASE, "--prompts", rows_file(tmp, **rows), "--prompt-field", "question",
            "--reward", reward, *SMALL]


def model_without_tokenizer(tmp: Path) -> str:
    folder = tmp / "no-tokenizer"
    folder.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(Path(BASE) / f, folder / f)
    return str(folder)


def model_without_weights(tmp: Path) -> str:
    folder = tmp / "no-weights"
    shutil.copytree(BASE, folder)
    (folder / "model.safetensors").unlink()
    return str(folder)


def fake_gguf(tmp: Path, data: bytes) -> str:
    path = tmp / "model.gguf"
    path.write_bytes(data)
    return str(path)


def run_with_checkpoint_only_config(tmp: Path) -> str:
    (tmp / "old").mkdir()
    (tmp / "old" / "config.yaml").write_text("steps: 2\n")
    return str(tmp / "old")


def full_folder(tmp: Path) -> str:
    (tmp / "busy").mkdir()
    (tmp / "busy" / "notes.txt").write_text("mine")
    return str(tmp / "busy")


CASES = [
    # --- the command line and the config ---
    ("unknown-command", lambda t: ["trian"], "invalid choice: 'trian'; did you mean 'train'?", 2),
    ("unknown-flag", lambda t: ["train", "--max-lagg", "1"], "unknown flag --max-lagg; did you mean --max-lag?", 2),
    ("unknown-loss", lambda t: ["train", "--loss", "grpoo"], "loss: unknown value 'grpoo'; did you mean 'grpo'?", 2),
    ("unknown-task", lambda t: ["train", "--task", "gsm8kk"], "unknown task 'gsm8kk'; did you mean 'gsm8k'?", 2),
    ("unknown-engine", lambda t: ["train", "--engine", "vlm"], "engine: unknown value 'vlm'; did you mean 'vllm'?", 2),
    ("unknown-runtime", lambda t: ["train", "--runtime", "rey"], "runtime: unknown value 'rey'; did you mean 'ray'?",
     2),
    ("unknown-buffer", lambda t: ["train", "--buffer", "fifo2"], "buffer: unknown value 'fifo2'", 2),
    ("variant-of-another-loss", lambda t: ["train", "--loss", "grpo", "--variant", "vargrad"],
     "'vargrad' is a variant of loss 'tb'", 2),
    ("negative-value", lambda t: ["train", "--max-lag", "-1"], "max_lag: Input should be greater than or equal to 0",
     2),
    ("zero-temperature", lambda t: ["train", "--temperature", "0"], "temperature: Input should be greater than 0", 2),
    ("not-a-number", lambda t: ["train", "--steps", "many"], "steps: Input should be a valid integer", 2),
    ("lag-below-sync", lambda t: ["train", "--sync-every", "4", "--max-lag", "1"], "max_lag=1 < sync_every-1=3", 2),
    ("correction-the-loss-cannot-take", lambda t: ["train", "--loss", "ppo", "--off-policy-correction", "token_tis"],
     "so only a mask applies", 2),
    ("clip-that-cannot-bind", lambda t: ["train", "--loss", "grpo", "--clip-ratio-c", "3"], "no clip binds", 2),
    ("one-sample-per-prompt", lambda t: ["train", "--samples-per-prompt", "1"], "samples_per_prompt must be >= 2", 2),
    ("config-file-missing", lambda t: ["train", str(t / "nope.yaml")], "config file not found", 2),
    ("config-file-bad-yaml", lambda t: ["train", rows_file(t, text="steps: [1,\n", name="c.yaml")],
     "is not valid YAML", 2),
    ("config-file-not-a-mapping", lambda t: ["train", rows_file(t, text="- 1\n- 2\n", name="c.yaml")],
     "must hold a mapping of field: value, not a list", 2),
    ("config-file-unknown-field", lambda t: ["train", rows_file(t, text="learning_rate: 1\n", name="c.yaml")],
     "learning_rate: unknown field", 2),
    # --- flags the chosen task (loss, buffer, runtime) would ignore ---
    ("custom-flags-without-task-custom", lambda t: ["train", "--prompts", rows_file(t), "--reward", "m:f"],
     "are not used by task 'arithmetic'", 2),
    ("loss-flag-of-another-loss", lambda t: ["train", "--loss", "tb", "--clip-eps", "0.3"],
     "clip_eps is not used by loss 'tb'", 2),
    ("threshold-of-another-correction", lambda t: ["train", "--loss", "grpo", "--is-low", "0.3"],
     "is_low is not used by off_policy_correction 'token_tis'", 2),
    ("buffer-flag-with-fifo", lambda t: ["train", "--recency-prob", "0.3"], "recency_prob is not used by buffer 'fifo'",
     2),
    ("ray-flag-without-ray", lambda t: ["train", "--generator-num-cpus", "2"], "not used by runtime 'local'", 2),
    ("sft-flag-in-train", lambda t: ["train", "--epochs", "2"], "epochs is not used by asyncrl train", 2),
    # --- the run folder ---
    ("output-dir-not-empty", lambda t: ["train", *SMALL, "--output-dir", full_folder(t)],
     "is not empty (it holds notes.txt); pass --overwrite", 2),
    ("output-dir-is-a-file", lambda t: ["train", *SMALL, "--output-dir", rows_file(t, text="x", name="f")],
     "is a file, not a folder", 2),
    ("resume-and-overwrite", lambda t: ["train", "--resume", full_folder(t), "--overwrite"],
     "pass one of them", 2),
    ("resume-without-checkpoints", lambda t: ["train", "--resume", run_with_checkpoint_only_config(t)],
     "no checkpoint", 2),
    ("resume-missing-folder", lambda t: ["train", "--resume", str(t / "gone")], "gone: no such folder", 2),
    # --- models ---
    ("model-path-missing", lambda t: ["train", *SMALL, "--model", str(t / "nope")], "model path does not exist", 2),
    ("model-file-not-gguf", lambda t: ["train", *SMALL, "--model", rows_file(t, text="x", name="w.bin")],
     "is not a .gguf file", 2),
    ("model-folder-without-config", lambda t: ["train", *SMALL, "--model", str(t)], "has no config.json", 2),
    ("gguf-not-gguf", lambda t: ["train", *SMALL, "--model", fake_gguf(t, b"PK\x03\x04" + b"\0" * 64)],
     "does not start with the GGUF magic bytes", 2),
    ("gguf-truncated", lambda t: ["train", *SMALL, "--model", fake_gguf(t, b"GGUF\x03\0\0\0" + b"\0" * 5)],
     "the header is cut short", 2),
    ("model-without-tokenizer", lambda t: ["train", *SMALL, "--model", model_without_tokenizer(t)],
     "has no tokenizer files", 2),
    ("model-without-weights", lambda t: ["train", *SMALL, "--model", model_without_weights(t)],
     "cannot load the model", 2),
    ("max-new-tokens-past-context", lambda t: ["train", *SMALL, "--max-new-tokens", "64"],
     "max_new_tokens=64 leaves no room for a prompt", 2),
    # --- prompt files ---
    ("rows-malformed-json", lambda t: ["train", *custom(t, text='{"question": "1+1=", "answer": "2"}\n{"question"\n')],
     "line 2: not valid JSON", 2),
    ("rows-empty-file", lambda t: ["train", *custom(t, text="\n")], "holds no rows", 2),
    ("rows-not-objects", lambda t: ["train", *custom(t, text="[1, 2]\n")], "line 1: expected a JSON object", 2),
    ("rows-missing-field", lambda t: ["train", *custom(t, rows=[{"question": "1+1="}, {"q": "2+2="}])],
     "row 2: missing field 'question'", 2),
    ("rows-file-missing", lambda t: ["train", "--task", "custom", "--prompts", str(t / "no.jsonl"), "--reward",
                                     "tests.reward_fns:exact", *SMALL], "no.jsonl", 2),
    ("prompt-longer-than-context", lambda t: ["train", *custom(t, rows=[{"question": "1+" * 40 + "1=", "answer": "41"},
                                                                         {"question": "1+1=", "answer": "2"}])],
     "more than the", 2),
    # --- reward functions ---
    ("reward-not-importable", lambda t: ["train", *custom(t, reward="no_such_module:fn")],
     "cannot import reward module 'no_such_module'", 2),
    ("reward-missing-function", lambda t: ["train", *custom(t, reward="tests.reward_fns:nope")],
     "has no attribute 'nope'", 2),
    ("reward-not-callable", lambda t: ["train", *custom(t, reward="tests.reward_fns:not_callable")], "is not callable",
     2),
    ("reward-bad-spec", lambda t: ["train", *custom(t, reward="tests.reward_fns")], "must look like package.module", 2),
    ("reward-raises", lambda t: ["train", *custom(t, reward="tests.reward_fns:fails_in_batches")], "batch too big", 1),
    ("reward-nan", lambda t: ["train", *custom(t, reward="tests.reward_fns:nan_on_bad",
                                                rows=[{"question": "1+1=", "answer": "2", "bad": True}] * 4)],
     "nan", 1),
    ("reward-inf", lambda t: ["train", *custom(t, reward="tests.reward_fns:inf_always")], "inf", 1),
    ("reward-wrong-count", lambda t: ["train", *custom(t, reward="tests.reward_fns:one_short")],
     "returned 0 values for 1 completion", 1),
    ("reward-not-a-list", lambda t: ["train", *custom(t, reward="tests.reward_fns:not_a_list")], "list", 1),
    ("reward-weights-count", lambda t: ["train", *custom(t), "--reward-weights", "1,2"],
     "reward_weights has 2 values for 1 reward_funcs", 2),
    ("reward-scores-nothing", lambda t: ["train", *custom(t, reward="tests.reward_fns:none_always")],
     "scored nothing (every reward function returned None)", 1),
    ("reward-and-reward-funcs", lambda t: ["train", *custom(t), "--reward-funcs", "tests.reward_fns:short"],
     "reward and reward_funcs both given", 2),
    ("column-map-missing-column", lambda t: ["train", *custom(t), "--column-map", "problem=question"],
     "column_map: rows.jsonl has no column 'problem'", 2),
    ("chat-prompt-without-template", lambda t: ["train", *custom(
        t, rows=[{"question": [{"role": "user", "content": "1+1="}], "answer": "2"}] * 2)],
     "needs the tokenizer's chat template", 2),
    # --- environments (--task env) ---
    ("unknown-env", lambda t: ["train", "--task", "env", "--env", "arithmetic_retyr"],
     "unknown environment 'arithmetic_retyr'", 2),
    ("env-args-not-json", lambda t: ["train", "--task", "env", "--env-args", "{max_turns: 2"],
     "env_args is not valid JSON", 2),
    ("env-args-not-taken", lambda t: ["train", "--task", "env", "--env-args", '{"turns": 2}'],
     "environment 'arithmetic_retry' does not take env_args ['turns']", 2),
    ("env-factory-not-importable", lambda t: ["train", "--task", "env", "--env", "no_such_module:make"],
     "--env no_such_module:make: cannot load 'make' from module 'no_such_module'", 2),
    ("env-raises", lambda t: ["train", *SMALL, "--task", "env", "--env", "tests.env_fixtures:AlwaysRaising"],
     "step raised RuntimeError: the board is on fire", 1),
    ("env-malformed-observation", lambda t: ["train", *SMALL, "--task", "env", "--env", "tests.env_fixtures:Malformed"],
     "returned an observation of type dict, expected text or a list of chat messages", 1),
    # --- other commands ---
    ("eval-missing-checkpoint", lambda t: ["eval", str(t / "nope")], "nope", 2),
    ("plot-folder-without-metrics", lambda t: ["plot", str(t), "--out", str(t / "p.png")], "metrics.jsonl", 2),
]


@pytest.mark.parametrize("name, argv, fragment, code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, capsys, name, argv, fragment, code):
    out = tmp_path / "run"
    args = argv(tmp_path)
    if args[0] == "train" and "--output-dir" not in args and "--resume" not in args:
        args += ["--output-dir", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("asyncrl: warning")]
    assert len(lines) == 1 and lines[0].startswith("asyncrl: error: "), err
    assert "Traceback" not in err
    assert fragment.lower() in lines[0].lower(), lines[0]
    # Refused, or failed before the first training step (the reward errors here fail in the step-0
    # evaluation): no run folder, nothing new beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_docs_list_exactly_these_cases():
    """docs/bad_input.md's tables are the list of these cases, one row per id, in the same order."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "bad_input.md").read_text()
    rows = [line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")]
    assert [r for r in rows if r != "id"] == [c[0] for c in CASES]


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["train", *SMALL, "--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "r"),
                 "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("asyncrl: error:")


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    """A failure after the run folder was made (the tokenizer loads only in the controller)."""
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--model", model_without_tokenizer(tmp_path), "--output-dir", str(out)]) == 2
    assert not out.exists()


def test_a_pad_token_less_tokenizer_trains_with_eos_as_pad(tmp_path):
    from transformers import AutoTokenizer

    from asyncrl.policy import load_tokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(BASE, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None
    tok = load_tokenizer(str(folder))
    assert tok.pad_token_id == tok.eos_token_id
    assert main(["train", *SMALL, "--model", str(folder), "--output-dir", str(tmp_path / "r")]) == 0


def test_overwrite_removes_only_asyncrl_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--output-dir", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["train", *SMALL, "--output-dir", str(out)]) == 2  # refused: a run with checkpoints
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", *SMALL, "--steps", "1", "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_1"]
    # A folder asyncrl did not write inside checkpoints/ is not removed: --overwrite refuses.
    (out / "checkpoints" / "my_model").mkdir()
    assert main(["train", *SMALL, "--output-dir", str(out), "--overwrite"]) == 2
    assert "was not written by asyncrl" in capsys.readouterr().err
    assert (out / "checkpoints" / "step_1").is_dir()
