"""Run-folder logging: metrics.jsonl, eval.jsonl, generations.jsonl, the ``report_to``
destinations (TensorBoard, wandb) and console progress. See docs/logging.md."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Callable

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from asyncrl.config import Config, ConfigError, leaf_values
from asyncrl.errors import one_line
from asyncrl.io import atomic_write_text

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


WANDB_ID_FILE = "wandb_id"  # the run folder's wandb run id: a resumed run continues that wandb run


def check_report_to(cfg: Config) -> None:
    """Start-up check, before the run folder exists: every ``report_to`` destination can be used."""
    if "wandb" in cfg.logging.report_to:
        try:
            import wandb  # optional (asyncrl[wandb])
        except ImportError:
            raise ConfigError("report_to wandb needs the wandb package: pip install 'asyncrl[wandb]' "
                              "(or drop wandb from --report-to)") from None
        del wandb  # only whether it imports: the run imports it again where it logs


def _wandb_run_id(run_dir: Path, resume: bool) -> str:
    """The wandb id stored in the run folder when resuming, else a new one (written atomically)."""
    path = run_dir / WANDB_ID_FILE
    if resume and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)  # wandb ids: letters and digits, at most 64
    atomic_write_text(path, run_id + "\n")
    return run_id



def _flat_config(cfg) -> dict:
    """The config by flat name (``max_lag``, ``clip_eps``, ...), JSON-ready, for wandb."""
    return json.loads(json.dumps(leaf_values(cfg), default=str))

class Reporters:
    """The ``report_to`` destinations besides the jsonl files: TensorBoard (``tb/``) and wandb.

    Both get a row's numbers as ``<prefix>/<name>`` (``train/loss``, ``eval/accuracy``) at the
    row's ``step``. wandb: project ``$WANDB_PROJECT`` (default ``asyncrl``), name ``run_name`` or
    the run folder's name, config the resolved config, files under ``$WANDB_DIR`` or else the
    run folder; ``WANDB_MODE=offline`` works without a network."""

    def __init__(self, cfg: Config | None, run_dir: Path, start_step: int = 0, resume: bool = False):
        report_to = cfg.logging.report_to if cfg is not None else ["tensorboard"]
        self._tb = None
        self._wandb = None
        name = (cfg.logging.run_name if cfg is not None else None) or Path(run_dir).resolve().name
        if "tensorboard" in report_to:
            # torch + tensorboard (2.3 s to import): not at module level, which the CLI's start-up reads
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events a resumed run's checkpoint came before.
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resume else None)
            if cfg is not None and not resume:
                # TensorBoard names runs by their folder; the name and config are shown as text.
                self._tb.add_text("config", f"run_name: {name}\n\n```yaml\n"
                                  f"{yaml.safe_dump(cfg.model_dump(mode='json'), sort_keys=False)}```", 0)
        if "wandb" in report_to:
            import wandb  # optional (asyncrl[wandb]); checked by check_report_to

            try:
                self._wandb = wandb.init(
                    project=os.environ.get("WANDB_PROJECT") or "asyncrl", name=name,
                    id=_wandb_run_id(run_dir, resume), resume="allow",
                    # flat names (the flags): one column per field in wandb's run table
                    config=_flat_config(cfg), dir=os.environ.get("WANDB_DIR") or str(run_dir),
                    # several runs in one process (the Python API, tests): each is its own wandb run
                    reinit="create_new",
                )
            except Exception as e:  # no API key, no network, a bad WANDB_* setting
                self.close(failed=True)
                msg = one_line(e)
                raise ConfigError(f"report_to wandb: wandb.init failed: {msg} (or set WANDB_MODE=offline to log "
                                  "without an account)") from e

    def log(self, prefix: str, row: dict) -> None:
        scalars = {f"{prefix}/{k}": v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, row["step"])
        if self._wandb is not None:
            # A step below wandb's last one (a resumed run re-doing steps logged before a kill) is
            # dropped by wandb with a warning; the same step (eval after train) adds to its row.
            self._wandb.log(scalars, step=row["step"])

    def close(self, failed: bool = False) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)
            self._wandb = None


class RunLogger:
    """metrics.jsonl / eval.jsonl / generations.jsonl, the ``cfg.logging.report_to`` destinations
    (:class:`Reporters`; ``cfg=None``: TensorBoard only) and the console :class:`Progress`."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, resume: bool = False,
                 cfg: Config | None = None, console=None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            for name in ("metrics.jsonl", "eval.jsonl", "generations.jsonl"):
                truncate_log(self.run_dir / name, start_step)
        self.reporters = Reporters(cfg, self.run_dir, start_step, resume)  # first: wandb.init may fail
        # Appending keeps earlier lines when a run is resumed into the same folder.
        self._metrics = open(self.run_dir / "metrics.jsonl", "a")
        self._eval = open(self.run_dir / "eval.jsonl", "a")
        self._gens = open(self.run_dir / "generations.jsonl", "a")
        self.progress = Progress(total_steps, start_step, cfg.logging.logging_steps if cfg is not None else 10,
                                 console=console)
        self._closed = False

    def log_step(self, row: dict) -> None:
        missing = [k for k in REQUIRED_STEP_FIELDS if k not in row]
        assert not missing, f"metrics row lacks {missing}"
        self._write(self._metrics, row)
        self.reporters.log("train", row)
        self.progress.update(row)

    def log_eval(self, row: dict, generations: list[dict]) -> None:
        self._write(self._eval, row)
        for g in generations:
            self._write(self._gens, {"step": row["step"], **g})
        self.reporters.log("eval", row)
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("accuracy", "reward_mean") if isinstance(row.get(k), float))
        self.progress.note(f"eval step {row['step']}: {shown or 'done'}")

    def _write(self, f, row: dict) -> None:
        f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        f.flush()

    def close(self, failed: bool = False) -> None:
        """Idempotent; ``failed``: the run stopped on an error (wandb marks the run failed)."""
        if self._closed:
            return
        self._closed = True
        self.progress.close()
        for f in (self._metrics, self._eval, self._gens):
            f.close()
        self.reporters.close(failed)


def _fmt_eta(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def progress_line(text: str) -> None:
    """A plain progress line on stdout (the sft / rm loops' step and eval lines): progress display,
    like :class:`Progress`, so printed rather than logged."""
    print(text, flush=True)


class Progress:
    """A rich progress bar on a terminal; plain lines under CI (``$CI`` set) or when stdout is not
    a terminal, every ``logging_steps`` steps and at the last step. Both show the same figures:
    step/total, ETA, samples/s, reward (``reward_mean``), loss, kl and staleness (``staleness_mean``).

    samples/s = ``samples_seen / wall_time_s`` of the row: the run's training throughput
    (evaluation excluded; a resumed run counts its earlier part too). ETA = the real time per step
    since this process's first step (evaluations included) times the steps left; unknown
    (``-:--:--``) until two steps are done. ``console``: draw the bar on this rich Console
    whatever the terminal (tests); ``clock``: seconds, for the ETA and the bar's elapsed time."""

    def __init__(self, total: int, start: int = 0, logging_steps: int = 10, console=None,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.logging_steps = logging_steps
        self._clock = clock
        self._first: tuple[float, int] | None = None  # (time, step) of this process's first update
        self._bar = None
        in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
        if console is not None or (sys.stdout.isatty() and not in_ci):
            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"), console=console, get_time=clock,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def eta_s(self, step: int) -> float | None:
        """Seconds left at ``step``, or None before two steps were seen."""
        if self._first is None or step <= self._first[1]:
            return None
        t_first, step_first = self._first
        return (self._clock() - t_first) / (step - step_first) * max(0, self.total - step)

    def info(self, row: dict) -> str:
        """The figures after the step count, the same on the bar and on plain lines."""
        wall = row["wall_time_s"]
        samples_per_s = row["samples_seen"] / wall if wall > 0 else 0.0
        return (f"ETA {_fmt_eta(self.eta_s(row['step']))} {samples_per_s:.1f} samples/s "
                f"reward {row['reward_mean']:.3f} loss {row['loss']:.4f} kl {row['kl']:.3f} "
                f"stale {row['staleness_mean']:.2f}")

    def update(self, row: dict) -> None:
        if self._first is None:
            self._first = (self._clock(), row["step"])
        info = self.info(row)
        if self._bar is not None:
            self._bar.update(self._task, completed=row["step"], info=info, refresh=True)
        elif row["step"] % self.logging_steps == 0 or row["step"] == self.total:
            print(f"step {row['step']}/{self.total} t={row['wall_time_s']:.1f}s {info}", flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
