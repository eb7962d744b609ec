"""``asyncrl plot``: loader numbers on fake run folders, the PNG, one-line errors; one real tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.plotting import load_run, plot_runs, smooth, smooth_half_width

from conftest import write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics_row(step, wall, samples, reward):
    return {"step": step, "wall_time_s": wall, "samples_seen": samples, "reward_mean": reward,
            "fresh_reward_mean": reward, "loss": 0.0}


def fake_run(path: Path, loss="tb", max_lag=2, config=True, accuracy=True) -> Path:
    """Four learner steps of 8 samples, evaluations at steps 0, 2 and 4."""
    path.mkdir(parents=True)
    write_jsonl(path / "metrics.jsonl", [_metrics_row(s, 1.5 * s, 8 * s, 0.1 * s) for s in (1, 2, 3, 4)])
    key = "accuracy" if accuracy else "reward_mean"
    write_jsonl(path / "eval.jsonl", [
        {"step": 0, "wall_time_s": 0.2, key: 0.25, "n": 20, "eval_time_s": 0.2},
        # wall_time_s here includes the evaluation's own duration; the loader takes metrics.jsonl's clock
        {"step": 2, "wall_time_s": 3.4, key: 0.5, "n": 20, "eval_time_s": 0.4},
        {"step": 4, "wall_time_s": 6.0, key: 0.75, "n": 20, "eval_time_s": 0.3},
    ])
    if config:
        (path / "config.yaml").write_text(f"task: arithmetic\nloss: {loss}\nmax_lag: {max_lag}\n")
    return path


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("asyncrl: error: "), err
    return err


def test_loader_numbers_and_step_to_samples(tmp_path):
    run = load_run(fake_run(tmp_path / "sync-r0", loss="grpo", max_lag=0))
    assert run.label == "sync-r0 (grpo, max_lag=0)"
    assert [(p.step, p.wall, p.samples, p.reward) for p in run.train] == [
        (1, 1.5, 8, 0.1), (2, 3.0, 16, 0.2), (3, 4.5, 24, 0.30000000000000004), (4, 6.0, 32, 0.4)]
    assert [(p.step, p.wall, p.samples, p.values) for p in run.evals] == [
        (0, 0.0, 0, {"accuracy": 0.25}), (2, 3.0, 16, {"accuracy": 0.5}), (4, 6.0, 32, {"accuracy": 0.75})]


def test_eval_only_folder_uses_its_own_samples_and_wall(tmp_path):
    """A folder written by another tool (e.g. a TRL benchmark): eval.jsonl only, rows carry samples_seen."""
    run_dir = tmp_path / "trl"
    run_dir.mkdir()
    write_jsonl(run_dir / "eval.jsonl", [
        {"step": 0, "wall_time_s": 0.0, "accuracy": 0.1, "samples_seen": 0},
        {"step": 10, "wall_time_s": 12.5, "accuracy": 0.3, "samples_seen": 640},
    ])
    run = load_run(run_dir)
    assert run.label == "trl" and run.train == []
    assert [(p.step, p.wall, p.samples, p.values) for p in run.evals] == [
        (0, 0.0, 0, {"accuracy": 0.1}), (10, 12.5, 640, {"accuracy": 0.3})]
    out = plot_runs([run_dir], tmp_path / "trl.png")
    _assert_png(out)
    with pytest.raises(ValueError, match="no metrics.jsonl reward_mean"):
        plot_runs([run_dir], tmp_path / "r.png", metric="reward")


def test_resumed_run_clock_is_cumulative(tmp_path):
    """--resume appends from a new process whose clock restarts at 0; here from checkpoint step 2
    after step 3 was already logged: the repeated step 3 replaces the first one."""
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    write_jsonl(run_dir / "metrics.jsonl", [
        _metrics_row(1, 1.0, 8, 0.1), _metrics_row(2, 2.0, 16, 0.2), _metrics_row(3, 3.0, 24, 0.3),
        _metrics_row(3, 0.5, 24, 0.35), _metrics_row(4, 1.5, 32, 0.4)])
    write_jsonl(run_dir / "eval.jsonl", [{"step": 0, "wall_time_s": 0.1, "accuracy": 0.0},
                                         {"step": 2, "wall_time_s": 2.1, "accuracy": 0.5},
                                         {"step": 4, "wall_time_s": 1.6, "accuracy": 1.0}])
    run = load_run(run_dir)
    assert [(p.step, p.wall, p.reward) for p in run.train] == [(1, 1.0, 0.1), (2, 2.0, 0.2), (3, 2.5, 0.35),
                                                               (4, 3.5, 0.4)]
    assert [(p.step, p.wall, p.samples) for p in run.evals] == [(0, 0.0, 0), (2, 2.0, 16), (4, 3.5, 32)]


def test_smoothing_window():
    assert smooth_half_width(4) == 0 and smooth_half_width(900) == 22
    assert smooth([1.0, None, 3.0, 5.0], 1) == [1.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize("x", ["both", "wall", "samples"])
def test_cli_writes_png(tmp_path, capsys, x):
    a, b = fake_run(tmp_path / "a", max_lag=0), fake_run(tmp_path / "b")
    out = tmp_path / "figs" / "cmp.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--x", x, "--labels", "sync, async"]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    _assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temporary file left behind


def test_cli_reward_metric_and_default_out(tmp_path):
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "runs" / "b", accuracy=False)
    # b's evaluations have no accuracy: the default metric is the train reward
    assert main(["plot", str(a), str(b)]) == 0
    _assert_png(tmp_path / "runs" / "plot-reward.png")
    assert main(["plot", str(a)]) == 0
    _assert_png(tmp_path / "runs" / "plot-accuracy.png")


@pytest.mark.parametrize("case, expect", [
    ("missing", "is not a run folder (no such folder)"),
    ("empty", "is not a run folder (no metrics.jsonl or eval.jsonl)"),
    ("parent", "holds 2 run folders"),
    ("labels", "--labels has 3 labels for 1 run folders"),
    ("metric", "has no eval.jsonl rows with accuracy; try --metric reward"),
    ("badjson", "metrics.jsonl:2: not a JSON line"),
    ("suffix", "--out must name a .png file"),
])
def test_cli_errors_one_line_exit_2(tmp_path, capsys, case, expect):
    run = fake_run(tmp_path / "runs" / "r1")
    args = {
        "missing": [str(tmp_path / "nope")],
        "empty": [str(tmp_path / "e")],
        "parent": [str(tmp_path / "runs")],
        "labels": [str(run), "--labels", "a,b,c"],
        "metric": [str(fake_run(tmp_path / "r2", accuracy=False)), "--metric", "accuracy"],
        "badjson": [str(run)],
        "suffix": [str(run), "--out", str(tmp_path / "x.jpg")],
    }[case]
    if case == "empty":
        (tmp_path / "e").mkdir()
    if case == "parent":
        fake_run(tmp_path / "runs" / "r3")
    if case == "badjson":
        with open(run / "metrics.jsonl", "r+") as f:
            lines = f.readlines()
            lines[1] = "{oops\n"
            f.seek(0)
            f.writelines(lines)
    assert main(["plot", *args]) == 2
    assert expect in _err_line(capsys)


def test_live_run_partial_last_line_is_skipped(tmp_path):
    run_dir = fake_run(tmp_path / "live")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "wall_ti')  # the writer is mid-line
    assert [p.step for p in load_run(run_dir).train] == [1, 2, 3, 4]


@pytest.mark.e2e
def test_plot_a_real_tiny_run(tmp_path, capsys):
    from test_e2e import TINY

    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--output-dir", str(run_dir), "--workers", "inline", "--max-lag", "0"]) == 0
    run = load_run(run_dir)
    assert run.label == "run (tb, max_lag=0)"
    assert [p.step for p in run.evals] == [0, 2, 4] and [p.step for p in run.train] == [1, 2, 3, 4]
    # 4 prompts x 4 samples per step (TINY)
    assert [p.samples for p in run.evals] == [0, 32, 64]
    assert all(p.wall is not None for p in run.evals) and run.evals[0].wall == 0.0
    out = tmp_path / "p.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    _assert_png(out)
    assert main(["plot", str(run_dir), "--out", str(out), "--metric", "reward", "--x", "samples"]) == 0
    _assert_png(out)
