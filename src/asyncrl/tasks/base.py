"""The task interface: a prompt source, a reward, and an evaluation metric.

Also the one place reward results are checked (:func:`checked_rewards`): an exception, a NaN /
infinite / non-number value or a wrong-length list from a reward function is reported with the
offending row, and the ``reward_errors`` policy decides between stopping and skipping.
"""

from __future__ import annotations

import random
from typing import Iterator, Protocol, Sequence

from asyncrl.errors import RewardError, clip, one_line
from asyncrl.rewards import finite_float
from asyncrl.types import Prompt

__all__ = ["ListPrompts", "RewardError", "Task", "checked_rewards", "describe_row", "evaluate_by_reward",
           "shuffled_forever"]


class Task(Protocol):
    name: str

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        """An endless stream of training prompts; different seeds give different orders."""
        ...

    def eval_prompts(self) -> list[Prompt]:
        """A fixed evaluation set (same every call)."""
        ...

    def reward(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        """One float per (prompt, completion) pair; ``len(prompts) == len(completions)``."""
        ...

    def evaluate(self, prompts: list[Prompt], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
        """Score greedy completions of eval prompts: (metrics, one row per example).

        Metrics hold ``accuracy`` where the task has a notion of correct; rows are JSON-able dicts
        holding at least ``prompt_id``, ``prompt``, ``completion`` and ``reward``.
        """
        ...


def shuffled_forever(items: Sequence[Prompt], seed: int) -> Iterator[Prompt]:
    """An endless training stream over a fixed prompt list: a fresh seeded shuffle every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for i in order:
            yield items[i]


class ListPrompts:
    """The prompt side of a task that draws from two fixed lists: training prompts in a fresh seeded
    shuffle every epoch (:func:`shuffled_forever`), evaluation prompts in order. Tasks pass the
    lists to ``__init__`` (read at construction, so a bad file fails at start-up; no evaluation
    list = the training prompts), or override :meth:`train_pool` and :meth:`eval_prompts` to read
    them on first use (gsm8k)."""

    def __init__(self, train: list[Prompt], eval: list[Prompt] | None = None):
        self._train = train
        self._eval = train if eval is None else eval

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        return shuffled_forever(self.train_pool(), seed)

    def train_pool(self) -> list[Prompt]:
        """Every training prompt (the start-up length check reads them)."""
        return self._train

    def eval_prompts(self) -> list[Prompt]:
        return self._eval


def describe_row(prompt: Prompt, completion: str) -> str:
    return f"prompt id {prompt.prompt_id!r} (prompt {clip(prompt.text, 60)!r}, completion {clip(completion, 60)!r})"


def _call(task: Task, prompts: list[Prompt], completions: list[str], extra: dict) -> list:
    """The task's raw reward values as a list; raises RewardError when it is not a sequence."""
    out = task.reward(prompts, completions, **extra)
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence) and not hasattr(out, "__len__"):
        raise RewardError(f"returned {type(out).__name__}, expected a list of {len(prompts)} floats")
    return out


def _rows_extra(extra: dict, lo: int, hi: int) -> dict:
    return {k: (v[lo:hi] if isinstance(v, list) else v) for k, v in extra.items()}


def checked_rewards(task: Task, prompts: list[Prompt], completions: list[str],
                    policy: str = "stop", *, completion_ids: list[list[int]] | None = None, step: int = 0,
                    components: dict[str, list[float | None]] | None = None
                    ) -> tuple[list[float | None], dict[int, str]]:
    """Rewards for aligned (prompt, completion) rows, with bad rows reported.

    Returns (rewards, errors): under ``policy="skip"`` a failed row's reward is None and
    ``errors[row index]`` holds its one-line message; under ``"stop"`` the first failure raises
    RewardError. The batched call is tried first; when it raises or returns the wrong number of
    values the rows are scored one at a time, so the message can name the row that failed.

    Tasks whose ``reward`` takes them (``takes_reward_context``, the custom task) also get the
    ``completion_ids`` and the policy version ``step``; when their result carries per-function
    values (``.components``, :class:`asyncrl.rewards.Scored`) and ``components`` is a dict, it is
    filled with them (name -> [N] values, None where not scored or failed).
    """
    name = getattr(task, "reward_name", None) or f"task {task.name!r} reward"
    n = len(prompts)
    rewards: list[float | None] = [None] * n
    errors: dict[int, str] = {}
    extra = ({"completion_ids": completion_ids if completion_ids is not None else [[] for _ in range(n)],
              "step": step} if getattr(task, "takes_reward_context", False) else {})
    parts: list[dict | None] = [None] * n  # per row: function name -> value

    def keep_parts(out, lo: int) -> None:
        comps = getattr(out, "components", None)
        if comps:
            for name_, vals in comps.items():
                for j, v in enumerate(vals):
                    if parts[lo + j] is None:
                        parts[lo + j] = {}
                    parts[lo + j][name_] = v

    def fail(msg: str, rows) -> None:
        msg = f"reward error: {name} {msg}"
        if policy == "stop":
            raise RewardError(msg + "; pass --reward-errors skip to drop and count such groups instead")
        for i in rows:
            errors[i] = msg
            rewards[i] = None

    def row(i: int) -> str:
        return describe_row(prompts[i], completions[i])

    batch_problem = None
    try:
        out = _call(task, prompts, completions, extra)
        keep_parts(out, 0)
        values = list(out)
        if len(values) != n:
            batch_problem = f"returned {len(values)} values for {n} completions (first row: {row(0)})"
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        values, batch_error = None, e
        batch_problem = "raised"
    if batch_problem is None:
        for i, v in enumerate(values):
            f = finite_float(v)
            if f is None:
                fail(_bad_value(v, row(i)), [i])
            else:
                rewards[i] = f
        _fill(components, parts, errors)
        return rewards, errors
    # Localise the failure: score row by row.
    for i in range(n):
        try:
            out = _call(task, prompts[i : i + 1], completions[i : i + 1], _rows_extra(extra, i, i + 1))
            keep_parts(out, i)
            one = list(out)
        except RewardError as e:  # not a list
            fail(f"{e} for {row(i)}", [i])
            continue
        except Exception as e:  # noqa: BLE001
            fail(f"raised {one_line(e, limit=200, typed=True)} on {row(i)}", [i])
            continue
        if len(one) != 1:
            fail(f"returned {len(one)} values for 1 completion on {row(i)}", [i])
            continue
        f = finite_float(one[0])
        if f is None:
            fail(_bad_value(one[0], row(i)), [i])
            continue
        rewards[i] = f
    if not errors:
        # Every row scores alone, yet the batched call failed: a batch-level bug; no row is usable.
        if batch_problem == "raised":
            batch_problem = (f"raised {one_line(batch_error, limit=200, typed=True)} on a batch of {n} completions "
                             f"(each row alone scores fine; first row: {row(0)})")
        fail(batch_problem, range(n))
    _fill(components, parts, errors)
    return rewards, errors


def _bad_value(v, where: str) -> str:
    if v is None:  # asyncrl.rewards.score: every reward function returned None for the row
        return f"scored nothing (every reward function returned None) for {where}"
    return f"returned {v!r} (not a finite number) for {where}"


def _fill(components: dict | None, parts: list[dict | None], errors: dict[int, str]) -> None:
    if components is None or not any(p for p in parts):
        return
    names = list(dict.fromkeys(k for p in parts if p for k in p))
    for k in names:
        components[k] = [None if (i in errors or p is None) else p.get(k) for i, p in enumerate(parts)]


def _mean(values) -> float:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else float("nan")


def evaluate_by_reward(task: Task, prompts: list[Prompt], completions: list[str],
                       policy: str = "stop", *, completion_ids: list[list[int]] | None = None,
                       step: int = 0) -> tuple[dict[str, float], list[dict]]:
    """Default ``Task.evaluate``: the mean reward (no accuracy), skipped rows counted. Tasks with
    several reward functions (the custom task) also get ``rewards/<name>/mean`` per function, and
    with more than one function each row carries every function's value."""
    comps: dict[str, list] = {}
    rewards, errors = checked_rewards(task, prompts, completions, policy, completion_ids=completion_ids, step=step,
                                      components=comps)
    rows = []
    for i, (p, c, r) in enumerate(zip(prompts, completions, rewards)):
        rows.append({"prompt_id": p.prompt_id, "prompt": p.text, "completion": c, "reward": r,
                     **({f"rewards/{k}": v[i] for k, v in comps.items()} if len(comps) > 1 else {}),
                     **({"error": errors[i]} if i in errors else {})})
    metrics = {"reward_mean": _mean(rewards), "reward_errors": float(len(errors))}
    metrics.update({f"rewards/{k}/mean": _mean(vals) for k, vals in comps.items()})
    return metrics, rows
