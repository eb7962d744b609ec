"""report_to (TensorBoard, wandb offline, none), the console progress bar and plain lines."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl.cli import check_run_folder, main
from asyncrl.config import Config, ConfigError
from asyncrl.metrics import WANDB_ID_FILE, Progress, RunLogger, check_report_to

from conftest import read_jsonl, write_jsonl


def _row(step: int, **over) -> dict:
    """A metrics row with every required field; the numbers differ per step so a read-back checks them."""
    row = {"step": step, "wall_time_s": 2.0 * step, "samples_seen": 16 * step, "reward_mean": 0.1 * step,
           "loss": 1.0 / step, "kl": 0.01 * step, "staleness_mean": 0.5 * step, "staleness_max": step,
           "gen_tokens_per_s": 100.0, "learner_tokens_per_s": 200.0, "sync_time_s": 0.0}
    row.update(over)
    return row


def _log_run(run_dir: Path, cfg: Config, steps: range, start: int = 0, resume: bool = False) -> None:
    logger = RunLogger(run_dir, cfg.steps, start, resume=resume, cfg=cfg)
    for s in steps:
        logger.log_step(_row(s))
    logger.log_eval({"step": steps[-1], "accuracy": 0.25}, [{"prompt": "1+1=", "completion": "2"}])
    logger.close()


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the run folder holds wandb's files
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "wb-config"), ("WANDB_CACHE_DIR", "wb-cache"),
                     ("WANDB_DATA_DIR", "wb-data")):
        monkeypatch.setenv(var, str(tmp_path / sub))


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def _inspect(offline_run: Path, *flags: str) -> str:
    """wandb's own reader of a run's .wandb transaction log (``wandb leet inspect``)."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(offline_run)],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _wandb_history(offline_run: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in _inspect(offline_run).splitlines():
        rec = json.loads(line)
        if rec.get("type") == "history":
            item = rec["history"]["item"]
            rows.setdefault(item["_step"], {}).update(item)
    return rows


# --- destinations ---------------------------------------------------------------------------------

def test_report_to_none_writes_only_the_jsonl_files(tmp_path):
    cfg = Config(report_to="none", steps=3)
    _log_run(tmp_path / "run", cfg, range(1, 4))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["eval.jsonl", "generations.jsonl", "metrics.jsonl"]
    assert [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1.0, 0.5, 1.0 / 3]


def test_tensorboard_events_hold_the_logged_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = Config(report_to="tensorboard", steps=3, run_name="my-run")
    _log_run(tmp_path / "run", cfg, range(1, 4))
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert loss == [(1, 1.0), (2, 0.5), (3, pytest.approx(1.0 / 3, rel=1e-6))]
    assert [(e.step, e.value) for e in acc.Scalars("train/staleness_mean")] == [(1, 0.5), (2, 1.0), (3, 1.5)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(3, 0.25)]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "run_name: my-run" in text and "logging:\n  report_to:\n  - tensorboard" in text
    assert not (tmp_path / "run" / "wandb").exists() and not (tmp_path / "run" / WANDB_ID_FILE).exists()


def test_wandb_offline_logs_metrics_and_a_resume_continues_the_same_run(tmp_path, wandb_offline):
    run = tmp_path / "run"
    cfg = Config(report_to="wandb", steps=3, loss="grpo")
    _log_run(run, cfg, range(1, 4))
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    assert not (run / "tb").exists()
    (first,) = _wandb_runs(run)
    summary = json.loads(_inspect(first, "--summary"))
    assert summary["run_id"] == run_id and summary["project"] == "asyncrl" and summary["name"] == "run"
    assert summary["config"]["loss"] == "grpo" and summary["state"] == "finished"
    hist = _wandb_history(first)
    assert [hist[s]["train/loss"] for s in (1, 2, 3)] == [1.0, 0.5, pytest.approx(1.0 / 3)]
    assert hist[3]["eval/accuracy"] == 0.25 and hist[2]["train/samples_seen"] == 32

    # resumed from step 3 for two more steps: the same wandb id, steps 4 and 5
    _log_run(run, cfg.model_copy(update={"steps": 5}), range(4, 6), start=3, resume=True)
    assert (run / WANDB_ID_FILE).read_text().strip() == run_id
    second = next(p for p in _wandb_runs(run) if p != first)
    assert json.loads(_inspect(second, "--summary"))["run_id"] == run_id
    hist = _wandb_history(second)
    assert hist[5]["train/reward_mean"] == pytest.approx(0.5) and 1 not in hist

    # --overwrite recognises wandb's files as asyncrl's and removes them
    own = {p.name for p in check_run_folder(Config(output_dir=str(run), overwrite=True))}
    assert {"wandb", WANDB_ID_FILE, "metrics.jsonl"} <= own


def test_wandb_run_name_project_and_dir_from_the_environment(tmp_path, wandb_offline, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "proj-x")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    _log_run(tmp_path / "run", Config(report_to="wandb", steps=1, run_name="named"), range(1, 2))
    assert not (tmp_path / "run" / "wandb").exists()
    (offline,) = sorted((tmp_path / "elsewhere" / "wandb").glob("offline-run-*"))
    summary = json.loads(_inspect(offline, "--summary"))
    assert (summary["project"], summary["name"]) == ("proj-x", "named")


def test_a_failing_wandb_init_is_one_line_config_error(tmp_path, wandb_offline, monkeypatch):
    import wandb

    def no_key(**kwargs):
        raise wandb.errors.UsageError("No API key configured.\nUse `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    with pytest.raises(ConfigError, match=r"^report_to wandb: wandb.init failed: No API key configured. Use .* "
                                          r"WANDB_MODE=offline"):
        RunLogger(tmp_path / "run", 1, cfg=Config(report_to="tensorboard,wandb"))


def test_missing_wandb_is_one_line_error_before_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'asyncrl\[wandb\]'"):
        check_report_to(Config(report_to="tensorboard,wandb"))
    check_report_to(Config(report_to="tensorboard"))  # no wandb needed
    out = tmp_path / "run"
    assert main(["train", "--report-to", "wandb", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report_to wandb needs the wandb package" in err[0]
    assert not out.exists()
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    assert main(["sft", "--data", str(data), "--report-to", "wandb", "--output-dir", str(out)]) == 2
    assert "needs the wandb package" in capsys.readouterr().err and not out.exists()


def test_report_to_flag_values():
    assert Config(report_to="tensorboard,wandb").logging.report_to == ["tensorboard", "wandb"]
    assert Config(report_to=None).logging.report_to == ["none"]  # `--report-to none` arrives as None
    with pytest.raises(ValueError, match="cannot be combined"):
        Config(report_to="none,wandb")
    with pytest.raises(ValueError, match="report_to"):
        Config(report_to="mlflow")


# --- console --------------------------------------------------------------------------------------

class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_bar_shows_step_eta_samples_per_s_reward_and_staleness():
    from rich.console import Console

    console = Console(record=True, force_terminal=True, width=220, file=io.StringIO())
    clock = _Clock()
    bar = Progress(total=10, console=console, clock=clock)
    for step in (1, 2, 3):
        clock.t += 2.0  # 2 s per step
        bar.update(_row(step, wall_time_s=1.5 * step, reward_mean=0.512, staleness_mean=1.25))
    bar.close()
    text = console.export_text()
    last = [line for line in text.splitlines() if "3/10" in line][-1]
    # ETA: 2 s/step since the first step x 7 steps left; samples/s: 48 samples / 4.5 s
    assert "ETA 0:00:14" in last and "10.7 samples/s" in last
    assert "reward 0.512" in last and "stale 1.25" in last and "loss 0.3333" in last
    assert "ETA -:--:--" in text  # the first step: no rate yet


def test_plain_lines_every_logging_steps_and_at_the_last(capsys, monkeypatch):
    monkeypatch.setenv("CI", "true")
    clock = _Clock()
    plain = Progress(total=7, logging_steps=3, clock=clock)
    for step in range(1, 8):
        clock.t += 1.0
        plain.update(_row(step))
    plain.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    # step 6: 1 s/step since step 1, one step left; 96 samples / 12 s
    assert lines[1] == ("step 6/7 t=12.0s ETA 0:00:01 8.0 samples/s reward 0.600 loss 0.1667 kl 0.060 "
                        "stale 3.00")
    assert "ETA 0:00:00" in lines[2]


# --- through the CLI ------------------------------------------------------------------------------

TINY = ["--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "0",
        "--eval-limit", "8", "--max-new-tokens", "6", "--workers", "inline", "--max-lag", "0"]


@pytest.mark.e2e
def test_train_report_to_none_and_logging_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--report-to", "none", "--logging-steps", "3", "--output-dir", str(out)]) == 0
    assert not (out / "tb").exists() and not (out / "wandb").exists()
    steps = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert steps == ["3/4", "4/4"]
    for r in read_jsonl(out / "metrics.jsonl"):
        assert all(r[k] is not None for k in ("samples_seen", "wall_time_s", "reward_mean", "staleness_mean"))


@pytest.mark.e2e
def test_train_with_wandb_offline_and_resume(tmp_path, wandb_offline):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--report-to", "wandb,tensorboard", "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    (first,) = _wandb_runs(out)
    hist = _wandb_history(first)
    assert hist[4]["train/loss"] == pytest.approx(rows[-1]["loss"], rel=1e-6)
    assert hist[4]["train/samples_seen"] == rows[-1]["samples_seen"] == 64
    assert "eval/accuracy" in hist[0] and "eval/accuracy" in hist[4]
    assert list((out / "tb").iterdir())
    assert main(["train", *TINY, "--steps", "6", "--resume", str(out)]) == 0
    second = next(p for p in _wandb_runs(out) if p != first)
    summary = json.loads(_inspect(second, "--summary"))
    assert summary["run_id"] == (out / WANDB_ID_FILE).read_text().strip() == json.loads(
        _inspect(first, "--summary"))["run_id"]
    assert summary["config"]["steps"] == 6 and sorted(_wandb_history(second))[-1] == 6


@pytest.mark.e2e
def test_sft_report_to_none_and_logging_steps(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"{a}+1=", "completion": str(a + 1)} for a in range(6)])
    out = tmp_path / "sft"
    assert main(["sft", "--model", tiny_model_dir, "--data", str(data), "--output-dir", str(out), "--steps", "3",
                 "--batch-size", "2", "--report-to", "none", "--logging-steps", "2"]) == 0
    assert not (out / "tb").exists() and (out / "metrics.jsonl").is_file()
    steps = [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.startswith("sft step ")]
    assert steps == ["2/3", "3/3"]
