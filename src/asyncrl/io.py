"""Atomic file writes (a crash mid-write never leaves a truncated config or checkpoint), and what
asyncrl writes into a run folder."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_dir(final: Path, fill) -> None:
    """Call ``fill(tmp_dir)`` then rename the finished folder to ``final`` (replacing it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- the run folder --------------------------------------------------------------------------------

# Files asyncrl writes at the top of a run folder (train, sft, rm, eval of a run checkpoint).
RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.jsonl", "generations.jsonl", "summary.json", "eval_report.json",
             "eval_examples.jsonl", "wandb_id")
_TMP = r"\..+\.(tmp|old)"  # atomic_write / atomic_dir leftovers: .NAME.xxxx.tmp, .NAME.old
# Folders asyncrl writes there, each with the pattern of every name asyncrl puts inside it.
RUN_DIRS = {
    "checkpoints": re.compile(rf"^(latest|step_\d+|{_TMP})$"),
    "tb": re.compile(r"^events\.out\.tfevents\..+$"),
    # wandb's files when WANDB_DIR is unset (metrics.Reporters): run folders and its logs
    "wandb": re.compile(r"^(latest-run|(offline-)?run-\d{8}_\d{6}-[\w-]+|debug(-internal|-cli\.[\w.-]+)?\.log)$"),
    "eval": re.compile(rf"^([\w.-]+-[\w]+|{_TMP})$"),  # <step_N>-<task>/ from asyncrl eval of a run checkpoint
}
EVAL_FILES = re.compile(rf"^(eval_report\.json|eval_examples\.jsonl|{_TMP})$")  # inside eval/<step_N>-<task>/
RUN_ENTRIES = RUN_FILES + tuple(RUN_DIRS)  # every name asyncrl writes at the top of a run folder


def foreign_entry(folder: Path) -> str | None:
    """The first entry of a run sub-folder (checkpoints/, tb/, wandb/, eval/) that asyncrl did not write."""
    pattern = RUN_DIRS[folder.name]
    for e in sorted(folder.iterdir()):
        if not pattern.match(e.name):
            return e.name
        if folder.name == "eval" and e.is_dir():
            bad = next((x.name for x in sorted(e.iterdir()) if not EVAL_FILES.match(x.name)), None)
            if bad is not None:
                return f"{e.name}/{bad}"
    return None
