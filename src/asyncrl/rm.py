"""``asyncrl rm``: a Bradley-Terry reward model trained on chosen/rejected pairs.

The model is ``AutoModelForSequenceClassification`` with one output, initialised from a causal-LM
folder (the trunk's weights are reused, the linear ``score`` head is new, seeded by ``seed``).
The reward of a text is the head's output at its last token. Texts are either full dialogues
(``chosen`` / ``rejected`` hold everything, as in HH-RLHF) or, with ``prompt_field``, a shared
prompt (encoded as ``asyncrl sft`` encodes prompts) followed by each response. Over-long texts keep
their last ``max_seq_tokens`` tokens (after BOS), because that is where the two responses differ.

Checkpoints are ``save_pretrained`` sequence-classification folders plus the tokenizer:
``AutoModelForSequenceClassification.from_pretrained(<run>/checkpoints/step_N)`` loads them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForSequenceClassification

from asyncrl.config import Config
from asyncrl.data import DataError, column, load_rows, split_rows, steps_for_epochs
from asyncrl.policy import (
    TRAIN_DTYPE, _split_gguf, autocast, encode_texts, load_model, load_tokenizer, resolve_device, resolve_model_path,
    right_pad,
)
from asyncrl.supervised import micro_slices, prepare_run_dir, run_loop, set_threads

log = logging.getLogger(__name__)


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Pairwise Bradley-Terry loss on scalar rewards ``r_chosen`` [N], ``r_rejected`` [N].

    The Bradley-Terry model (Bradley & Terry, 1952) says P(chosen preferred over rejected) =
    sigma(r_c - r_r); the reward model maximises the likelihood of the observed preferences, as in
    InstructGPT (Ouyang et al., 2022, eq. 1)::

        loss = mean_i  -log sigma(r_c,i - r_r,i)

    Returns (loss, metrics): ``accuracy`` = mean 1[r_c > r_r] (ties count as wrong), ``margin`` =
    mean (r_c - r_r), ``reward_chosen`` / ``reward_rejected`` = mean rewards.
    """
    diff = r_chosen.float() - r_rejected.float()
    loss = -F.logsigmoid(diff).mean()
    metrics = {
        "accuracy": (diff > 0).float().mean().item(),
        "margin": diff.mean().item(),
        "reward_chosen": r_chosen.float().mean().item(),
        "reward_rejected": r_rejected.float().mean().item(),
    }
    return loss, metrics


def rewards(model, seqs: list[list[int]], pad_id: int, device: torch.device) -> Tensor:
    """Scalar reward per sequence [N]: right-padded batch, the head's output at the last real token."""
    ids, attn = right_pad(seqs, pad_id)  # [N, W] each
    with autocast(device):
        out = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
    return out.logits[:, 0].float()


def pair_rewards(model, chosen: list[list[int]], rejected: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    r = rewards(model, chosen + rejected, pad_id, device)  # one forward for both sides
    return r[: len(chosen)], r[len(chosen):]


def rm_backward(model, chosen: list[list[int]], rejected: list[list[int]], micro: int | None, pad_id: int,
                device: torch.device) -> dict:
    """Accumulate the gradient of the step's mean BT loss (micro-batches weighted by their share of
    pairs, so the result does not depend on ``micro``); returns step metrics."""
    n = len(chosen)
    sums: dict[str, float] = {}
    loss_sum = 0.0
    tokens = 0
    for sl in micro_slices(n, micro):
        rc, rr = pair_rewards(model, chosen[sl], rejected[sl], pad_id, device)
        loss, m = bradley_terry_loss(rc, rr)
        w = (sl.stop - sl.start) / n
        (loss * w).backward()
        loss_sum += loss.item() * w
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v * w
        tokens += sum(len(s) for s in chosen[sl]) + sum(len(s) for s in rejected[sl])
    return {"loss": loss_sum, **sums, "tokens": tokens}


def rm_eval(model, chosen, rejected, micro: int, pad_id: int, device) -> dict:
    rcs, rrs = [], []
    with torch.no_grad():
        for sl in micro_slices(len(chosen), micro):
            rc, rr = pair_rewards(model, chosen[sl], rejected[sl], pad_id, device)
            rcs.append(rc)
            rrs.append(rr)
    loss, m = bradley_terry_loss(torch.cat(rcs), torch.cat(rrs))
    return {"eval_loss": loss.item(), **{f"eval_{k}": v for k, v in m.items()}, "eval_pairs": len(chosen)}


def load_reward_model(path: str, device: torch.device, pad_id: int, seed: int):
    """A causal-LM (or reward-model) folder or .gguf file -> sequence classifier with one output."""
    folder, extra = _split_gguf(path)
    dtype = TRAIN_DTYPE  # trained: fp32 master weights, bf16 autocast on GPU
    torch.manual_seed(seed)  # the new score head
    if extra:
        lm = load_model(path, torch.device("cpu"), dtype)
        config = lm.config
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
        model.load_state_dict(lm.state_dict(), strict=False)  # trunk; lm_head unused, score new
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
    # The head reads the last token that is not padding: the model must know the pad id.
    model.config.pad_token_id = pad_id
    model.config.get_text_config().pad_token_id = pad_id
    return model.to(device)


def load_pairs(cfg: Config, tokenizer):
    if cfg.data.path is None:
        raise DataError("rm needs preference pairs: pass --data FILE (.jsonl with chosen/rejected fields)")

    def read(path):
        rows = load_rows(path)
        ch, rj = column(rows, cfg.data.chosen_field, path), column(rows, cfg.data.rejected_field, path)
        pr = column(rows, cfg.data.prompt_field, path) if cfg.data.prompt_field else [None] * len(rows)
        return list(zip(pr, ch, rj))

    triples = read(cfg.data.path)
    if cfg.data.eval_data is not None:
        held = read(cfg.data.eval_data)
    else:
        triples, held = split_rows(triples, cfg.data.eval_holdout_rows, cfg.seed, cfg.data.path)
    if cfg.evaluation.eval_limit:
        held = held[: cfg.evaluation.eval_limit]

    def encode(ts):
        if not ts:
            return [], [], 0
        prompts = [t[0] for t in ts] if cfg.data.prompt_field else None
        ch, c1 = encode_texts(tokenizer, [t[1] for t in ts], prompts, cfg.chat_template, cfg.data.max_seq_tokens)
        rj, c2 = encode_texts(tokenizer, [t[2] for t in ts], prompts, cfg.chat_template, cfg.data.max_seq_tokens)
        return ch, rj, c1 + c2

    train_c, train_r, cut = encode(triples)
    held_c, held_r, _ = encode(held)
    same = sum(a == b for a, b in zip(train_c, train_r))
    info = {"train_pairs": len(train_c), "eval_pairs": len(held_c), "truncated_texts": cut,
            "identical_pairs": same}
    return (train_c, train_r), (held_c, held_r), info


def run_rm(cfg: Config) -> dict:
    run_dir = prepare_run_dir(cfg)
    set_threads(cfg)
    model_path = resolve_model_path(cfg.model, "arithmetic")  # no model: the built-in base
    tokenizer = load_tokenizer(model_path)
    (tc, tr), (hc, hr), info = load_pairs(cfg, tokenizer)
    if cfg.data.epochs is not None:
        cfg.steps = steps_for_epochs(cfg.data.epochs, len(tc), cfg.data.batch_size)
    device = resolve_device(cfg.device)
    pad_id = tokenizer.pad_token_id
    model = load_reward_model(model_path, device, pad_id, cfg.seed)
    log.info("rm: %d training pairs (%d texts cut to %d tokens, %d pairs identical after cutting), "
             "%d held-out pairs, %d steps of %d", info["train_pairs"], info["truncated_texts"], cfg.data.max_seq_tokens,
             info["identical_pairs"], info["eval_pairs"], cfg.steps, cfg.data.batch_size)

    def step_fn(idx: list[int]) -> dict:
        return rm_backward(model, [tc[i] for i in idx], [tr[i] for i in idx], cfg.data.micro_batch_size, pad_id, device)

    eval_fn = (lambda: rm_eval(model, hc, hr, cfg.data.micro_batch_size or cfg.data.batch_size, pad_id, device)) if hc else None
    return run_loop(cfg, Path(run_dir), "rm", model, tokenizer, len(tc), step_fn, eval_fn, {"model": model_path, **info})
