"""Task ``custom``: your prompts and your reward functions, in TRL's conventions.

    asyncrl train --task custom --prompts data.jsonl --reward-funcs mypkg.rewards:accuracy,mypkg.rewards:fmt \\
        --reward-weights 1.0,0.2 --model path/to/model

or from Python, with the objects themselves (:func:`asyncrl.train`)::

    train(cfg, reward_funcs=[accuracy, fmt], train_dataset=ds)

Prompts: rows from a ``.jsonl`` / ``.json`` / ``.parquet`` file, a ``datasets`` ``save_to_disk``
folder or a hub name (``prompts_split``), or a ``Dataset`` / list of dicts given to ``train``;
``column_map`` renames columns first. The prompt column (``prompt_field``, default ``prompt`` as
in TRL) holds either text (wrapped by ``prompt_template`` and then the chat template when the
tokenizer has one) or a list of chat messages (TRL's conversational format, rendered with the
chat template as given; reward functions then get completions as messages). Every other column
reaches the reward functions as a keyword argument. Training draws rows in a fresh shuffled
order every epoch; evaluation uses ``eval_prompts`` / ``eval_dataset`` or, when unset, the
training rows, in order.

Reward: :mod:`asyncrl.rewards` (the calling convention, weights, ``None``, async functions, model
folders). Exceptions, NaNs, wrong-length results and rows no function scored are caught by
:func:`asyncrl.tasks.base.checked_rewards` and handled per ``reward_errors``. Evaluation reports
the mean reward (``reward_mean``), each function's mean (``rewards/<name>/mean``) and
``reward_errors``; no ``accuracy``, since a user reward need not be right/wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from asyncrl.data import DataError, field_value, load_rows, rename_columns, rows_of
from asyncrl.policy import messages_text
from asyncrl.rewards import RewardBatch, RewardFunc, RewardState, score
from asyncrl.tasks.base import ListPrompts, evaluate_by_reward
from asyncrl.types import Prompt


def _is_messages(v) -> bool:
    return isinstance(v, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in v) and bool(v)


def make_prompts(rows: list[dict], field: str, template: str, source: str, column_map: str | None = None
                 ) -> list[Prompt]:
    """Rows -> prompts: text or chat messages from ``field``; the whole row in ``meta``."""
    rows = rename_columns(rows, column_map, source)
    out = []
    for i, row in enumerate(rows, 1):
        v = field_value(row, field, source, i)
        if isinstance(v, str):
            out.append(Prompt(f"{source}:{i}", template.replace("{question}", v), row))
        elif _is_messages(v):
            if template != "{question}":
                raise DataError(f"{source} row {i}: prompt_template applies to text prompts, and this row's "
                                f"{field!r} is a list of chat messages; drop --prompt-template")
            msgs = [{"role": str(m["role"]), "content": m["content"]} for m in v]
            if not all(isinstance(m["content"], str) for m in msgs):
                raise DataError(f"{source} row {i}: every chat message's content must be a string")
            out.append(Prompt(f"{source}:{i}", messages_text(msgs), row, messages=msgs))
        else:
            raise DataError(f"{source} row {i}: field {field!r} must be a string or a list of chat messages "
                            f"({{'role': ..., 'content': ...}}), got {type(v).__name__}")
    return out


def _rows(source, split: str, what: str) -> tuple[list[dict], str]:
    """(rows, the name prompt ids start with) from a path / hub name or a Python object."""
    if isinstance(source, str):
        return load_rows(source, split), Path(source).name or source
    return rows_of(source, what), what


class CustomTask(ListPrompts):
    name = "custom"
    takes_reward_context = True  # checked_rewards passes completion_ids and the policy version

    def __init__(self, prompts, reward_funcs: Sequence[RewardFunc], *, prompt_field: str = "prompt",
                 eval_prompts=None, template: str | None = None, reward_errors: str = "stop",
                 column_map: str | None = None, prompts_split: str = "train", eval_prompts_split: str = "test",
                 max_steps: int = 0):
        """``prompts`` / ``eval_prompts``: a path or hub name, or rows (a ``datasets.Dataset``, a list
        of dicts); ``reward_funcs``: from :func:`asyncrl.rewards.make_reward_funcs`."""
        self.template = template or "{question}"
        if "{question}" not in self.template:
            raise ValueError("prompt_template must contain {question}")
        self.funcs = list(reward_funcs)
        self.reward_name = ", ".join(f.spec for f in self.funcs)  # in reward-error messages
        self.reward_errors = reward_errors
        self.field = prompt_field
        self.max_steps = max_steps
        # Read every row now so a bad file or field fails at start-up with its row named.
        rows, name = _rows(prompts, prompts_split, "train_dataset")
        train = make_prompts(rows, prompt_field, self.template, name, column_map)
        held = None
        if eval_prompts is not None:
            rows, name = _rows(eval_prompts, eval_prompts_split, "eval_dataset")
            held = make_prompts(rows, prompt_field, self.template, name, column_map)
        super().__init__(train, held)

    def batch(self, prompts: list[Prompt], completions: list[str], completion_ids: list[list[int]],
              step: int) -> RewardBatch:
        """What reward functions are called with (TRL's keyword arguments)."""
        columns: dict[str, list] = {}
        for p in prompts:
            for k in p.meta:
                if k != self.field:
                    columns.setdefault(k, [])
        for k in columns:  # a column some rows lack is None there, as a datasets column would be
            columns[k] = [p.meta.get(k) for p in prompts]
        comps = [[{"role": "assistant", "content": c}] if p.messages is not None else c
                 for p, c in zip(prompts, completions)]
        return RewardBatch([p.model_input for p in prompts], comps, [list(c) for c in completion_ids], columns,
                           [p.meta for p in prompts], RewardState(global_step=step, max_steps=self.max_steps))

    def reward(self, prompts: list[Prompt], completions: list[str], completion_ids: list[list[int]] | None = None,
               step: int = 0):
        # Raw values with .components; asyncrl.tasks.base.checked_rewards validates them and names bad rows.
        ids = completion_ids if completion_ids is not None else [[] for _ in prompts]
        return score(self.funcs, self.batch(prompts, list(completions), ids, step))

    def evaluate(self, prompts: list[Prompt], completions: list[str], completion_ids: list[list[int]] | None = None,
                 step: int = 0) -> tuple[dict[str, float], list[dict]]:
        return evaluate_by_reward(self, prompts, completions, self.reward_errors, completion_ids=completion_ids,
                                  step=step)
