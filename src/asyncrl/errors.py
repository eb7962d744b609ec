"""Errors a training run ends with (raised by the controller and :func:`asyncrl.train`)."""

from __future__ import annotations


class RunFailed(RuntimeError):
    """The run cannot go on; the message is one line meant for the user (or a worker traceback).
    ``summary``: what a run that had started training wrote (its final checkpoint is
    ``summary["checkpoint"]``), else None."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


class RunAborted(BaseException):
    """A second Ctrl-C / SIGTERM: stop now, without the final checkpoint. A ``BaseException`` so
    that no ``except Exception`` on the way turns the abort into something else."""

    def __init__(self, signame: str):
        super().__init__(f"aborted by a second {signame}")
        self.signame = signame
