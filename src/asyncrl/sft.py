"""``asyncrl sft``: supervised fine-tuning on prompt/completion rows.

Each row becomes prompt tokens (``policy.encode_prompts``: the chat template when the tokenizer has
one, so the policy sees prompts exactly as ``asyncrl train`` will show them) followed by the
completion's tokens and EOS. The loss is the mean negative log-likelihood of the completion tokens
(EOS included) over all completion tokens of the optimizer step; prompt and padding tokens carry
no loss. Micro-batches sum their token NLLs and divide by the step's total completion-token count,
so the gradient does not depend on ``micro_batch_size``.

The checkpoints are ordinary causal-LM folders: ``asyncrl train --model <run>/checkpoints/step_N``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from asyncrl.config import Config
from asyncrl.data import DataError, column, load_rows, split_rows, steps_for_epochs
from asyncrl.policy import (
    TRAIN_DTYPE, autocast, completion_logprobs, encode_prompts, load_model, load_tokenizer, pack, resolve_device, resolve_model_path,
)
from asyncrl.supervised import micro_slices, prepare_run_dir, run_loop, set_threads

log = logging.getLogger(__name__)


@dataclass
class Example:
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with EOS unless cut by max_seq_tokens


def build_examples(tokenizer, prompts: list[str], completions: list[str], chat_template: str,
                   max_seq_tokens: int) -> tuple[list[Example], int]:
    """Token ids for each (prompt, completion); returns (examples, how many were truncated).

    Over-long rows lose the end of the completion first; a prompt longer than
    ``max_seq_tokens - 1`` keeps its last tokens, so every example has a completion token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; sft appends EOS to every completion")
    prompt_ids = encode_prompts(tokenizer, prompts, chat_template)
    comp_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    out, cut = [], 0
    for p, c in zip(prompt_ids, comp_ids):
        c = list(c) + [eos]
        if len(p) + len(c) > max_seq_tokens:
            cut += 1
            p = p[-(max_seq_tokens - 1):]
            c = c[: max_seq_tokens - len(p)]
        out.append(Example(list(p), c))
    return out, cut


def masked_nll_sum(logp: Tensor, mask: Tensor) -> Tensor:
    """Sum of -log p over the completion tokens: ``logp`` [N, C] token log-probs, ``mask`` [N, C]
    1 on real completion tokens, 0 on padding. Prompt tokens never enter ``logp``."""
    return -(logp.float() * mask).sum()


def nll_micro(model, examples: list[Example], pad_id: int, device: torch.device) -> tuple[Tensor, int, int]:
    """One forward: (summed completion NLL, completion tokens, tokens forwarded incl. padding)."""
    packed = pack([e.prompt_ids for e in examples], [e.completion_ids for e in examples], pad_id).to(device)
    with autocast(device):
        logp = completion_logprobs(model, packed, temperature=1.0)
    return masked_nll_sum(logp, packed.completion_mask), int(packed.completion_mask.sum()), packed.input_ids.numel()


def sft_backward(model, examples: list[Example], micro: int | None, pad_id: int, device: torch.device) -> dict:
    """Accumulate the gradient of the step's mean completion-token NLL; returns metrics."""
    total = sum(len(e.completion_ids) for e in examples)
    nll = 0.0
    fwd = 0
    for sl in micro_slices(len(examples), micro):
        s, _, n_fwd = nll_micro(model, examples[sl], pad_id, device)
        (s / total).backward()
        nll += s.item()
        fwd += n_fwd
    return {"loss": nll / total, "completion_tokens": total, "tokens": fwd}


def sft_eval(model, examples: list[Example], micro: int | None, pad_id: int, device: torch.device) -> dict:
    nll, n = 0.0, 0
    with torch.no_grad():
        for sl in micro_slices(len(examples), micro):
            s, k, _ = nll_micro(model, examples[sl], pad_id, device)
            nll += s.item()
            n += k
    return {"eval_loss": nll / n, "eval_tokens": n}


def load_examples(cfg: Config, tokenizer) -> tuple[list[Example], list[Example], dict]:
    if cfg.data.path is None:
        raise DataError("sft needs training rows: pass --data FILE (.jsonl with prompt/completion fields)")
    prompt_field = cfg.data.prompt_field or "prompt"
    rows = load_rows(cfg.data.path)
    prompts = column(rows, prompt_field, cfg.data.path, messages=True)  # text or chat messages
    comps = column(rows, cfg.data.completion_field, cfg.data.path)
    pairs = list(zip(prompts, comps))
    if cfg.data.eval_data is not None:
        erows = load_rows(cfg.data.eval_data)
        eval_pairs = list(zip(column(erows, prompt_field, cfg.data.eval_data, messages=True),
                              column(erows, cfg.data.completion_field, cfg.data.eval_data)))
    else:
        pairs, eval_pairs = split_rows(pairs, cfg.data.eval_holdout_rows, cfg.seed, cfg.data.path)
    if cfg.evaluation.eval_limit:
        eval_pairs = eval_pairs[: cfg.evaluation.eval_limit]
    train, cut = build_examples(tokenizer, [p for p, _ in pairs], [c for _, c in pairs],
                                cfg.chat_template, cfg.data.max_seq_tokens)
    held, _ = build_examples(tokenizer, [p for p, _ in eval_pairs], [c for _, c in eval_pairs],
                             cfg.chat_template, cfg.data.max_seq_tokens) if eval_pairs else ([], 0)
    info = {"train_rows": len(train), "eval_rows": len(held), "truncated_rows": cut,
            "train_completion_tokens": sum(len(e.completion_ids) for e in train)}
    return train, held, info


def run_sft(cfg: Config) -> dict:
    run_dir = prepare_run_dir(cfg)
    set_threads(cfg)
    model_path = resolve_model_path(cfg.model, "arithmetic")  # no model: the built-in base
    tokenizer = load_tokenizer(model_path)
    train, held, info = load_examples(cfg, tokenizer)
    if cfg.data.epochs is not None:
        cfg.steps = steps_for_epochs(cfg.data.epochs, len(train), cfg.data.batch_size)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = load_model(model_path, device, TRAIN_DTYPE)  # fp32 master weights; bf16 autocast on GPU
    pad_id = tokenizer.pad_token_id
    log.info("sft: %d training rows (%d cut to %d tokens), %d held-out rows, %d steps of %d", info["train_rows"],
             info["truncated_rows"], cfg.data.max_seq_tokens, info["eval_rows"], cfg.steps, cfg.data.batch_size)

    def step_fn(idx: list[int]) -> dict:
        return sft_backward(model, [train[i] for i in idx], cfg.data.micro_batch_size, pad_id, device)

    eval_fn = (lambda: sft_eval(model, held, cfg.data.micro_batch_size or cfg.data.batch_size, pad_id, device)) if held else None
    return run_loop(cfg, Path(run_dir), "sft", model, tokenizer, len(train), step_fn, eval_fn,
                    {"model": model_path, **info})
