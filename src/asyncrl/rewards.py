"""Reward functions in TRL's convention, several at once, weighted.

A reward function is what TRL's ``GRPOTrainer`` calls (``reward_funcs``), so one written for TRL
works here unchanged::

    def score(prompts, completions, completion_ids, **kwargs) -> list[float | None]

called with keyword arguments only:

- ``prompts``: the prompt of each row (a string, or for conversational rows the list of chat
  messages);
- ``completions``: the decoded completion of each row (a string; for conversational rows
  ``[{"role": "assistant", "content": text}]``, as TRL passes them);
- ``completion_ids``: the generated token ids of each row (EOS included when one was produced);
- every other dataset column as a list (``solution``, ``answer``, ...: all but the prompt column);
- ``trainer_state``: a :class:`RewardState` (``global_step``: the learner step of the weights that
  sampled, ``max_steps``), where TRL passes its ``TrainerState``.

A function may accept only what it needs (``def f(completions, **kw)``); it must accept ``**kwargs``
or name every argument it gets. ``None`` for a row = "not scored by this function" (e.g. a
math checker on a code prompt). ``async def`` functions are awaited concurrently with each other
on one event loop that lives in a background thread (so a notebook's own running loop is not
touched). A sequence-classification model folder is a reward function too (:class:`ModelReward`).

The reward of a row is ``sum_f w_f * r_f`` over the functions that scored it (TRL's
``nansum``); a row that no function scored is a reward error (``reward_errors`` decides), where TRL
would silently give it 0. Each function's mean over the rows it scored is logged as
``rewards/<name>/mean``.

The form asyncrl used before, ``fn(prompts, completions, rows)`` with three positional lists, is
still called that way when a function's signature says so (three positional parameters, no
``**kwargs``, none named like a TRL argument), with a one-time warning naming the TRL form.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from asyncrl.errors import RewardError, one_line
from asyncrl.hf_models import RewardModelScorer

log = logging.getLogger(__name__)

# Keyword arguments TRL's GRPOTrainer passes besides the dataset columns.
TRL_ARGS = ("prompts", "completions", "completion_ids", "trainer_state")


def finite_float(v) -> float | None:
    """A finite float, or None for NaN, infinities and non-numbers."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def completion_tokens(ids: list[int], finished: bool) -> int:
    """Tokens of a completion that count for ``length_penalty``: EOS (the last id when finished) excluded."""
    return len(ids) - 1 if finished and ids else len(ids)


def shaped_reward(reward: float, num_tokens: int, finished: bool, length_penalty: float = 0.0,
                  missing_eos_penalty: float = 0.0) -> float:
    """``reward - length_penalty * num_tokens - (missing_eos_penalty if no EOS)``: the shaping the
    generator applies to every task's reward, and evaluation reports as ``shaped_reward_mean``.

    The missing-EOS penalty is subtracted, as TRL's ``missing_eos_penalty`` does (Noukhovitch et al.
    2025 penalise TL;DR summaries that do not end); ``num_tokens`` excludes the EOS token.
    """
    return reward - length_penalty * num_tokens - (0.0 if finished else missing_eos_penalty)


@dataclass(frozen=True)
class RewardState:
    """What a reward function gets as ``trainer_state`` (TRL passes transformers' ``TrainerState``;
    these are the attributes of it that reward schedules use)."""

    global_step: int  # policy version (optimizer steps) of the weights that sampled these completions
    max_steps: int  # the run's optimizer steps: ``steps`` x mini_batches x batch_epochs


@dataclass
class RewardBatch:
    """One scoring call's rows, all lists of the same length N."""

    prompts: list  # [N] str, or list of chat messages (conversational rows)
    completions: list  # [N] str, or [{"role": "assistant", "content": str}] (conversational rows)
    completion_ids: list[list[int]]  # [N][C_i]
    columns: dict[str, list]  # dataset column -> [N] values (the prompt column excluded)
    rows: list[dict]  # [N] the whole rows (for the legacy (prompts, completions, rows) form)
    state: RewardState


class RewardFunc:
    """One reward function: a name (for metrics), a weight and a call on a :class:`RewardBatch`."""

    name: str  # for metrics: rewards/<name>/mean
    spec: str  # for messages: the ``module:function`` / folder it was given as, else the name
    weight: float
    is_async: bool = False

    def __call__(self, batch: RewardBatch) -> Any:  # raw values; checked by the caller
        raise NotImplementedError


def _name_of(fn: Callable) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def _is_legacy(fn: Callable) -> bool:
    """The pre-TRL form ``fn(prompts, completions, rows)``: 3+ positional parameters, no **kwargs,
    and not TRL-named beyond the first two."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables: assume TRL's form
        return False
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return len(positional) == 3 and positional[2].name not in TRL_ARGS


class PythonReward(RewardFunc):
    """A Python callable (sync or ``async def``) in TRL's convention, or the legacy form."""

    def __init__(self, fn: Callable, weight: float = 1.0, name: str | None = None, spec: str | None = None):
        if not callable(fn):
            raise ValueError(f"reward function {fn!r} is not callable")
        self.fn, self.weight, self.name = fn, float(weight), name or _name_of(fn)
        self.spec = spec or self.name
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
        self.legacy = _is_legacy(fn)
        self._accepts = None  # names it takes, or None = everything (**kwargs)
        try:
            params = inspect.signature(fn).parameters.values()
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                self._accepts = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        except (TypeError, ValueError):
            pass
        self._warned = False

    def kwargs(self, batch: RewardBatch) -> dict:
        kw = {"prompts": batch.prompts, "completions": batch.completions, "completion_ids": batch.completion_ids,
              **batch.columns, "trainer_state": batch.state}
        if self._accepts is not None:  # TRL always passes everything; a function without **kwargs gets what it names
            kw = {k: v for k, v in kw.items() if k in self._accepts}
        return kw

    def __call__(self, batch: RewardBatch):
        if self.legacy:
            if not self._warned:
                log.warning("reward function %s uses the old form fn(prompts, completions, rows); write it as "
                            "TRL does, fn(prompts, completions, **kwargs) with the dataset columns as keyword "
                            "arguments (docs/tasks.md)", self.name)
                self._warned = True
            texts = [p if isinstance(p, str) else _last_user(p) for p in batch.prompts]
            comps = [c if isinstance(c, str) else c[0]["content"] for c in batch.completions]
            return self.fn(texts, comps, [dict(r) for r in batch.rows])
        return self.fn(**self.kwargs(batch))


def _last_user(messages: list[dict]) -> str:
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else (messages[-1].get("content", "") if messages else "")


class ModelReward(RewardFunc):
    """A sequence-classification folder with one output (e.g. an ``asyncrl rm`` checkpoint), as a
    reward function: scores instruction + completion as the ``reward_model`` task does (for a
    conversational prompt the instruction is its last user message)."""

    def __init__(self, path: str, weight: float = 1.0, *, device: str = "auto", batch_size: int = 16,
                 chat_template: str = "auto", max_seq_tokens: int = 1024):
        self.scorer = RewardModelScorer(path, device=device, batch_size=batch_size, chat_template=chat_template,
                                        max_seq_tokens=max_seq_tokens, flag="--reward-funcs")
        self.weight = float(weight)
        self.spec = path
        self.name = "".join(c if c.isalnum() or c in "_-." else "_" for c in os.path.basename(os.path.normpath(path)))

    def __call__(self, batch: RewardBatch):
        texts = [p if isinstance(p, str) else _last_user(p) for p in batch.prompts]
        comps = [c if isinstance(c, str) else c[0]["content"] for c in batch.completions]
        return self.scorer.score(texts, comps)


def import_user_module(name: str):
    """Import a user's module (reward functions, ``--env module:factory``) as Python would from the
    current folder: ``asyncrl`` is a console script, so the cwd is not on sys.path by itself."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(name)


def import_function(spec: str) -> Callable:
    """``package.module:function`` -> the function; one-line ValueError when it cannot be found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function {spec!r} must look like package.module:function or be a model folder")
    try:
        module = import_user_module(module_name)
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


def make_reward_funcs(funcs: Sequence, weights: Sequence[float] | None = None, **model_kw) -> list[RewardFunc]:
    """Callables, ``module:function`` strings and model folders -> :class:`RewardFunc`s, names
    made unique (``score``, ``score_2``); ``model_kw`` configures model folders."""
    if callable(funcs) or isinstance(funcs, str):
        funcs = [funcs]
    funcs = list(funcs)
    if not funcs:
        raise ValueError("no reward function given (reward_funcs is empty)")
    if weights is not None and len(weights) != len(funcs):
        raise ValueError(f"reward_weights has {len(weights)} values for {len(funcs)} reward functions")
    out: list[RewardFunc] = []
    for i, f in enumerate(funcs):
        w = 1.0 if weights is None else float(weights[i])
        if isinstance(f, RewardFunc):
            f.weight = w
            out.append(f)
        elif isinstance(f, (str, os.PathLike)):
            spec = os.fspath(f)
            if os.path.isdir(spec):
                out.append(ModelReward(spec, w, **model_kw))
            else:
                out.append(PythonReward(import_function(spec), w, spec=spec))
        elif callable(f):
            out.append(PythonReward(f, w))
        else:
            raise ValueError(f"reward_funcs[{i}] is a {type(f).__name__}: give a function, 'module:function' or a "
                             "model folder")
    seen: dict[str, int] = {}
    for f in out:
        n = seen[f.name] = seen.get(f.name, 0) + 1
        if n > 1:
            f.name = f"{f.name}_{n}"
    return out


class _LoopThread:
    """One asyncio event loop in a daemon thread, shared by every async reward call of a process."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro):
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="asyncrl-rewards", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, cls._loop).result()


class Scored(list):
    """The combined rewards, one per row (a float; None where no function scored the row; the
    offending raw value where a function returned a non-number), and each function's values."""

    components: dict[str, list[float | None]]


def _call_all(funcs: list[RewardFunc], batch: RewardBatch) -> dict[str, Any]:
    """Each function's raw result: sync functions one after another, then the async ones together.
    With several functions an exception is re-raised naming the function that raised it."""
    def named(f, e):
        return RewardError(f"{f.spec} raised {one_line(e, limit=200, typed=True)}") if len(funcs) > 1 else e

    raw: dict[str, Any] = {}
    for f in funcs:
        if not f.is_async:
            try:
                raw[f.name] = f(batch)
            except Exception as e:  # noqa: BLE001 - user code
                raise named(f, e) from e
    pending = [f for f in funcs if f.is_async]
    if pending:
        async def gather():
            return await asyncio.gather(*(f(batch) for f in pending), return_exceptions=True)

        for f, out in zip(pending, _LoopThread.run(gather())):
            if isinstance(out, BaseException):
                raise named(f, out) from out
            raw[f.name] = out
    return raw


def score(funcs: list[RewardFunc], batch: RewardBatch):
    """Call every function on ``batch``; a :class:`Scored` list of weighted sums with
    ``.components`` = name -> that function's values. Problems are left for
    :func:`asyncrl.tasks.base.checked_rewards` to report with the row that caused them: a single
    function's malformed result is returned as it is; a non-number value stays in its row."""
    n = len(batch.prompts)
    raw = _call_all(funcs, batch)
    values: dict[str, list] = {}
    for f in funcs:
        out = raw[f.name]
        if isinstance(out, (str, bytes)) or not hasattr(out, "__len__") or len(out) != n:
            if len(funcs) == 1:
                return out
            got = f"{len(out)} values" if hasattr(out, "__len__") and not isinstance(out, (str, bytes)) else \
                type(out).__name__
            raise RewardError(f"{f.spec} returned {got}, expected a list of {n} values")
        values[f.name] = list(out.tolist() if hasattr(out, "tolist") else out)
    combined = Scored()
    for i in range(n):
        total, scored, bad = 0.0, False, None
        for f in funcs:
            v = values[f.name][i]
            if v is None:
                continue
            fv = finite_float(v)
            if fv is None:
                bad = v if bad is None else bad
                continue
            total += f.weight * fv
            scored = True
        combined.append(bad if bad is not None else (total if scored else None))
    combined.components = {k: [finite_float(v) for v in vals] for k, vals in values.items()}
    return combined


def component_sums(components: dict[str, list[float | None]]) -> dict[str, tuple[float, int]]:
    """name -> (sum, count) over the rows a function scored: what GenStats carries for the means."""
    out = {}
    for name, vals in components.items():
        got = [v for v in vals if v is not None]
        out[name] = (float(sum(got)), len(got))
    return out

