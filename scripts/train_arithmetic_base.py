"""Train the tiny base model shipped in ``asyncrl/assets/arithmetic-base``.

It is a character-level ``LlamaForCausalLM`` supervised on the ``arithmetic`` task format
(prompt ``"37+58="``, completion ``"95"`` + EOS). Training stops deliberately early, the first
time greedy accuracy on a held-out dev set reaches ``--target-acc``. That way the shipped model
knows the format and ends its answers with EOS, but RL still has a lot of accuracy to gain: greedy
accuracy is low while sampling at temperature 1 often finds the right answer (high pass@k).

Usage (from the repo root, about 1-3 minutes on one CPU thread)::

    PYTHONPATH=src python scripts/train_arithmetic_base.py

Deterministic for a fixed ``--seed`` on a given machine and torch build: data come from seeded
``random.Random`` streams, and torch is seeded before init, training and sampling.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from asyncrl.tasks.arithmetic import EVAL_SEED, ArithmeticTask, make_problem, parse_answer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "src" / "asyncrl" / "assets" / "arithmetic-base"

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
CHARS = list("0123456789+-=")
MAX_NEW_TOKENS = 6  # longest answer is "198" or "-99": 3 chars + EOS, with slack


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerFast:
    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + CHARS)}
    # WordLevel needs an unk token; without one any stray character (e.g. a space) would make
    # encoding fail instead of producing a visible <unk>.
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own "word", so the WordLevel model becomes a character vocabulary.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # The default decoder would join tokens with spaces ("9 5"); Fuse concatenates them ("95").
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        # Decoder-only batched generation needs the prompts right-aligned.
        padding_side="left",
        model_max_length=64,
    )
    return fast


def check_tokenizer(tokenizer) -> None:
    ids = tokenizer("37+58=")["input_ids"]
    expected = [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(list("37+58="))
    assert ids == expected, (ids, expected)
    completion = tokenizer("95", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(completion, skip_special_tokens=True) == "95"
    assert tokenizer.decode(tokenizer("-41", add_special_tokens=False)["input_ids"]) == "-41"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def encode_example(tokenizer, prompt: str, answer: int) -> tuple[list[int], list[int]]:
    """Token ids of BOS+prompt+answer+EOS and the matching labels (-100 outside the answer)."""
    p_ids = tokenizer(prompt)["input_ids"]
    a_ids = tokenizer(str(answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def make_batch(tokenizer, rng: random.Random, batch_size: int):
    rows = [encode_example(tokenizer, *make_problem(rng)) for _ in range(batch_size)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
    labels = torch.full((batch_size, width), -100, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)  # [B, T]
    # Left padding, as at generation time. (RoPE only sees relative offsets, so this is for
    # consistency rather than necessity.)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        labels[i, width - len(ids) :] = torch.tensor(labs)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask, labels


def dev_problems(seed: int, n: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, sample: bool, num_return_sequences: int = 1):
    """Completion token ids per returned sequence (prompt stripped, padding kept)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    kwargs = dict(
        input_ids=enc["input_ids"],  # [B, P]
        attention_mask=enc["attention_mask"],  # [B, P]
        max_new_tokens=MAX_NEW_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_return_sequences=num_return_sequences,
    )
    if sample:
        # HF's sampling defaults to top_k=50; set the filters explicitly so this is pure
        # temperature-1 sampling from the model distribution (what RL generators will do).
        kwargs.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False)
    out = model.generate(**kwargs)  # [B * R, P + N]
    return out[:, enc["input_ids"].shape[1] :]  # [B * R, N]


def score(tokenizer, completion_ids: torch.Tensor, answers: list[int]):
    """(correct, ended_with_eos) per completion row."""
    correct, ended = [], []
    for row, ans in zip(completion_ids.tolist(), answers):
        has_eos = tokenizer.eos_token_id in row
        text = tokenizer.decode(row, skip_special_tokens=True)
        correct.append(parse_answer(text) == ans)
        ended.append(has_eos)
    return correct, ended


def greedy_metrics(model, tokenizer, problems: list[tuple[str, int]]) -> dict:
    prompts, answers = zip(*problems)
    comp = generate(model, tokenizer, list(prompts), sample=False)
    correct, ended = score(tokenizer, comp, list(answers))
    return {"greedy_acc": sum(correct) / len(correct), "eos_rate": sum(ended) / len(ended)}


def pass_at_k(model, tokenizer, problems: list[tuple[str, int]], k: int, seed: int) -> dict:
    prompts, answers = zip(*problems)
    torch.manual_seed(seed)
    comp = generate(model, tokenizer, list(prompts), sample=True, num_return_sequences=k)
    # generate repeats each prompt k times consecutively: rows [i*k, (i+1)*k) belong to prompt i.
    rep_answers = [a for a in answers for _ in range(k)]
    correct, ended = score(tokenizer, comp, rep_answers)
    per_prompt = [any(correct[i * k : (i + 1) * k]) for i in range(len(problems))]
    return {
        f"pass@{k}": sum(per_prompt) / len(per_prompt),
        "sample_acc": sum(correct) / len(correct),  # mean per-sample reward at temperature 1
        "sample_eos_rate": sum(ended) / len(ended),
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--seed", type=int, default=0, help="init/sampling seed")
    p.add_argument("--train-seed", type=int, default=20240, help="training-data stream seed")
    p.add_argument("--dev-seed", type=int, default=777, help="seed of the early-stopping dev set")
    p.add_argument("--dev-size", type=int, default=400)
    p.add_argument("--steps", type=int, default=3000, help="hard cap on optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument(
        "--target-acc",
        type=float,
        default=0.30,
        help="stop the first time greedy dev accuracy reaches this (<=0 disables)",
    )
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    # The repo's CPUs are shared; one thread also keeps float reductions in a fixed order.
    torch.set_num_threads(args.threads)
    assert args.train_seed != EVAL_SEED and args.dev_seed not in (EVAL_SEED, args.train_seed)
    t0 = time.time()

    tokenizer = build_tokenizer()
    check_tokenizer(tokenizer)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, vocab {config.vocab_size}", flush=True)

    dev = dev_problems(args.dev_seed, args.dev_size)
    eval_prompts = ArithmeticTask().eval_prompts()
    eval_set = [(p.text, p.meta["answer"]) for p in eval_prompts]

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    # Warmup then constant: we stop early on accuracy, so a decay horizon would be arbitrary.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))

    rng = random.Random(args.train_seed)
    torch.manual_seed(args.seed + 1)
    step, stopped_by = 0, "max_steps"
    history = []
    model.train()
    loss_ema = None
    while step < args.steps:
        input_ids, attention_mask, labels = make_batch(tokenizer, rng, args.batch_size)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        loss = out.loss.item()
        loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
        if step % args.eval_every == 0:
            model.eval()
            m = greedy_metrics(model, tokenizer, dev)
            model.train()
            history.append({"step": step, "loss": round(loss_ema, 4), **m})
            print(
                f"step {step:5d}  loss {loss_ema:.4f}  dev greedy_acc {m['greedy_acc']:.3f}"
                f"  eos {m['eos_rate']:.3f}  ({time.time() - t0:.0f}s)",
                flush=True,
            )
            if args.target_acc > 0 and m["greedy_acc"] >= args.target_acc:
                stopped_by = "target_acc"
                break
    train_time = time.time() - t0

    model.eval()
    final = greedy_metrics(model, tokenizer, eval_set)
    final.update(pass_at_k(model, tokenizer, eval_set, k=8, seed=args.seed + 2))
    print(
        f"eval (200 fixed problems): greedy_acc {final['greedy_acc']:.3f}  "
        f"pass@8(T=1) {final['pass@8']:.3f}  sample_acc {final['sample_acc']:.3f}  "
        f"eos_rate {final['eos_rate']:.3f}",
        flush=True,
    )

    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # transformers 5 records the class as "TokenizersBackend", a name 4.x cannot resolve;
    # "PreTrainedTokenizerFast" loads the same tokenizer.json in both (engines may pin 4.x).
    tok_cfg_path = out_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    # Reload with plain transformers: this is exactly how users and the engines will load it.
    re_tok = AutoTokenizer.from_pretrained(out_dir)
    check_tokenizer(re_tok)
    assert re_tok.padding_side == "left"
    re_model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    reloaded = greedy_metrics(re_model, re_tok, eval_set)
    assert reloaded["greedy_acc"] == final["greedy_acc"], (reloaded, final)

    summary = {
        "task": "arithmetic",
        "eval_set": "ArithmeticTask().eval_prompts() (200 problems, seed %d)" % EVAL_SEED,
        "greedy_acc": final["greedy_acc"],
        "pass@8_temperature_1": final["pass@8"],
        "sample_acc_temperature_1": final["sample_acc"],
        "eos_rate_greedy": final["eos_rate"],
        "eos_rate_sampled": final["sample_eos_rate"],
        "max_new_tokens": MAX_NEW_TOKENS,
        "steps": step,
        "stopped_by": stopped_by,
        "target_dev_acc": args.target_acc,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_seed": args.train_seed,
        "dev_seed": args.dev_seed,
        "num_parameters": n_params,
        "architecture": {
            "model_type": "llama",
            "hidden_size": args.hidden,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads,
            "intermediate_size": args.intermediate,
            "vocab_size": config.vocab_size,
            "tie_word_embeddings": True,
        },
        "train_wall_time_s": round(train_time, 1),
        "total_wall_time_s": round(time.time() - t0, 1),
        "torch_version": torch.__version__,
        "dev_history": history,
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    print(f"saved to {out_dir} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
