"""asyncrl sft: example building, masked NLL, exact gradient accumulation, CLI runs and errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import yaml

from asyncrl.cli import main
from asyncrl.data import DataError, batches, column, load_rows, split_rows
from asyncrl.policy import encode_prompts, load_model, load_tokenizer
from asyncrl.sft import build_examples, nll_micro, sft_backward

from conftest import write_jsonl, read_jsonl

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CPU = torch.device("cpu")




def _model_tok(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir, CPU), load_tokenizer(tiny_model_dir)


# --- data -----------------------------------------------------------------------------------------

def test_load_rows_jsonl_gz_json_and_errors(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress((tmp_path / "x.jsonl").read_bytes()))
    (tmp_path / "x.json").write_text(json.dumps(rows))
    for name in ("x.jsonl", "x.jsonl.gz", "x.json"):
        assert load_rows(tmp_path / name) == rows
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: not valid JSON"):
        load_rows(tmp_path / "bad.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_rows(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="data file not found"):
        load_rows(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="row 2: missing field 'completion'"):
        column([{"completion": "x"}, {"prompt": "y"}], "completion", "f.jsonl")
    with pytest.raises(DataError, match="row 1: field 'completion' must be a string, got int"):
        column([{"completion": 3}], "completion", "f.jsonl")
    # sft prompts may be chat messages (TRL's conversational format); anything else list-shaped is refused
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert column([{"prompt": chat}], "prompt", "f.jsonl", messages=True) == [chat]
    with pytest.raises(DataError, match="row 1: field 'prompt' holds a list that is not chat messages"):
        column([{"prompt": ["a"]}], "prompt", "f.jsonl", messages=True)
    with pytest.raises(DataError, match="row 1: field 'prompt' must be a string or chat messages, got int"):
        column([{"prompt": 3}], "prompt", "f.jsonl", messages=True)


def test_split_and_batches_are_seeded_and_cover_every_row():
    train, held = split_rows(list(range(10)), 3, seed=1, source="x")
    assert len(held) == 3 and sorted(train + held) == list(range(10))
    assert split_rows(list(range(10)), 3, seed=1, source="x") == (train, held)
    it = batches(5, 2, seed=0)
    first = [next(it) for _ in range(5)]  # 10 indices = two full epochs
    flat = [i for b in first for i in b]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))


# --- examples and loss ----------------------------------------------------------------------------

def test_examples_append_eos_and_truncate_completion_first(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ex, cut = build_examples(tok, ["12+3=", "1"], ["15", "abcdefghij"], "auto", max_seq_tokens=9)
    assert ex[0].prompt_ids == encode_prompts(tok, ["12+3="])[0]  # BOS + chars
    assert ex[0].completion_ids == tok("15", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert cut == 1 and len(ex[1].prompt_ids) + len(ex[1].completion_ids) == 9
    assert ex[1].completion_ids[-1] != tok.eos_token_id  # the end was cut, EOS with it
    # A prompt longer than the budget keeps its last tokens and leaves one completion token.
    ex, cut = build_examples(tok, ["abcdefghijkl"], ["xy"], "auto", max_seq_tokens=5)
    assert cut == 1 and len(ex[0].prompt_ids) == 4 and len(ex[0].completion_ids) == 1


def test_examples_use_the_chat_template(tmp_path):
    from conftest import build_tiny_model_dir

    template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}{% if add_generation_prompt %}:{% endif %}"
    path = build_tiny_model_dir(tmp_path / "chat", chat_template=template)
    tok = load_tokenizer(str(path))
    ex, _ = build_examples(tok, ["ab"], ["c"], "auto", 32)
    assert tok.decode(ex[0].prompt_ids) == "<ab>:"
    ex, _ = build_examples(tok, ["ab"], ["c"], "never", 32)
    assert tok.decode(ex[0].prompt_ids, skip_special_tokens=True) == "ab"


def test_loss_is_mean_nll_of_completion_tokens_only(tiny_model_dir):
    model, tok = _model_tok(tiny_model_dir)
    ex, _ = build_examples(tok, ["12+34="], ["46"], "never", 64)
    loss = sft_backward(model, ex, None, tok.pad_token_id, CPU)["loss"]
    # Hand computation: one unpadded forward over prompt+completion, log-softmax, pick targets.
    p, c = ex[0].prompt_ids, ex[0].completion_ids
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    token_nll = [-logp[t - 1, ids[0, t]].item() for t in range(1, len(p) + len(c))]
    completion_only = sum(token_nll[len(p) - 1:]) / len(c)
    everything = sum(token_nll) / len(token_nll)
    assert loss == pytest.approx(completion_only, rel=1e-5)
    assert abs(loss - everything) > 1e-3  # the check can tell masked from unmasked


def test_micro_batches_give_the_same_gradient(tiny_model_dir):
    model, tok = _model_tok(tiny_model_dir)
    # Very different completion lengths: per-micro-batch averaging would weight tokens unequally.
    ex, _ = build_examples(tok, ["1+1=", "9+9=", "3+4=", "12+30="], ["2", "18 is the answer", "7", "42"], "never", 64)

    def grads(micro):
        model.zero_grad(set_to_none=True)
        loss = sft_backward(model, ex, micro, tok.pad_token_id, CPU)["loss"]
        return loss, torch.cat([p.grad.flatten() for p in model.parameters()])

    loss_full, g_full = grads(None)
    for micro in (1, 3):
        loss_m, g_m = grads(micro)
        assert loss_m == pytest.approx(loss_full, rel=1e-5)
        torch.testing.assert_close(g_m, g_full, rtol=1e-4, atol=1e-6)
    # The naive alternative (mean of per-micro-batch means) differs on this batch.
    naive = sum(nll_micro(model, [e], tok.pad_token_id, CPU)[0].item() / len(e.completion_ids) for e in ex) / len(ex)
    assert abs(naive - loss_full) > 1e-3


# --- runs -----------------------------------------------------------------------------------------

MEMO = [{"prompt": "ab=", "completion": "123"}, {"prompt": "cd=", "completion": "98"},
        {"prompt": "ef=", "completion": "5501"}, {"prompt": "gh=", "completion": "7"}]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # learning runs: minutes on a 2-core machine
def test_sft_memorises_and_checkpoint_reloads_with_transformers(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "memo.jsonl", MEMO)
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model_dir, "--data", str(data), "--output-dir", str(out),
                 "--steps", "80", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-2",
                 "--warmup-steps", "5", "--save-every", "40", "--seed", "0"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 81))
    for k in ("step", "wall_time_s", "loss", "tokens_per_s", "lr", "samples_seen"):
        assert k in rows[-1]
    assert rows[-1]["samples_seen"] == 320
    assert rows[-1]["loss"] < 0.1 < 1.5 < rows[0]["loss"]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["path"] == str(data)  # nested: data.path
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_80"
    assert (out / "checkpoints" / "step_40").is_dir() and list((out / "tb").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 80 and summary["train_rows"] == 4

    ckpt = out / "checkpoints" / "step_80"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    for row in MEMO:
        ids = tok(row["prompt"], return_tensors="pt")["input_ids"]
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        assert tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True) == row["completion"]


@pytest.mark.e2e
def test_sft_epochs_heldout_eval_and_rl_from_the_checkpoint(tmp_path):
    rows = [{"q": f"{a}+{b}=", "a": str(a + b)} for a in range(5) for b in range(4)]  # 20 rows
    data = write_jsonl(tmp_path / "add.jsonl", rows)
    out = tmp_path / "sft"
    # Built-in arithmetic base model (no --model), so `asyncrl train` can start from the result.
    assert main(["sft", "--data", str(data), "--prompt-field", "q", "--completion-field", "a",
                 "--output-dir", str(out), "--epochs", "1.5", "--batch-size", "4", "--eval-holdout-rows", "4",
                 "--eval-every", "2", "--lr", "1e-4", "--device", "cpu"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["steps"] == 6  # ceil(1.5 * 16 / 4)
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 4, 6] and all(e["eval_tokens"] > 0 for e in evals)
    ckpt = out / "checkpoints" / "step_6"
    rl = tmp_path / "rl"
    assert main(["train", "--model", str(ckpt), "--output-dir", str(rl), "--steps", "2", "--prompts-per-step", "2",
                 "--samples-per-prompt", "2", "--max-lag", "0", "--workers", "thread", "--eval-every", "0",
                 "--eval-limit", "4", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    assert (rl / "checkpoints" / "step_2").is_dir()


@pytest.mark.parametrize(
    "rows, flags, fragment",
    [
        (None, [], "data file not found"),
        ([], [], "holds no rows"),
        ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], [], "row 2: missing field 'completion'"),
        ([{"question": "a", "answer": "b"}], [], "row 1: missing field 'prompt' (fields present: question, answer)"),
        ([{"prompt": "a", "completion": "b"}], ["--micro-batch-size", "32"], "micro_batch_size cannot exceed batch_size"),
        ([{"prompt": "a", "completion": "b"}], ["--eval-holdout-rows", "1"], "eval_holdout_rows=1 leaves no training rows"),
    ],
)
def test_sft_bad_input_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys, rows, flags, fragment):
    data = tmp_path / "d.jsonl"
    if rows is not None:
        write_jsonl(data, rows)
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model_dir, "--data", str(data), "--output-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: ") and fragment in err and "\n" not in err
    assert not (out / "checkpoints").exists()


def test_sft_needs_data_and_refuses_a_finished_run(tmp_path, tiny_model_dir, capsys):
    assert main(["sft", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "r")]) == 2
    assert "sft needs training rows: pass --data" in capsys.readouterr().err
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    data = write_jsonl(tmp_path / "d.jsonl", MEMO)
    assert main(["sft", "--model", tiny_model_dir, "--data", str(data), "--output-dir", str(tmp_path / "r")]) == 2
    assert "already holds a run with checkpoints" in capsys.readouterr().err


def test_default_output_dir_names_the_command():
    from asyncrl.cli import build_parser, resolve

    assert resolve(build_parser().parse_args(["sft"])).output_dir.startswith("runs/sft-")
    assert resolve(build_parser().parse_args(["rm"])).output_dir.startswith("runs/rm-")


@pytest.mark.e2e
def test_sft_on_real_gsm8k_train_rows(tmp_path, tiny_model_dir):
    data = SHARED / "gsm8k" / "train.jsonl"
    if not data.is_file():
        pytest.skip(f"real data not present: {data} (the shared data folder is absent)")
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model_dir, "--data", str(data), "--prompt-field", "question",
                 "--completion-field", "answer", "--output-dir", str(out), "--steps", "2", "--batch-size", "2",
                 "--max-seq-tokens", "64", "--eval-holdout-rows", "2", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_rows"] == 7471 and summary["eval_rows"] == 2
    assert summary["truncated_rows"] > 7000  # GSM8K rows are far longer than 64 characters
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2 and all(r["loss"] > 0 and r["loss"] == r["loss"] for r in rows)


def test_load_rows_parquet_and_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "x.parquet"))
    ds.save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "testonly"))
    for name in ("x.parquet", "folder", "dict"):
        assert load_rows(tmp_path / name) == rows
    with pytest.raises(DataError, match="no 'train'"):
        load_rows(tmp_path / "testonly")
