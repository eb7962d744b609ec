"""Tasks, chosen at one dispatch point: :func:`make_task`.

A task is a prompt source, a reward and an evaluation metric (the :class:`Task` protocol in
``base.py``). Adding one is one small file under ``tasks/`` plus one branch here; see docs/tasks.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncrl.tasks.base import RewardError, Task, checked_rewards

if TYPE_CHECKING:
    from asyncrl.config import Config

TASKS = ("arithmetic", "gsm8k", "custom", "reward_model", "redteam")

__all__ = ["TASKS", "RewardError", "Task", "checked_rewards", "make_task"]


def make_task(cfg: "Config") -> Task:
    """The task ``cfg.task``, built from the config fields it reads."""
    if cfg.task == "arithmetic":
        from asyncrl.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask()
    if cfg.task == "gsm8k":
        from asyncrl.tasks.gsm8k import GSM8KTask

        return GSM8KTask(cfg.gsm8k_data, cfg.prompt_template)
    if cfg.task == "custom":
        from asyncrl.tasks.custom import CustomTask

        return CustomTask(cfg.prompts, cfg.prompt_field or "prompt", cfg.reward, cfg.eval_prompts, cfg.prompt_template,
                          cfg.reward_errors)
    if cfg.task == "reward_model":
        from asyncrl.tasks.rm_tuning import RewardModelTask

        return RewardModelTask(cfg.prompts, cfg.reward_model, prompt_field=cfg.prompt_field,
                               eval_prompts=cfg.eval_prompts, template=cfg.prompt_template,
                               gold_reward_model=cfg.gold_reward_model, reference_field=cfg.reference_field,
                               device=cfg.reward_device, batch_size=cfg.reward_batch_size,
                               chat_template=cfg.chat_template, max_seq_tokens=cfg.max_seq_tokens,
                               reward_errors=cfg.reward_errors)
    if cfg.task == "redteam":
        from asyncrl.tasks.redteam import RedteamTask

        return RedteamTask(cfg.prompts, cfg.victim_model, cfg.toxicity_classifier, prompt_field=cfg.prompt_field,
                           eval_prompts=cfg.eval_prompts, template=cfg.prompt_template,
                           victim_max_new_tokens=cfg.victim_max_new_tokens,
                           toxicity_threshold=cfg.toxicity_threshold, embedding_model=cfg.embedding_model,
                           device=cfg.reward_device, batch_size=cfg.reward_batch_size,
                           chat_template=cfg.chat_template, max_seq_tokens=cfg.max_seq_tokens)
    raise ValueError(f"unknown task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
