"""Task ``custom``: user prompts from a file and a user reward function, both named on the command line.

    asyncrl train --task custom --prompts data.jsonl --prompt-field question \\
        --reward mypkg.rewards:exact_match --model path/to/model

Prompts: a ``.jsonl`` / ``.json`` / ``.parquet`` file or a ``datasets`` ``save_to_disk`` folder (read by
:func:`asyncrl.data.load_rows`); ``prompt_field`` names the prompt text, ``prompt_template`` (with
``{question}`` standing for that text) may wrap it. Every row travels whole in ``Prompt.meta``.
Training draws rows in a fresh shuffled order every epoch; evaluation uses ``eval_prompts`` (a
second file) or, when that is unset, the prompts file itself, in file order.

Reward: ``module:function``, imported once (the current directory is importable, like ``python -m``)
and called as ``fn(prompts, completions, rows) -> list[float]`` with the prompt texts, the decoded
completions and the row dicts, all of the same length. Exceptions, NaNs and wrong-length results are
caught by :func:`asyncrl.tasks.base.checked_rewards` and handled per the ``reward_errors`` policy.
Evaluation reports the mean reward (``reward_mean``; no ``accuracy``, since a user reward need not
be right/wrong) and ``reward_errors``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from asyncrl.data import column, load_rows
from asyncrl.tasks.base import evaluate_by_reward, shuffled_forever
from asyncrl.types import Prompt


def import_reward(spec: str) -> Callable:
    """``package.module:function`` -> the function; one-line ValueError when it cannot be found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward {spec!r} must look like package.module:function")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # `asyncrl` is a console script, so the cwd is not on sys.path by itself
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or the module's own top-level error
        raise ValueError(f"cannot import reward module {module_name!r}: {type(e).__name__}: {e}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"reward module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return fn


def _prompts(path: str, field: str, template: str) -> list[Prompt]:
    rows = load_rows(path)
    texts = column(rows, field, path)
    name = Path(path).name
    return [Prompt(prompt_id=f"{name}:{i}", text=template.replace("{question}", t), meta=row)
            for i, (t, row) in enumerate(zip(texts, rows), 1)]


class CustomTask:
    name = "custom"

    def __init__(self, prompts: str, prompt_field: str, reward: str, eval_prompts: str | None = None,
                 template: str | None = None, reward_errors: str = "stop"):
        self.template = template or "{question}"
        if "{question}" not in self.template:
            raise ValueError("prompt_template must contain {question}")
        self.reward_name = reward
        self.reward_errors = reward_errors
        self._fn = import_reward(reward)
        # Read both files now so a bad file or field fails at start-up with its row named.
        self._train = _prompts(prompts, prompt_field, self.template)
        self._eval = _prompts(eval_prompts, prompt_field, self.template) if eval_prompts else self._train

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        return shuffled_forever(self._train, seed)

    def train_pool(self) -> list[Prompt]:
        """Every training prompt (the start-up length check reads them)."""
        return self._train

    def eval_prompts(self) -> list[Prompt]:
        return self._eval

    def reward(self, prompts: list[Prompt], completions: list[str]):
        # Raw user values; asyncrl.tasks.base.checked_rewards validates them and names bad rows.
        return self._fn([p.text for p in prompts], list(completions), [dict(p.meta) for p in prompts])

    def evaluate(self, prompts: list[Prompt], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
        return evaluate_by_reward(self, prompts, completions, self.reward_errors)
