"""Run-folder logging: metrics.jsonl, eval.jsonl, generations.jsonl, TensorBoard, console progress."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Fields every metrics.jsonl line carries (the issue's contract with users' plotting scripts).
REQUIRED_STEP_FIELDS = (
    "step", "wall_time_s", "samples_seen", "reward_mean", "loss", "kl", "staleness_mean",
    "staleness_max", "gen_tokens_per_s", "learner_tokens_per_s", "sync_time_s",
)


def _jsonable(v):
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


def truncate_log(path: Path, after_step: int) -> None:
    """Keep only the rows of ``path`` (a .jsonl log) with ``step <= after_step``, atomically.

    A run resumed from its step-k checkpoint may have logged steps past k before it was killed;
    they are replaced by the resumed run's own rows, so each step appears once. A torn last line
    (killed mid-write) is dropped too."""
    from asyncrl.io import atomic_write_text

    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= after_step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            for name in ("metrics.jsonl", "eval.jsonl", "generations.jsonl"):
                truncate_log(self.run_dir / name, start_step)
        # Appending keeps earlier lines when a run is resumed into the same folder.
        self._metrics = open(self.run_dir / "metrics.jsonl", "a")
        self._eval = open(self.run_dir / "eval.jsonl", "a")
        self._gens = open(self.run_dir / "generations.jsonl", "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events a resumed run's checkpoint came before.
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step + 1 if resume else None)
        self.progress = Progress(total_steps, start_step)

    def log_step(self, row: dict) -> None:
        missing = [k for k in REQUIRED_STEP_FIELDS if k not in row]
        assert not missing, f"metrics row lacks {missing}"
        self._write(self._metrics, row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])
        self.progress.update(row)

    def log_eval(self, row: dict, generations: list[dict]) -> None:
        self._write(self._eval, row)
        for g in generations:
            self._write(self._gens, {"step": row["step"], **g})
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"eval/{k}", v, row["step"])
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("accuracy", "reward_mean") if isinstance(row.get(k), float))
        self.progress.note(f"eval step {row['step']}: {shown or 'done'}")

    def _write(self, f, row: dict) -> None:
        f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        f.flush()

    def close(self) -> None:
        self.progress.close()
        for f in (self._metrics, self._eval, self._gens):
            f.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A rich progress bar on a terminal; plain periodic lines under CI or when piped."""

    def __init__(self, total: int, start: int = 0, plain_every: int = 10):
        self.total = total
        self.plain_every = plain_every
        self._bar = None
        self._t0 = time.time()
        if sys.stdout.isatty() and not os.environ.get("CI"):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def update(self, row: dict) -> None:
        info = (f"reward {row['reward_mean']:.3f} loss {row['loss']:.4f} kl {row['kl']:.3f} "
                f"stale {row['staleness_mean']:.2f}")
        if self._bar is not None:
            self._bar.update(self._task, completed=row["step"], info=info)
        elif row["step"] % self.plain_every == 0 or row["step"] == self.total:
            print(f"step {row['step']}/{self.total} t={row['wall_time_s']:.1f}s {info}", flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
