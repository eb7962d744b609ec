"""Command line: ``asyncrl train|sft|rm|config [CONFIG.yaml] [--field value ...]``, ``asyncrl eval CHECKPOINT``,
``asyncrl plot RUN_DIR...``.

Every config field is a flag of the same name with dashes (``max_lag`` -> ``--max-lag``). Values
are read as YAML scalars (``none``/``null`` for None, ``true``/``false``) and validated by the
config model, so a bad value gets the same one-line error from a flag as from a file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from asyncrl.config import Config, ConfigError, field_docs, load_config


def _parse_value(text: str):
    if text.lower() in ("none", "null"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # Flags carry scalars: "{question}" or "[x]" is text, not a YAML mapping or list.
    return text if isinstance(value, (dict, list)) else value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    docs = field_docs()
    group = parser.add_argument_group("config fields (override the YAML file)")
    for name, field in Config.model_fields.items():
        default = field.default
        group.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, metavar="VALUE",
            help=f"{docs.get(name, '')} [default: {default}]".replace("%", "%%"),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncrl", description="Asynchronous off-policy RL post-training of LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy (no arguments: the built-in arithmetic job)")
    train.add_argument("config", nargs="?", help="YAML config file")
    _add_config_flags(train)
    show = sub.add_parser("config", help="print the resolved config as YAML (same arguments as train)")
    show.add_argument("config", nargs="?", help="YAML config file")
    _add_config_flags(show)
    for name, text in (("sft", "supervised fine-tuning on prompt/completion rows (docs/sft_rm.md)"),
                       ("rm", "train a Bradley-Terry reward model on chosen/rejected pairs (docs/sft_rm.md)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", nargs="?", help="YAML config file")
        _add_config_flags(p)
    ev = sub.add_parser("eval", help="greedy evaluation of a checkpoint on a task; writes eval_report.json "
                                     "(docs/tasks.md)")
    ev.add_argument("checkpoint", help="model folder (save_pretrained), run folder, run checkpoint folder or .gguf")
    ev.add_argument("--limit", dest="eval_limit", default=argparse.SUPPRESS, metavar="N",
                    help="evaluate the first N eval prompts only (same as --eval-limit)")
    ev.set_defaults(config=None)
    _add_config_flags(ev)
    plot = sub.add_parser("plot", help="eval accuracy or train reward of runs vs wall-clock and samples, one PNG "
                                       "(docs/plot.md)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (metrics.jsonl and/or eval.jsonl)")
    plot.add_argument("--out", metavar="FILE.png",
                      help="where to write the PNG [default: plot-<metric>.png in the runs' common parent folder]")
    plot.add_argument("--metric", choices=("accuracy", "reward"),
                      help="eval accuracy, or train batch reward (moving average) from metrics.jsonl "
                           "[default: accuracy if every run has it, else reward]")
    plot.add_argument("--labels", metavar="A,B,...",
                      help="comma-separated legend labels, one per run [default: folder (loss, max_lag)]")
    plot.add_argument("--x", choices=("wall", "samples", "both"), default="both",
                      help="x axis: training wall-clock, samples seen, or both side by side [default: both]")
    return parser


def resolve(args: argparse.Namespace) -> Config:
    overrides = {k: _parse_value(v) for k, v in vars(args).items() if k in Config.model_fields}
    cfg = load_config(args.config, overrides)
    if cfg.output_dir is None:
        if cfg.resume:
            from asyncrl.checkpoint import find_checkpoint

            cfg.output_dir = str(find_checkpoint(cfg.resume).parent.parent)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            if getattr(args, "command", None) in ("sft", "rm"):
                cfg.output_dir = f"runs/{args.command}-{stamp}"
            else:
                cfg.output_dir = f"runs/{cfg.task}-{cfg.loss}-lag{cfg.max_lag}-{stamp}"
    return cfg


def cmd_train(cfg: Config) -> int:
    from asyncrl.runtime.controller import Controller, RunFailed

    run_dir = Path(cfg.output_dir)
    if not cfg.resume and (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume {run_dir} to continue it "
            "or choose another --output-dir"
        )
    print(f"asyncrl: run folder {run_dir}", flush=True)
    from asyncrl.tasks import RewardError

    try:
        if cfg.runtime == "ray" and cfg.ray_learner == "actor":
            from asyncrl.runtime.ray_host import run_in_learner_actor

            summary = run_in_learner_actor(cfg, run_dir)
        else:
            summary = Controller(cfg, run_dir).run()
    except (RunFailed, RewardError) as e:  # RewardError: raised in this process (evaluation)
        print(f"asyncrl: error: {e}", file=sys.stderr)
        return 1
    if summary.get("failed"):
        print(f"asyncrl: error: {summary['failed']} (final checkpoint {summary['checkpoint']})", file=sys.stderr)
        return 1
    acc = summary["final_accuracy"]
    return _report_done("train", summary, f", final accuracy {acc:.3f}" if acc is not None else "")


def cmd_eval(args: argparse.Namespace) -> int:
    """``asyncrl eval CHECKPOINT --task NAME [--limit N] [--output-dir DIR]``."""
    from asyncrl.evaluation import REPORT, eval_checkpoint, eval_config
    from asyncrl.tasks import RewardError

    overrides = {k: _parse_value(v) for k, v in vars(args).items() if k in Config.model_fields}
    cfg = eval_config(args.checkpoint, overrides)
    try:
        report = eval_checkpoint(cfg)
    except RewardError as e:
        print(f"asyncrl: error: {e}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{k} {report[k]:.4f}" for k in ("accuracy", "reward_mean", "gold_win_rate",
                                                        "kl_ref", "attack_success_rate", "diversity")
                      if isinstance(report.get(k), (int, float)))
    print(f"asyncrl: eval {cfg.task} on {cfg.model}: {shown + ', ' if shown else ''}n={report['n']}; "
          f"report {Path(cfg.output_dir) / REPORT}", flush=True)
    return 0


def cmd_supervised(command: str, cfg: Config) -> int:
    """``asyncrl sft`` / ``asyncrl rm``."""
    if command == "sft":
        from asyncrl.sft import run_sft as run
    else:
        from asyncrl.rm import run_rm as run
    print(f"asyncrl: run folder {cfg.output_dir}", flush=True)
    summary = run(cfg)
    ev = summary["final_eval"] or {}
    held = ev.get("eval_accuracy", ev.get("eval_loss"))
    detail = f", loss {summary['final_loss']}" + (
        f", held-out {'accuracy' if 'eval_accuracy' in ev else 'loss'} {held:.4f}" if held is not None else "")
    return _report_done(command, summary, detail)


def cmd_plot(args: argparse.Namespace) -> int:
    """``asyncrl plot RUN_DIR... [--out FILE.png] [--metric M] [--labels A,B] [--x wall|samples|both]``."""
    from asyncrl.plotting import plot_runs

    labels = [s.strip() for s in args.labels.split(",")] if args.labels is not None else None
    out = plot_runs(args.runs, args.out, metric=args.metric, labels=labels, x=args.x)
    print(f"asyncrl: plot of {len(args.runs)} run(s) written to {out}", flush=True)
    return 0


def _report_done(command: str, summary: dict, detail: str) -> int:
    """The closing line of a training command; exit code 130 when Ctrl-C stopped it."""
    state = "interrupted" if summary["interrupted"] else "done"
    print(f"asyncrl: {command} {state} at step {summary['steps']}, wall {summary['wall_time_s']:.1f}s{detail}; "
          f"checkpoint {summary['checkpoint']}", flush=True)
    return 130 if summary["interrupted"] else 0


def _quiet_libraries() -> None:
    # Per-file "Loading weights" bars from every role drown the run's own progress output.
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "plot":  # reads run files only: no need to import transformers first
        try:
            return cmd_plot(args)
        except (ValueError, OSError) as e:
            print(f"asyncrl: error: {e}", file=sys.stderr)
            return 2
    _quiet_libraries()
    try:
        if args.command == "eval":
            return cmd_eval(args)
        cfg = resolve(args)
        if args.command == "config":
            print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
            return 0
        if args.command in ("sft", "rm"):
            return cmd_supervised(args.command, cfg)
        return cmd_train(cfg)
    except (ConfigError, ValueError) as e:
        print(f"asyncrl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
