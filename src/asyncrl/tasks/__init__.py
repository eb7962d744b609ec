"""Tasks, chosen at one dispatch point: :func:`make_task`."""

from __future__ import annotations

from asyncrl.tasks.base import Task


def make_task(name: str) -> Task:
    if name == "arithmetic":
        from asyncrl.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask()
    raise ValueError(f"unknown task {name!r}; known tasks: arithmetic")
