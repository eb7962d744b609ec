"""What a run shows on the console, and what it leaves alone (docs/logging.md).

Library modules report through ``logging.getLogger(__name__)`` (all under the ``asyncrl``
logger) and never print; only the CLI and the progress display (``metrics.Progress``) print.
This module holds the two pieces of process state a run touches, each scoped to the run:

- :func:`notes`: the handler that shows asyncrl's notes (``asyncrl: run folder ...``,
  ``asyncrl: warning: ...``). The CLI installs it always (it owns its process); ``asyncrl.train``
  installs it only when the caller configured no logging at all, and removes it afterwards.
- :func:`quiet_libraries`: transformers' and huggingface_hub's progress bars and info messages
  switched off for the run, then restored as they were.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

LOGGER = "asyncrl"


class _NoteHandler(logging.Handler):
    """``asyncrl: <message>`` on stdout for INFO and below, ``asyncrl: warning: <message>`` (and
    ``error:``) on stderr above. The streams are looked up at each message, not kept, so a
    redirected ``sys.stdout`` (pytest's capsys, a notebook cell) gets the messages."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.ERROR:
                line, stream = f"asyncrl: error: {text}", sys.stderr
            elif record.levelno >= logging.WARNING:
                line, stream = f"asyncrl: warning: {text}", sys.stderr
            else:
                line, stream = f"asyncrl: {text}", sys.stdout
            if record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: a broken stream must not stop the run
            self.handleError(record)


@contextlib.contextmanager
def notes(level: int = logging.INFO, force: bool = False) -> Iterator[None]:
    """Show the ``asyncrl`` logger's messages at ``level`` and above while the block runs.

    ``force`` (the CLI): always, whatever handlers exist. Otherwise (``asyncrl.train``) only when
    no handler would receive them, i.e. the ``asyncrl`` logger, its ancestors and the root have
    none: a caller who configured logging (``logging.basicConfig``, their own handler) keeps full
    control. The logger's handlers and level are restored afterwards."""
    logger = logging.getLogger(LOGGER)
    if not force and logger.hasHandlers():
        yield
        return
    handler, old_level = _NoteHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# Read by processes started during the run (process workers, Ray actors get them forwarded), which
# import transformers afresh: the in-process settings below do not reach them.
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers at verbosity ``error`` with its (and huggingface_hub's) progress bars off for the
    block: per-file "Loading weights" bars from every role drown the run's own progress output.
    Environment variables the caller set win (as before); everything is restored on the way out,
    so the caller's process has transformers' verbosity and bars as it had them."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    added = [k for k in _QUIET_ENV if k not in os.environ]
    for k in added:
        os.environ[k] = _QUIET_ENV[k]
    verbosity, bars, hub_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), \
        not are_progress_bars_disabled()
    # the caller's TRANSFORMERS_VERBOSITY, if set, is the level they asked for
    hf_logging.set_verbosity(hf_logging.log_levels.get(os.environ["TRANSFORMERS_VERBOSITY"], logging.ERROR))
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)  # first: huggingface_hub refuses to enable bars while its variable is set
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()  # also enables huggingface_hub's
        if not hub_bars:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        elif not bars:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()
