"""``asyncrl plot``: eval accuracy or train reward of several run folders against training
wall-clock and samples seen, on one PNG (docs/plot.md).

Reads only ``metrics.jsonl``, ``eval.jsonl`` and ``config.yaml`` of each run folder, so it also
plots folders written by other tools that follow the same row format, and runs still in progress.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from asyncrl.io import atomic_write

METRICS = ("accuracy", "reward")
X_AXES = ("wall", "samples", "both")
# Centered moving average over 2*half+1 steps, half = 2.5% of the run's logged steps: about 5%.
SMOOTH_FRACTION = 0.05


class PlotError(ValueError):
    """A run folder or argument that cannot be plotted; the CLI prints it as one line, exit 2."""


@dataclass
class EvalPoint:
    step: int
    wall: float | None  # training wall-clock seconds at that step (evaluation excluded)
    samples: int | None
    values: dict[str, float]  # the row's numeric task metrics (accuracy, reward_mean, ...)


@dataclass
class TrainPoint:
    step: int
    wall: float | None
    samples: int | None
    reward: float | None  # batch mean reward; None where every group of the batch was dropped


@dataclass
class RunCurves:
    path: Path
    label: str
    config: dict | None = None
    evals: list[EvalPoint] = field(default_factory=list)
    train: list[TrainPoint] = field(default_factory=list)

    def has_metric(self, metric: str) -> bool:
        """Whether ``metric`` (``accuracy`` or ``reward``) has at least one value in this run."""
        if metric == "reward":
            return any(p.reward is not None for p in self.train)
        return any(metric in p.values for p in self.evals)


def _num(v) -> float | None:
    # NaN/inf are logged as null; bools are JSON true/false, not measurements.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _read_rows(path: Path) -> list[dict]:
    """The rows of a .jsonl file; an unterminated last line (a live run mid-write) is skipped."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or _num(row.get("step")) is None:
            raise PlotError(f"{path}:{i}: a row needs a numeric 'step'")
        rows.append(row)
    return rows


def _train_points(rows: list[dict]) -> list[TrainPoint]:
    """metrics.jsonl rows -> one point per step, with wall-clock made cumulative across resumes.

    ``asyncrl train --resume`` appends to the same file from a new process whose clock restarts at
    0, possibly from a checkpoint older than the last logged step. Rows from a restart replace the
    ones they repeat, and the restarted clock is offset by the wall-clock of the step it resumed at.
    """
    kept: dict[int, TrainPoint] = {}
    offset, prev_step, prev_raw = 0.0, None, None
    for row in rows:
        step, raw = int(row["step"]), _num(row.get("wall_time_s"))
        restarted = prev_step is not None and (
            step <= prev_step or (raw is not None and prev_raw is not None and raw < prev_raw))
        if restarted:
            for s in [s for s in kept if s >= step]:
                del kept[s]
            before = [p for s, p in kept.items() if p.wall is not None]
            offset = max(before, key=lambda p: p.step).wall if before else 0.0
        samples = _num(row.get("samples_seen"))
        kept[step] = TrainPoint(step, None if raw is None else raw + offset,
                                None if samples is None else int(samples), _num(row.get("reward_mean")))
        prev_step, prev_raw = step, raw if raw is not None else prev_raw
    return [kept[s] for s in sorted(kept)]


def _eval_points(rows: list[dict], train: list[TrainPoint]) -> list[EvalPoint]:
    """eval.jsonl rows -> one point per step (the last row wins), placed on the training clock."""
    by_step = {p.step: p for p in train}
    last: dict[int, dict] = {}
    for row in rows:
        last[int(row["step"])] = row
    points = []
    for step in sorted(last):
        row, tp = last[step], by_step.get(step)
        # The learner step's own clock and sample count, when metrics.jsonl has the step: it is
        # resume-corrected, and in runs written before 2026-11-21 an eval row's wall_time_s also
        # included that evaluation's own duration.
        if step == 0:
            wall, samples = 0.0, 0
        else:
            wall = tp.wall if tp is not None and tp.wall is not None else _num(row.get("wall_time_s"))
            samples = tp.samples if tp is not None else None
        own = _num(row.get("samples_seen"))  # other tools' eval rows may carry it: theirs wins
        if own is not None:
            samples = int(own)
        values = {k: v for k, v in ((k, _num(v)) for k, v in row.items())
                  if v is not None and k not in ("step", "wall_time_s", "samples_seen", "n", "eval_time_s")}
        points.append(EvalPoint(step, wall, samples, values))
    return points


def _read_config(run: Path) -> dict | None:
    from asyncrl.config import flat_view

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        return flat_view(cfg) if isinstance(cfg, dict) else None  # by flat name: loss, max_lag, ...
    except (OSError, ValueError, yaml.YAMLError):  # (ConfigError is a ValueError)
        return None  # the label then falls back to the folder name


def default_label(run: Path, config: dict | None) -> str:
    """``<folder name> (<loss>, max_lag=<N>)``, or the folder name without a config.yaml."""
    name = run.resolve().name
    if config and "loss" in config and "max_lag" in config:
        return f"{name} ({config['loss']}, max_lag={config['max_lag']})"
    return name


def load_run(path: str | Path, label: str | None = None) -> RunCurves:
    """Read a run folder into :class:`RunCurves`; :class:`PlotError` if it is not one."""
    run = Path(path)
    if not run.is_dir():
        raise PlotError(f"{run} is not a run folder (no such folder)")
    if not (run / "metrics.jsonl").is_file() and not (run / "eval.jsonl").is_file():
        inner = sorted(p.name for p in run.iterdir()
                       if (p / "metrics.jsonl").is_file() or (p / "eval.jsonl").is_file())
        hint = f"; it holds {len(inner)} run folders, pass them: {run}/*/" if inner else ""
        raise PlotError(f"{run} is not a run folder (no metrics.jsonl or eval.jsonl){hint}")
    config = _read_config(run)
    train = _train_points(_read_rows(run / "metrics.jsonl"))
    evals = _eval_points(_read_rows(run / "eval.jsonl"), train)
    return RunCurves(run, label if label is not None else default_label(run, config), config, evals, train)


def smooth(values: list[float | None], half: int) -> list[float | None]:
    """Centered moving average over ``2*half+1`` points, ignoring None; shrinks at the ends."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - half): i + half + 1] if v is not None]
        out.append(sum(window) / len(window) if window else None)
    return out


def smooth_half_width(n: int) -> int:
    """Half-width of the reward moving average for a run with ``n`` logged steps."""
    return max(0, round(n * SMOOTH_FRACTION / 2))


def default_metric(runs: list[RunCurves]) -> str:
    """``accuracy`` if every run has evaluations with it, else ``reward``."""
    return "accuracy" if all(r.has_metric("accuracy") for r in runs) else "reward"


def default_out(run_dirs: list[str | Path], metric: str) -> Path:
    """``plot-<metric>.png`` in the folder that holds the runs (their common parent)."""
    parents = [str(Path(d).resolve().parent) for d in run_dirs]
    common = Path(os.path.commonpath(parents))
    if common == Path(common.anchor):  # runs from unrelated places: not the filesystem root
        common = Path.cwd()
    return common / f"plot-{metric}.png"


def _xy(points, xattr: str, yattr) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for p in points:
        x, y = getattr(p, xattr), yattr(p)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_runs(run_dirs: list[str | Path], out: str | Path | None = None, metric: str | None = None,
              labels: list[str] | None = None, x: str = "both") -> Path:
    """Draw every run on one figure and write it as a PNG (atomically); returns the PNG's path."""
    if not run_dirs:
        raise PlotError("no run folders given")
    if x not in X_AXES:
        raise PlotError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    if metric is not None and metric not in METRICS:
        raise PlotError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if labels is not None and len(labels) != len(run_dirs):
        raise PlotError(f"--labels has {len(labels)} labels for {len(run_dirs)} run folders")
    runs = [load_run(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    metric = metric or default_metric(runs)
    for r in runs:
        if not r.has_metric(metric):
            where = "metrics.jsonl reward_mean" if metric == "reward" else "eval.jsonl rows with accuracy"
            other = "reward" if metric == "accuracy" else "accuracy"
            raise PlotError(f"{r.path} has no {where}; try --metric {other}")
    xattrs = ["wall", "samples"] if x == "both" else [x]
    for r in runs:
        points = r.train if metric == "reward" else r.evals
        for xa in xattrs:
            if not any(getattr(p, xa) is not None for p in points):
                what = "wall_time_s" if xa == "wall" else "samples_seen"
                raise PlotError(f"{r.path} has no {what} for its {metric} points; try --x "
                                f"{'samples' if xa == 'wall' else 'wall'}")
    out = Path(out) if out is not None else default_out(run_dirs, metric)
    if out.suffix.lower() != ".png":
        raise PlotError(f"--out must name a .png file, got {out}")
    fig = _figure(runs, metric, xattrs)
    _save_png(fig, out)
    return out


def _figure(runs: list[RunCurves], metric: str, xattrs: list[str]):
    # A bare Figure on an Agg canvas, not pyplot: no display needed, and no global backend switch or
    # figure registry left behind in the caller's process.
    # matplotlib (1.2 s to import) only when a figure is drawn: `asyncrl plot`, not every CLI start.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # as above

    fig = Figure(figsize=(6.2 * len(xattrs), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(xattrs), squeeze=False)[0]
    xlabels = {"wall": "training wall-clock (s, evaluation excluded)", "samples": "samples seen"}
    ylabel = "eval accuracy" if metric == "accuracy" else "train reward (batch mean)"
    for ax, xa in zip(axes, xattrs):
        for i, r in enumerate(runs):
            color = f"C{i % 10}"
            if metric == "accuracy":
                xs, ys = _xy(r.evals, xa, lambda p: p.values.get("accuracy"))
                ax.plot(xs, ys, "o-", color=color, markersize=3.5, linewidth=1.5, label=r.label)
            else:
                xs, ys = _xy(r.train, xa, lambda p: p.reward)
                ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.2)
                smoothed = smooth([p.reward for p in r.train], smooth_half_width(len(r.train)))
                sx, sy = _xy([TrainPoint(p.step, p.wall, p.samples, s) for p, s in zip(r.train, smoothed)],
                             xa, lambda p: p.reward)
                ax.plot(sx, sy, color=color, linewidth=1.6, label=r.label)
        ax.set_xlabel(xlabels[xa])
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs {'wall-clock' if xa == 'wall' else 'samples'}")
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
    if metric == "reward":
        axes[0].text(0.99, 0.01, f"lines: centered moving average over ~{SMOOTH_FRACTION:.0%} of steps; "
                     "faint: raw", transform=axes[0].transAxes, ha="right", va="bottom", fontsize=7, alpha=0.7)
    axes[0].legend(fontsize=8, loc="best")
    return fig


def _save_png(fig, out: Path) -> None:
    """Write through a temporary file in the same folder: a reader never sees half a PNG."""
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
