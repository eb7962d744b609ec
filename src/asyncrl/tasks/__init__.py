"""Tasks, chosen at one dispatch point: :func:`make_task`.

A task is a prompt source, a reward and an evaluation metric (the :class:`Task` protocol in
``base.py``). Adding one is one small file under ``tasks/`` plus one branch here; see docs/tasks.md.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import cloudpickle

from asyncrl.config import Config
from asyncrl.policy import PromptTooLong, context_length, encode_prompts, load_tokenizer
from asyncrl.rewards import make_reward_funcs
from asyncrl.tasks.arithmetic import ArithmeticTask
from asyncrl.tasks.base import ListPrompts, RewardError, Task, checked_rewards
from asyncrl.tasks.custom import CustomTask
from asyncrl.tasks.gsm8k import GSM8KTask
from asyncrl.tasks.reasoning_gym import ReasoningGymTask
from asyncrl.tasks.redteam import RedteamTask
from asyncrl.tasks.rm_tuning import RewardModelTask

from asyncrl.config import TASKS  # the task kinds are the config's task union (config.TaskConfig)

__all__ = ["TASKS", "ListPrompts", "RewardError", "Task", "TaskInputs", "check_prompt_lengths", "checked_rewards", "make_task"]

# Chat-template tokens assumed at most when deciding, from byte lengths alone, that every prompt fits
# (no tokenizer is loaded then: loading a GGUF tokenizer takes seconds). A token covers at least one
# byte in byte-level BPE, SentencePiece with byte fallback and character vocabularies alike.
TEMPLATE_ALLOWANCE = 256


@dataclass
class TaskInputs:
    """Python objects given to :func:`asyncrl.train` instead of (or besides) config paths: reward
    functions (callables, ``module:function`` strings, model folders) and datasets (a
    ``datasets.Dataset`` or a list of dicts). Sent to generator processes and Ray actors with
    cloudpickle, so functions defined in a notebook or a script's ``__main__`` travel too."""

    reward_funcs: list | None = None
    train_dataset: Any = None
    eval_dataset: Any = None
    env: Any = None  # --task env: the environment object (asyncrl.envs.Environment)

    @property
    def empty(self) -> bool:
        return self.reward_funcs is None and self.train_dataset is None and self.eval_dataset is None and self.env is None

    def dumps(self) -> bytes:
        try:
            return cloudpickle.dumps(self)
        except Exception as e:  # noqa: BLE001 - a closure over a lock, a socket, an open file, ...
            raise ValueError(f"the reward functions or datasets given to train() cannot be sent to generator "
                             f"workers ({type(e).__name__}: {e}); use --workers inline/thread, or make them "
                             "picklable") from None

    @staticmethod
    def loads(blob: bytes | None) -> "TaskInputs | None":
        # Bytes made by dumps() in this run's own controller process, never read from a file.
        return pickle.loads(blob) if blob is not None else None


def make_task(cfg: Config, inputs: TaskInputs | None = None) -> Task:
    """The task ``cfg.task.name``, built from its typed section ``cfg.task`` (which holds exactly the
    fields that kind reads: config.TaskConfig) (and, for ``custom``, the
    Python objects of ``inputs``, which take the place of ``prompts`` / ``eval_prompts`` /
    ``reward_funcs``)."""
    if cfg.task.name == "env":
        raise ValueError("task 'env' is built by asyncrl.envs.make_task")
    if cfg.task.name == "arithmetic":
        return ArithmeticTask()
    if cfg.task.name == "gsm8k":
        return GSM8KTask(cfg.task.gsm8k_data, cfg.task.prompt_template)
    if cfg.task.name == "reasoning_gym":
        t = cfg.task
        return ReasoningGymTask(t.rg_dataset, t.rg_size, t.rg_eval_size, t.rg_seed, t.rg_config, t.prompt_template)
    if cfg.task.name == "custom":
        inputs = inputs or TaskInputs()
        prompts = inputs.train_dataset if inputs.train_dataset is not None else cfg.task.prompts
        funcs = inputs.reward_funcs if inputs.reward_funcs is not None else cfg.task.reward_funcs
        if prompts is None or not funcs:
            raise ValueError("task 'custom' needs prompts (--prompts PATH, or train_dataset=) and reward functions "
                             "(--reward-funcs package.module:function, or reward_funcs=)")
        rewards = make_reward_funcs(funcs, cfg.task.reward_weights, device=cfg.task.reward_device,
                                    batch_size=cfg.task.reward_batch_size, chat_template=cfg.chat_template,
                                    max_seq_tokens=cfg.task.max_seq_tokens)
        return CustomTask(prompts, rewards, prompt_field=cfg.task.prompt_field or "prompt",
                          eval_prompts=inputs.eval_dataset if inputs.eval_dataset is not None else cfg.task.eval_prompts,
                          template=cfg.task.prompt_template, reward_errors=cfg.rewards.reward_errors, column_map=cfg.task.column_map,
                          prompts_split=cfg.task.prompts_split, eval_prompts_split=cfg.task.eval_prompts_split,
                          # Optimizer steps, as the policy versions the rewards' global_step counts
                          # (asyncrl eval: no steps).
                          max_steps=getattr(cfg, "steps", 0) * getattr(cfg, "updates_per_step", 1))
    if cfg.task.name == "reward_model":
        return RewardModelTask(cfg.task.prompts, cfg.task.reward_model, prompt_field=cfg.task.prompt_field,
                               eval_prompts=cfg.task.eval_prompts, template=cfg.task.prompt_template,
                               gold_reward_model=cfg.task.gold_reward_model, reference_field=cfg.task.reference_field,
                               device=cfg.task.reward_device, batch_size=cfg.task.reward_batch_size,
                               chat_template=cfg.chat_template, max_seq_tokens=cfg.task.max_seq_tokens,
                               reward_errors=cfg.rewards.reward_errors)
    if cfg.task.name == "redteam":
        return RedteamTask(cfg.task.prompts, cfg.task.victim_model, cfg.task.toxicity_classifier, prompt_field=cfg.task.prompt_field,
                           eval_prompts=cfg.task.eval_prompts, template=cfg.task.prompt_template,
                           victim_max_new_tokens=cfg.task.victim_max_new_tokens,
                           toxicity_threshold=cfg.task.toxicity_threshold, embedding_model=cfg.task.embedding_model,
                           device=cfg.task.reward_device, batch_size=cfg.task.reward_batch_size,
                           chat_template=cfg.chat_template, max_seq_tokens=cfg.task.max_seq_tokens)
    raise ValueError(f"unknown task {cfg.task.name!r}; known tasks: {', '.join(TASKS)}")


def check_prompt_lengths(task: Task, cfg: Config, model_path: str, train: bool = True) -> None:
    """Refuse, before anything runs, a prompt that does not fit the model's context with
    ``max_new_tokens`` to generate: the evaluation prompts (the first ``eval_limit``) and, with
    ``train``, every training prompt of a task that draws from a fixed list (``train_pool``).

    Past ``max_position_embeddings`` a RoPE model generates without an error but without meaning
    (and vLLM refuses the request), so a too-long prompt is a one-line ValueError naming it, its
    length and the context. Models that do not state a context are not checked."""
    pool = getattr(task, "train_pool", None)
    chat = next((p for p in (pool() if pool is not None else []) + list(task.eval_prompts()) if p.messages), None)
    if chat is not None:  # conversational rows need a chat template: say so now, not at the first request
        try:
            encode_prompts(load_tokenizer(model_path), [chat.model_input], cfg.chat_template)
        except ValueError as e:
            raise ValueError(f"prompt {chat.prompt_id!r}: {e}") from None
    ctx = context_length(model_path)
    if ctx is None:
        return
    room = ctx - cfg.sampling.max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={cfg.sampling.max_new_tokens} leaves no room for a prompt in the context of "
                         f"{model_path} ({ctx} tokens, max_position_embeddings); lower --max-new-tokens")
    prompts = list(task.eval_prompts())
    if cfg.evaluation.eval_limit:
        prompts = prompts[: cfg.evaluation.eval_limit]
    if train and pool is not None:
        prompts += pool()
    # Chat messages: their rendering's bytes plus a per-message allowance for the template's markers.
    size = {p.prompt_id: len(p.text.encode("utf-8")) + 32 * len(p.messages or ()) for p in prompts}
    if not size or max(size.values()) + TEMPLATE_ALLOWANCE <= room:
        return
    tokenizer = load_tokenizer(model_path)
    overhead = len(encode_prompts(tokenizer, [""], cfg.chat_template)[0])
    seen, suspects = set(), []
    for p in prompts:  # only prompts the byte bound cannot clear are encoded
        if p.prompt_id not in seen and size[p.prompt_id] + overhead + 2 > room:
            seen.add(p.prompt_id)
            suspects.append(p)
    try:
        encode_prompts(tokenizer, [p.model_input for p in suspects], cfg.chat_template, max_tokens=room,
                       names=[repr(p.prompt_id) for p in suspects])
    except PromptTooLong as e:
        raise ValueError(f"{e} in the context of {model_path} ({ctx} tokens, max_position_embeddings) with "
                         f"max_new_tokens={cfg.sampling.max_new_tokens}; shorten the prompt (or prompt_template), lower "
                         "--max-new-tokens or use a model with a longer context") from None
