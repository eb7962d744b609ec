"""Errors the library raises to its caller, and the one way an error becomes one line for the user."""

from __future__ import annotations

from typing import Literal

TRACEBACK = "Traceback (most recent call last)"


class RunFailed(RuntimeError):
    """The run cannot go on; the message is one line meant for the user (or a worker traceback).
    ``summary``: what a run that had started training wrote (its final checkpoint is
    ``summary["checkpoint"]``), else None."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


class LearnerFailed(RunFailed):
    """A rank of the sharded learner died, hung or failed: the run stops at once, without a final
    checkpoint (the sharded state cannot be gathered); the periodic checkpoints stay."""


class RunAborted(BaseException):
    """A second Ctrl-C / SIGTERM: stop now, without the final checkpoint. A ``BaseException`` so
    that no ``except Exception`` on the way turns the abort into something else."""

    def __init__(self, signame: str):
        super().__init__(f"aborted by a second {signame}")
        self.signame = signame


class RewardError(ValueError):
    """A reward function raised or returned a bad value; the message is one line naming the row."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(error: BaseException | str, keep: Literal["all", "first", "last"] = "all", *,
             limit: int | None = None, typed: bool = False) -> str:
    """An error message (an exception or its text) as one line for the user.

    ``keep``: ``all`` joins every line, whitespace collapsed, except that a Python traceback carried
    in the text (a worker's) shrinks to the line before it and its last line; ``first`` keeps the
    first line (transformers, peft, pydantic explain at length below it); ``last`` keeps the last
    line (a Ray error ends with why the actor or task died). ``limit`` cuts the message to that many
    characters; ``typed`` puts the exception's type first (``ValueError: ...``). An exception with
    an empty message is its type's name; empty text is ``""``."""
    lines = [" ".join(x.split()) for x in str(error).splitlines() if x.strip()]
    if not lines:
        text = ""
    elif keep == "first":
        text = lines[0]
    elif keep == "last":
        text = lines[-1]
    elif any(x.startswith(TRACEBACK) for x in lines):
        head = "" if lines[0].startswith(TRACEBACK) else lines[0]
        text = " ".join(x for x in (head, lines[-1]) if x) + " (rerun with --debug for the traceback)"
    else:
        text = " ".join(lines)
    if limit is not None:
        text = clip(text, limit)
    if isinstance(error, BaseException):
        name = type(error).__name__
        return (f"{name}: {text}" if typed else text) if text else name
    return text
