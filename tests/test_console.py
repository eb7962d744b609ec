"""The library reports through ``logging`` (``asyncrl.*`` loggers) and does not print; only the CLI
and the progress display print; a run leaves the caller's logging and transformers' settings as it
found them (docs/logging.md, issue 18 item 5)."""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
from pathlib import Path

import pytest

from asyncrl import Config, train
from asyncrl.api import clear_run_folder
from asyncrl.console import notes, quiet_libraries
from asyncrl.policy import BUILTIN_MODELS

SRC = Path(__file__).resolve().parent.parent / "src" / "asyncrl"
# The modules that print: the CLI and the progress display.
PRINTS = {"cli.py", "metrics.py"}


def _prints(path: Path) -> int:
    tree = ast.parse(path.read_text())
    return sum(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
               for n in ast.walk(tree))


def test_library_code_does_not_print():
    found = {str(p.relative_to(SRC)): _prints(p) for p in sorted(SRC.rglob("*.py"))}
    found = {k: n for k, n in found.items() if n and k not in PRINTS}
    assert found == {}, f"library modules that print (log through logging.getLogger(__name__) instead): {found}"


def test_a_library_note_is_logged_not_printed(tmp_path, capsys, caplog):
    (tmp_path / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.INFO, logger="asyncrl"):
        clear_run_folder(tmp_path, [tmp_path / "metrics.jsonl"])
    assert capsys.readouterr() == ("", "")
    assert [(r.name, r.levelno) for r in caplog.records] == [("asyncrl.api", logging.INFO)]
    assert "--overwrite: removed metrics.jsonl" in caplog.records[0].getMessage()


@contextlib.contextmanager
def bare_logging():
    """A process whose caller configured no logging: pytest's capture handlers, which it adds to the
    root logger for each test's call phase, set aside in the block."""
    saved = logging.root.handlers
    logging.root.handlers = []
    try:
        yield
    finally:
        logging.root.handlers = saved


def test_notes_show_when_nothing_is_configured_and_are_removed_afterwards(capsys):
    logger = logging.getLogger("asyncrl")
    with bare_logging(), notes():
        logging.getLogger("asyncrl.x").info("run folder %s", "r")
        logging.getLogger("asyncrl.x").warning("careful")
        logging.getLogger("asyncrl.x").debug("hidden")
    out, err = capsys.readouterr()
    assert out == "asyncrl: run folder r\n" and err == "asyncrl: warning: careful\n"
    assert logger.handlers == [] and logger.level == logging.NOTSET


def test_notes_leave_a_configured_caller_alone():
    with bare_logging():
        mine = logging.StreamHandler()
        logging.root.addHandler(mine)
        with notes():
            assert logging.getLogger("asyncrl").handlers == []
    with notes(force=True):  # the CLI: whatever is configured
        assert len(logging.getLogger("asyncrl").handlers) == 1
    assert logging.getLogger("asyncrl").handlers == []


def _transformers_state():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    return (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled(),
            os.environ.get("TRANSFORMERS_VERBOSITY"), os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"))


def test_quiet_libraries_is_scoped_to_the_block(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    before = _transformers_state()
    try:
        with quiet_libraries():
            assert _transformers_state() == (logging.ERROR, False, True, "error", "1")
        assert _transformers_state() == before
    finally:
        hf_logging.set_verbosity_warning()


@pytest.mark.e2e
def test_train_shows_its_notes_and_restores_the_callers_settings(tmp_path, capsys):
    """``asyncrl.train`` from a script that configured nothing: the run folder note shows; afterwards
    transformers' verbosity and progress bars and asyncrl's logger are as before the call."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_info()  # not the default, so that a reset to the default would show too
    try:
        before = _transformers_state()
        out = tmp_path / "run"
        with bare_logging():
            summary = train(Config(model=str(BUILTIN_MODELS["arithmetic"]), steps=1, prompts_per_step=2,
                                   samples_per_prompt=2, eval_every=0, eval_limit=2, max_new_tokens=4, max_lag=0,
                                   output_dir=str(out)))
        assert _transformers_state() == before
    finally:
        hf_logging.set_verbosity_warning()
    assert summary["steps"] == 1 and json.loads((out / "summary.json").read_text())["steps"] == 1
    assert f"asyncrl: run folder {out}\n" in capsys.readouterr().out
    assert logging.getLogger("asyncrl").handlers == [] and logging.getLogger("asyncrl").level == logging.NOTSET
