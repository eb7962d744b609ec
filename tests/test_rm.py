"""asyncrl rm: Bradley-Terry loss, pair encoding, exact gradient accumulation, CLI runs and errors."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from asyncrl.cli import main
from asyncrl.policy import encode_prompts, load_tokenizer
from asyncrl.policy import encode_texts
from asyncrl.rm import bradley_terry_loss, load_reward_model, rm_backward

from conftest import write_jsonl, read_jsonl

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CPU = torch.device("cpu")




def test_bradley_terry_hand_computed_values_and_gradient():
    rc = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
    rr = torch.tensor([0.0, 0.0, 1.0], requires_grad=True)
    loss, m = bradley_terry_loss(rc, rr)
    # diffs 1, 0, -2: -log sigma(d) = log(1 + e^-d)
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6) and loss.item() == pytest.approx(1.0444456, abs=1e-6)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["margin"] == pytest.approx(-1 / 3)
    assert m["reward_chosen"] == pytest.approx(0.0) and m["reward_rejected"] == pytest.approx(1 / 3)
    loss.backward()
    # d loss / d r_c,i = -(1 - sigma(d_i)) / N ; d loss / d r_r,i = +(1 - sigma(d_i)) / N
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = torch.tensor([-(1 - sig(1)) / 3, -(1 - sig(0)) / 3, -(1 - sig(-2)) / 3])
    torch.testing.assert_close(rc.grad, want)
    torch.testing.assert_close(rr.grad, -want)
    torch.testing.assert_close(want, torch.tensor([-0.0896471, -0.1666667, -0.2935990]), atol=1e-6, rtol=0)


def test_bradley_terry_ties_are_not_counted_correct_and_swapping_flips_sign():
    loss, m = bradley_terry_loss(torch.tensor([0.5, 2.0]), torch.tensor([0.5, 0.0]))
    assert m["accuracy"] == 0.5
    l_fwd, _ = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([0.0]))
    l_rev, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([3.0]))
    assert l_fwd.item() < 0.05 < 3.0 < l_rev.item()


def test_texts_keep_bos_and_their_last_tokens_and_prompt_prefix(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ids, cut = encode_texts(tok, ["abcdefgh", "ab"], None, "auto", max_seq_tokens=5)
    assert cut == 1
    assert ids[0] == [tok.bos_token_id] + tok("efgh", add_special_tokens=False)["input_ids"]
    assert ids[1] == tok("ab")["input_ids"]
    ids, _ = encode_texts(tok, ["xy"], ["12="], "auto", max_seq_tokens=64)
    assert ids[0] == encode_prompts(tok, ["12="])[0] + tok("xy", add_special_tokens=False)["input_ids"]


def test_reward_model_from_causal_lm_and_micro_batch_invariance(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_reward_model(tiny_model_dir, CPU, tok.pad_token_id, seed=0)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    chosen, _ = encode_texts(tok, ["aaaa", "ab", "abcabcabc", "a"], None, "auto", 64)
    rejected, _ = encode_texts(tok, ["bb", "bbbbbbbbb", "b", "bab"], None, "auto", 64)
    # The reward of a text does not depend on what it is batched (and padded) with.
    alone = model(input_ids=torch.tensor([chosen[2]])).logits[0, 0]
    from asyncrl.rm import rewards

    torch.testing.assert_close(rewards(model, chosen, tok.pad_token_id, CPU)[2], alone, rtol=1e-4, atol=1e-5)

    def grads(micro):
        model.zero_grad(set_to_none=True)
        m = rm_backward(model, chosen, rejected, micro, tok.pad_token_id, CPU)
        return m, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    m_full, g_full = grads(None)
    for micro in (1, 3):
        m_micro, g_micro = grads(micro)
        assert m_micro["loss"] == pytest.approx(m_full["loss"], rel=1e-5)
        assert m_micro["accuracy"] == pytest.approx(m_full["accuracy"])
        torch.testing.assert_close(g_micro, g_full, rtol=1e-4, atol=1e-6)
    assert g_full.abs().sum() > 0


def _preference_rows(n: int, seed: int) -> list[dict]:
    """Separable: chosen texts are mostly 'a', rejected mostly 'b', both with random filler."""
    rng = random.Random(seed)

    def text(major: str) -> str:
        chars = [major] * rng.randint(3, 6) + [rng.choice("cdefgxyz") for _ in range(rng.randint(2, 5))]
        rng.shuffle(chars)
        return "".join(chars)

    return [{"chosen": text("a"), "rejected": text("b")} for _ in range(n)]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # learning runs: minutes on a 2-core machine
def test_rm_learns_held_out_preferences_and_saves_a_loadable_classifier(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train = write_jsonl(tmp_path / "train.jsonl", _preference_rows(64, seed=1))
    held = write_jsonl(tmp_path / "held.jsonl", _preference_rows(32, seed=2))
    out = tmp_path / "run"
    assert main(["rm", "--model", tiny_model_dir, "--data", str(train), "--eval-data", str(held),
                 "--output-dir", str(out), "--steps", "40", "--batch-size", "16", "--micro-batch-size", "8",
                 "--lr", "3e-3", "--warmup-steps", "4", "--eval-every", "20", "--seed", "0"]) == 0
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 20, 40]
    first, last = evals[0], evals[-1]
    assert last["eval_accuracy"] >= 0.9 and last["eval_accuracy"] > first["eval_accuracy"]
    assert last["eval_loss"] < 0.5 * first["eval_loss"] and last["eval_margin"] > first["eval_margin"]
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[-1]["samples_seen"] == 640 and {"accuracy", "margin", "loss", "lr"} <= set(rows[-1])

    ckpt = out / "checkpoints" / "step_40"
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert model.config.num_labels == 1
    with torch.no_grad():
        r_a = model(**tok(["xaaayaa"], return_tensors="pt")).logits[0, 0]
        r_b = model(**tok(["xbbbybb"], return_tensors="pt")).logits[0, 0]
    assert r_a > r_b


@pytest.mark.e2e
def test_rm_run_with_prompt_field_and_holdout(tmp_path, tiny_model_dir):
    rows = [{"p": f"{i}=", **r} for i, r in enumerate(_preference_rows(12, seed=3))]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    assert main(["rm", "--model", tiny_model_dir, "--data", str(data), "--prompt-field", "p",
                 "--output-dir", str(out), "--steps", "3", "--batch-size", "4", "--eval-holdout-rows", "4",
                 "--eval-every", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["train_pairs"], summary["eval_pairs"], summary["steps"]) == (8, 4, 3)
    assert [e["step"] for e in read_jsonl(out / "eval.jsonl")] == [0, 3]
    assert (out / "checkpoints" / "step_3" / "config.json").is_file()


@pytest.mark.parametrize(
    "rows, flags, fragment",
    [
        ([{"chosen": "a", "rejected": "b"}, {"chosen": "a"}], [], "row 2: missing field 'rejected'"),
        ([{"chosen": "a", "rejected": "b"}], ["--prompt-field", "prompt"], "row 1: missing field 'prompt'"),
        ([{"chosen": "a", "rejected": "b"}], ["--rejected-field", "chosen"], "must name different columns"),
        ([], [], "holds no rows"),
    ],
)
def test_rm_bad_input_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys, rows, flags, fragment):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["rm", "--model", tiny_model_dir, "--data", str(data), "--output-dir", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: ") and fragment in err and "\n" not in err


def test_rm_needs_data(tmp_path, tiny_model_dir, capsys):
    assert main(["rm", "--model", tiny_model_dir, "--output-dir", str(tmp_path / "r")]) == 2
    assert "rm needs preference pairs: pass --data" in capsys.readouterr().err


@pytest.mark.e2e
def test_rm_on_real_hh_rlhf_rows(tmp_path, tiny_model_dir):
    data = SHARED / "hh-rlhf-harmless" / "harmless-base_test.jsonl.gz"
    if not data.is_file():
        pytest.skip(f"real data not present: {data} (the shared data folder is absent)")
    out = tmp_path / "run"
    assert main(["rm", "--model", tiny_model_dir, "--data", str(data), "--output-dir", str(out), "--steps", "2",
                 "--batch-size", "2", "--max-seq-tokens", "64", "--eval-holdout-rows", "4", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_pairs"] == 2308 and summary["eval_pairs"] == 4
    assert summary["truncated_texts"] > 4000  # dialogues are far longer than 64 characters
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2 and all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in rows)
