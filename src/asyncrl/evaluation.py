"""Greedy evaluation of a policy on a task's fixed eval set."""

from __future__ import annotations

import torch

from asyncrl.engines.hf import HFEngine
from asyncrl.policy import encode_prompts
from asyncrl.tasks.base import Task


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, *, max_new_tokens: int, limit: int | None = None,
             chat_template: str = "auto", batch_size: int = 64) -> tuple[float, list[dict]]:
    """Returns (accuracy = mean reward of greedy completions, per-example rows)."""
    was_training = model.training
    engine = HFEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=1.0)
    prompts = task.eval_prompts()[:limit] if limit else task.eval_prompts()
    rows: list[dict] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            ids = encode_prompts(tokenizer, [p.text for p in chunk], chat_template)
            comps = engine.generate(ids, k=1, greedy=True)
            texts = [tokenizer.decode(g[0].ids, skip_special_tokens=True) for g in comps]
            rewards = task.reward(chunk, texts)
            for p, t, r in zip(chunk, texts, rewards):
                rows.append({"prompt": p.text, "completion": t, "reward": float(r)})
    finally:
        model.train(was_training)
    accuracy = sum(r["reward"] for r in rows) / max(1, len(rows))
    return accuracy, rows
