"""Task ``reward_model``: RM scoring, batching, penalties, win rate, KL metrics, config errors, CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from asyncrl.cli import main
from asyncrl.config import Config, ConfigError, load_config
from asyncrl.engines.base import Completion
from asyncrl.evaluation import evaluate, reference_stats
from asyncrl.generator import Generator, GeneratorSettings
from asyncrl.rewards import completion_tokens, shaped_reward
from asyncrl.policy import completion_logprobs, encode_prompts, load_model, load_tokenizer, pack
from asyncrl.tasks import make_task
from asyncrl.tasks.rm_tuning import DEFAULT_PROMPTS, RewardModelTask
from asyncrl.types import Prompt

from conftest import build_tiny_classifier_dir, build_tiny_model_dir, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SHARED_ALPACA = ROOT.parent / "shared" / "data" / "alpaca-eval" / "alpaca_eval_805_prompts.jsonl"
CPU = torch.device("cpu")



def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _prompts_file(tmp_path: Path, n: int = 4, ref: bool = False) -> Path:
    rows = [{"instruction": "abcdefgh"[: i + 1], **({"ref": "xy" * (i + 1)} if ref else {})} for i in range(n)]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def _task(tmp_path, rm_dir, **kw) -> RewardModelTask:
    return RewardModelTask(str(_prompts_file(tmp_path, ref=bool(kw.get("reference_field")))), rm_dir,
                           device="cpu", **kw)


def _direct_score(rm_dir: str, prompt: str, completion: str, chat: bool = False) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    if chat:
        rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(prompt)["input_ids"]
    ids = ids + tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item()


# --- reward = RM score ------------------------------------------------------------------------------

def test_reward_is_the_reward_models_score_on_instruction_plus_completion(tmp_path, tiny_rm_dir):
    task = _task(tmp_path, tiny_rm_dir, template="q: {question} a:")
    prompts = task.eval_prompts()[:3]
    assert prompts[1].text == "q: ab a:" and prompts[1].prompt_id == "p.jsonl:2"
    comps = ["xyz", "hello", "a b c"]
    got = task.reward(prompts, comps)
    # the RM sees the instruction (no policy template) followed by the completion
    want = [_direct_score(tiny_rm_dir, p.meta["instruction"], c) for p, c in zip(prompts, comps)]
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(x, 4) for x in got)) == 3  # the scores differ, so the comparison means something


def test_reward_model_chat_template_is_used(tmp_path):
    template = ("{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
                "{% if add_generation_prompt %}|{% endif %}")
    rm = build_tiny_classifier_dir(tmp_path / "rm-chat", num_labels=1, seed=5, chat_template=template,
                                   head_scale=50.0)
    task = _task(tmp_path, rm)
    p = task.eval_prompts()[2]
    got = task.reward([p], ["xy"])[0]
    assert got == pytest.approx(_direct_score(rm, "abc", "xy", chat=True), abs=1e-5)
    assert got != pytest.approx(_direct_score(rm, "abc", "xy", chat=False), abs=1e-4)
    never = RewardModelTask(str(tmp_path / "p.jsonl"), rm, device="cpu", chat_template="never")
    assert never.reward([p], ["xy"])[0] == pytest.approx(_direct_score(rm, "abc", "xy", chat=False), abs=1e-5)


def test_batched_scores_equal_one_by_one(tmp_path, tiny_rm_dir):
    prompts = [Prompt(f"p{i}", "x", {"instruction": "abcdefgh"[: 1 + i % 5]}) for i in range(7)]
    comps = ["a", "bbbbbbbbbbbb", "", "cc dd", "e", "ffffff", "g h i j k"]
    batched = RewardModelTask(str(_prompts_file(tmp_path)), tiny_rm_dir, device="cpu", batch_size=3)
    single = RewardModelTask(str(_prompts_file(tmp_path)), tiny_rm_dir, device="cpu", batch_size=1)
    a, b = batched.reward(prompts, comps), single.reward(prompts, comps)
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-5)
    assert max(a) - min(a) > 1e-3


def test_lazy_loading_nothing_loaded_until_the_first_reward(tmp_path, tiny_rm_dir):
    task = _task(tmp_path, tiny_rm_dir)
    assert task.rm.model is None
    task.reward(task.eval_prompts()[:1], ["a"])
    assert task.rm.model is not None and task.rm.device == CPU


# --- length / missing-EOS penalties (generic, in the generator) -----------------------------------

class _FixedEngine:
    version = 0

    def __init__(self, comps):
        self.comps = comps

    def generate(self, prompts, k, greedy=False):
        return [list(self.comps) for _ in prompts]


class _ConstTask:
    name = "const"

    def train_prompts(self, seed):
        while True:
            yield Prompt("p", "ab", {})

    def reward(self, prompts, completions):
        return [1.0] * len(completions)


def test_penalties_apply_exactly(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    eos = tok.eos_token_id
    comps = [Completion([5, 6, eos], [0.0] * 3, True),  # 2 tokens + EOS
             Completion([5, 6, 7, 8], [0.0] * 4, False),  # cut at max_new_tokens, no EOS
             Completion([eos], [0.0], True)]  # EOS at once: 0 tokens

    def rewards(**kw):
        gen = Generator(_FixedEngine(comps), _ConstTask(), tok, GeneratorSettings(samples_per_prompt=3, seed=0, **kw))
        groups, _ = gen.generate(1)
        return [s.reward for s in groups[0].samples]

    assert rewards() == [1.0, 1.0, 1.0]
    assert rewards(length_penalty=0.1, missing_eos_penalty=0.5) == pytest.approx([1 - 0.2, 1 - 0.4 - 0.5, 1.0])
    assert rewards(missing_eos_penalty=2.0) == pytest.approx([1.0, -1.0, 1.0])
    assert [completion_tokens(c.ids, c.finished) for c in comps] == [2, 4, 0]
    assert shaped_reward(3.0, 10, False, 0.01, 1.0) == pytest.approx(1.9)


def test_evaluation_reports_raw_reward_and_completion_stats(tmp_path, tiny_model_dir, tiny_rm_dir):
    task = _task(tmp_path, tiny_rm_dir)
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, CPU)
    m, rows = evaluate(model, tok, task, max_new_tokens=5, length_penalty=0.1, missing_eos_penalty=0.5)
    raw = [r["reward"] for r in rows]
    assert m["reward_mean"] == pytest.approx(sum(raw) / len(raw))  # unshaped
    shaped = [r["reward"] - 0.1 * r["completion_tokens"] - (0 if r["finished"] else 0.5) for r in rows]
    assert m["shaped_reward_mean"] == pytest.approx(sum(shaped) / len(shaped))
    assert m["completion_tokens_mean"] == pytest.approx(sum(r["completion_tokens"] for r in rows) / len(rows))
    assert m["missing_eos_rate"] == pytest.approx(sum(not r["finished"] for r in rows) / len(rows))
    assert m["shaped_reward_mean"] < m["reward_mean"]  # completions are never empty of tokens and EOS together


# --- win rate -------------------------------------------------------------------------------------

class _CountScorer:
    """score = how often ``ch`` appears in the completion (or its length)."""

    def __init__(self, ch=None):
        self.ch = ch

    def score(self, prompts, completions):
        return [float(c.count(self.ch) if self.ch else len(c)) for c in completions]


def test_win_rate_on_a_constructed_case(tmp_path, tiny_rm_dir):
    rows = [{"instruction": f"q{i}", "ref": r} for i, r in enumerate(["aa", "aa", "aa", "a"])]
    path = write_jsonl(tmp_path / "e.jsonl", rows)
    task = RewardModelTask(str(path), tiny_rm_dir, reference_field="ref", gold_reward_model=tiny_rm_dir, device="cpu")
    task.rm, task.gold = _CountScorer(), _CountScorer("a")  # training RM = length, gold = number of a's
    comps = ["aaa", "b", "aa", "bbbb"]
    m, out = task.evaluate(task.eval_prompts(), comps)
    # gold: 3>2 win, 0>2, 2>2 (tie loses), 0>1 -> 1/4; training RM: 3>2, 1>2, 2>2, 4>1 -> 2/4
    assert m["gold_win_rate"] == 0.25 and m["win_rate"] == 0.5
    assert m["reward_mean"] == pytest.approx(10 / 4) and m["gold_reward_mean"] == pytest.approx(5 / 4)
    assert [r["gold_win"] for r in out] == [True, False, False, False]
    assert out[3]["reference"] == "a" and out[3]["reference_gold_reward"] == 1.0


def test_reference_field_must_be_in_every_eval_row(tmp_path, tiny_rm_dir):
    path = write_jsonl(tmp_path / "e.jsonl", [{"instruction": "a", "ref": "b"}, {"instruction": "c"}])
    with pytest.raises(ValueError, match="row 2: missing field 'ref'"):
        RewardModelTask(str(path), tiny_rm_dir, reference_field="ref", device="cpu")


# --- KL / perplexity against the reference policy -----------------------------------------------

def test_reference_stats_by_hand(tmp_path, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    policy = load_model(tiny_model_dir, CPU)
    ref = load_model(str(build_tiny_model_dir(tmp_path / "other", seed=7)), CPU)
    prompts = encode_prompts(tok, ["ab", "abcdef", "x"])
    comps = [[5, 6, tok.eos_token_id], [7], [8, 9, 10, 11]]
    per_row, ref_sum, n = reference_stats(policy, ref, tok.pad_token_id, prompts, comps, batch_size=2)
    kls, want_sum = [], 0.0
    for p, c in zip(prompts, comps):  # one row at a time, no padding
        batch = pack([p], [c], tok.pad_token_id)
        lp, lr = completion_logprobs(policy, batch, 1.0)[0], completion_logprobs(ref, batch, 1.0)[0]
        kls.append((lp - lr).sum().item())
        want_sum += lr.sum().item()
    assert per_row == pytest.approx(kls, abs=1e-4) and ref_sum == pytest.approx(want_sum, abs=1e-4) and n == 8
    assert min(abs(k) for k in kls) > 1e-4


def test_kl_and_reference_perplexity_in_evaluation(tmp_path, tiny_model_dir, tiny_rm_dir):
    task = _task(tmp_path, tiny_rm_dir)
    tok = load_tokenizer(tiny_model_dir)
    policy = load_model(tiny_model_dir, CPU)
    m, rows = evaluate(policy, tok, task, max_new_tokens=5)
    assert "kl_ref" not in m and "completion_tokens_mean" in m  # no reference model given
    same, _ = evaluate(policy, tok, task, max_new_tokens=5, ref_model=load_model(tiny_model_dir, CPU))
    assert same["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    ref = load_model(str(build_tiny_model_dir(tmp_path / "other", seed=7)), CPU)
    m, rows = evaluate(policy, tok, task, max_new_tokens=5, ref_model=ref, batch_size=3)
    assert m["kl_ref"] == pytest.approx(sum(r["kl_ref"] for r in rows) / len(rows))
    assert abs(m["kl_ref"]) > 1e-3 and m["ref_perplexity"] > 1.0
    # perplexity of the policy's own greedy tokens under itself is lower than under the other model
    assert same["ref_perplexity"] < m["ref_perplexity"]


# --- config errors ----------------------------------------------------------------------------------

def test_missing_reward_model_is_a_one_line_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError) as e:
        load_config(overrides={"task": "reward_model"})
    assert "task 'reward_model' needs --reward-model PATH" in str(e.value) and "\n" not in str(e.value)
    assert main(["train", "--task", "reward_model", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: ") and "needs --reward-model" in err and "\n" not in err


@pytest.mark.parametrize("which, fragment", [
    ("missing", "reward model not found: "),
    ("causal", "is not a sequence-classification model (architectures: LlamaForCausalLM)"),
    ("two_labels", "has 2 outputs; expected 1"),
    ("no_prompts", "reward_model prompts file not found"),
])
def test_bad_reward_model_settings_fail_at_start_up(tmp_path, tiny_model_dir, tiny_toxicity_dir, tiny_rm_dir,
                                                      capsys, which, fragment):
    prompts = _prompts_file(tmp_path)
    rm = {"missing": str(tmp_path / "nope"), "causal": tiny_model_dir, "two_labels": tiny_toxicity_dir,
          "no_prompts": tiny_rm_dir}[which]
    if which == "no_prompts":
        prompts = tmp_path / "missing.jsonl"
    out = tmp_path / "run"
    assert main(["train", "--task", "reward_model", "--model", tiny_model_dir, "--reward-model", rm,
                 "--prompts", str(prompts), "--output-dir", str(out), "--workers", "thread"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: ") and fragment in err and "\n" not in err, err
    assert not out.exists()


def test_reward_device_is_validated():
    with pytest.raises(ConfigError, match="reward_device"):
        load_config(overrides={"task": "custom", "reward_device": "gpu"})
    assert load_config(overrides={"task": "custom", "reward_device": "cuda:1"}).task.reward_device == "cuda:1"


def test_make_task_builds_the_task_from_config(tmp_path, tiny_rm_dir):
    prompts = _prompts_file(tmp_path)
    task = make_task(Config(task="reward_model", reward_model=tiny_rm_dir, prompts=str(prompts),
                            reward_batch_size=5, reward_device="cpu", prompt_template="{question}="))
    assert isinstance(task, RewardModelTask) and task.rm.batch_size == 5 and task.gold is None
    assert task.eval_prompts()[0].text == "a=" and task.wants_kl


# --- through the CLI ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_reward_model_train_and_eval_through_the_cli(tmp_path, tiny_model_dir, tiny_rm_dir):
    prompts = _prompts_file(tmp_path, n=4, ref=True)
    gold = build_tiny_classifier_dir(tmp_path / "gold", num_labels=1, seed=9, head_scale=50.0)
    run = tmp_path / "run"
    assert main(["train", "--task", "reward_model", "--model", tiny_model_dir, "--reward-model", tiny_rm_dir,
                 "--gold-reward-model", gold, "--prompts", str(prompts), "--reference-field", "ref",
                 "--length-penalty", "0.01", "--missing-eos-penalty", "0.5", "--reward-device", "cpu",
                 "--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4",
                 "--eval-every", "0", "--eval-limit", "3", "--warmup-steps", "0", "--lr", "1e-3",
                 "--workers", "thread", "--max-lag", "1", "--output-dir", str(run)]) == 0
    metrics = _lines(run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2] and all(math.isfinite(r["reward_mean"]) for r in metrics)
    evals = _lines(run / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2]
    for e in evals:
        assert e["n"] == 3 and 0 <= e["win_rate"] <= 1 and 0 <= e["gold_win_rate"] <= 1
        assert {"reward_mean", "gold_reward_mean", "kl_ref", "ref_perplexity", "shaped_reward_mean",
                "completion_tokens_mean", "missing_eos_rate"} <= set(e)
    assert evals[0]["kl_ref"] == pytest.approx(0.0, abs=1e-5)  # step 0: the policy is the reference
    gens = _lines(run / "generations.jsonl")
    assert {"reward", "gold_reward", "reference", "kl_ref", "completion_tokens"} <= set(gens[0])

    # asyncrl eval of the run: same task settings, the run's initial model as the KL reference
    assert main(["eval", str(run), "--output-dir", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "eval_report.json").read_text())
    assert report["task"] == "reward_model" and report["n"] == 3
    assert report["config"]["reference_model"] == tiny_model_dir
    assert report["reward_mean"] == pytest.approx(evals[-1]["reward_mean"], abs=1e-5)
    assert report["kl_ref"] == pytest.approx(evals[-1]["kl_ref"], abs=1e-4)
    # a bare model folder has no run to take a reference from: no KL metrics
    assert main(["eval", tiny_model_dir, "--task", "reward_model", "--reward-model", tiny_rm_dir,
                 "--prompts", str(prompts), "--max-new-tokens", "4", "--output-dir", str(tmp_path / "ev2")]) == 0
    bare = json.loads((tmp_path / "ev2" / "eval_report.json").read_text())
    assert "kl_ref" not in bare and bare["n"] == 4


def test_alpaca_eval_prompts_from_shared_data(tiny_rm_dir):
    if not SHARED_ALPACA.is_file():
        pytest.skip(f"shared data not present: {SHARED_ALPACA}")
    assert DEFAULT_PROMPTS.endswith("alpaca-eval/alpaca_eval_805_prompts.jsonl")
    task = RewardModelTask(str(SHARED_ALPACA), tiny_rm_dir, device="cpu")
    ev = task.eval_prompts()
    assert len(ev) == 805 and len({p.prompt_id for p in ev}) == 805
    assert ev[0].text == "What are the names of some famous actors that started their careers on Broadway?"
    assert ev[0].meta["dataset"] == "helpful_base"
