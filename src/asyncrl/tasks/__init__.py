"""Tasks, chosen at one dispatch point: :func:`make_task`.

A task is a prompt source, a reward and an evaluation metric (the :class:`Task` protocol in
``base.py``). Adding one is one small file under ``tasks/`` plus one branch here; see docs/tasks.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncrl.tasks.base import RewardError, Task, checked_rewards

if TYPE_CHECKING:
    from asyncrl.config import Config

TASKS = ("arithmetic", "gsm8k", "custom")

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
    raise ValueError(f"unknown task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
