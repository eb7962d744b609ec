"""Command line: ``asyncrl train|sft|rm|config [CONFIG.yaml] [--field value ...]``, ``asyncrl eval CHECKPOINT``,
``asyncrl plot RUN_DIR...``.

Every config field is a flag of its flat name with dashes (``asynchrony.max_lag`` is ``max_lag``, so
``--max-lag``); each command has the flags of its own config (config.COMMANDS), grouped by section
in ``--help``. Values are read as YAML scalars (``none``/``null`` for None, ``true``/``false``) and validated by the
config model, so a bad value gets the same one-line error from a flag as from a file.

Bad input (docs/bad_input.md) ends in one line ``asyncrl: error: ...`` on stderr and exit code 2
(config and input errors) or 1 (the run failed, or an unexpected error); ``--debug`` prints the
traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from difflib import get_close_matches
from pathlib import Path

import yaml

from asyncrl.api import check_run_folder, clear_run_folder, config_from, default_output_dir, run_train
from asyncrl.config import COMMANDS, Config, did_you_mean, field_docs, flat_fields, literal_choices, read_config_file
from asyncrl.console import notes, quiet_libraries
from asyncrl.errors import RewardError, RunAborted, RunFailed, one_line
from asyncrl.metrics import check_report_to
from asyncrl.plotting import plot_runs

# `asyncrl --help`, `config` and `plot` start without torch and transformers (2.3 s to import): the
# commands that need them (eval, sft, rm; train through api.run_train) import them when they run.


class UsageError(Exception):
    """A command line argparse cannot parse; main() prints it as one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and closest-name suggestions."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = [c.strip().strip("'") for c in m.group(2).split(",")]
            message = message[: m.start()] + (f"invalid choice: {m.group(1)!r}{did_you_mean(m.group(1), choices)} "
                                              f"(choose from {', '.join(choices)})")
        raise UsageError(message)


def _parse_value(text: str, field: str | None = None, command: str = "train"):
    if text.lower() in ("none", "null"):
        # `--off-policy-correction none`, `--report-to none`: a choice named "none" is that choice
        if field is not None and "none" in literal_choices(field, COMMANDS[command]):
            return "none"
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # Flags carry scalars: "{question}" or "[x]" is text, not a YAML mapping or list.
    return text if isinstance(value, (dict, list)) else value


def _section_title(cls, name: str) -> str:
    """``loss (tb | online_dpo | rloo | grpo | ppo)``: an argument group's title."""
    from asyncrl.config import _section_classes

    f = cls.model_fields[name]
    kinds = [c.model_fields["name"].default for c in _section_classes(f.annotation)] if f.discriminator else []
    return f"{name} ({' | '.join(kinds)})" if kinds else name


def _add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command``'s config (config.COMMANDS), one argument group per section."""
    cls = COMMANDS[command]
    docs = field_docs(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flat, f in flat_fields(cls).items():
        section = f.path[0] if len(f.path) > 1 else ""
        if section not in groups:
            title = _section_title(cls, section) if section else "run"
            desc = (cls.model_fields[section].description or "") if section else "the run itself"
            groups[section] = parser.add_argument_group(title, desc)
        default = f.default if not f.info.is_required() else None
        only = f"({'/'.join(f.kinds)} only) " if f.union and f.path[-1] != "name" and len(f.kinds) < len(
            _kinds_of(cls, f.union)) else ""
        # A true/false field also works as a bare switch: `--overwrite` is `--overwrite true`.
        switch = {"nargs": "?", "const": "true"} if f.info.annotation in (bool, "bool") else {}
        groups[section].add_argument(
            "--" + flat.replace("_", "-"), dest=flat, default=argparse.SUPPRESS, metavar="VALUE", **switch,
            help=f"{only}{docs.get(flat, '')} [default: {default}]".replace("%", "%%"),
        )


def _kinds_of(cls, union: tuple[str, ...]) -> list:
    from asyncrl.config import _kind_classes

    return list(_kind_classes(cls, union))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="asyncrl", description="Asynchronous off-policy RL post-training of LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy (no arguments: the built-in arithmetic job)")
    train.add_argument("config", nargs="?", help="YAML config file")
    _add_config_flags(train, "train")
    show = sub.add_parser("config", help="print the resolved config as YAML (same arguments as train)")
    show.add_argument("config", nargs="?", help="YAML config file")
    _add_config_flags(show, "config")
    for name, text in (("sft", "supervised fine-tuning on prompt/completion rows (docs/sft_rm.md)"),
                       ("rm", "train a Bradley-Terry reward model on chosen/rejected pairs (docs/sft_rm.md)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", nargs="?", help="YAML config file")
        _add_config_flags(p, name)
    ev = sub.add_parser("eval", help="greedy evaluation of a checkpoint on a task; writes eval_report.json "
                                     "(docs/tasks.md)")
    ev.add_argument("checkpoint", help="model folder (save_pretrained), run folder, run checkpoint folder or .gguf")
    ev.add_argument("--limit", dest="eval_limit", default=argparse.SUPPRESS, metavar="N",
                    help="evaluate the first N eval prompts only (same as --eval-limit)")
    ev.set_defaults(config=None)
    _add_config_flags(ev, "eval")
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
    plot.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def _overrides(args: argparse.Namespace, command: str) -> dict:
    """The flags given, by flat name, their values parsed."""
    table = flat_fields(COMMANDS[command])
    return {k: _parse_value(v, k, command) for k, v in vars(args).items() if k in table}


def resolve(args: argparse.Namespace) -> Config:
    """The config of a train / config / sft / rm command line: its YAML file, the flags on top."""
    from asyncrl.config import file_keys, merged

    command = getattr(args, "command", None) or "train"
    overrides = _overrides(args, command)
    data = read_config_file(args.config) if args.config else {}
    from_file = file_keys(data) - set(overrides)
    cfg = config_from(merged(COMMANDS[command], data, overrides), command, from_file=from_file)
    if cfg.output_dir is None:  # a resumed run already has its checkpoint's run folder (resume_config)
        cfg.output_dir = default_output_dir(cfg, command)
    return cfg


def _print_lines(lines: list[str]) -> int:
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_train(cfg: Config) -> int:
    if cfg.task.name == "reasoning_gym" and cfg.task.rg_dataset == "list":
        from asyncrl.tasks.reasoning_gym import dataset_names  # the optional package, only here

        return _print_lines(dataset_names())
    if cfg.task.name == "env" and cfg.task.env == "list":
        from asyncrl.envs import builtin_ids  # torch (via asyncrl.tasks), only here

        return _print_lines(builtin_ids())
    try:
        summary = run_train(cfg)
    except (RunFailed, RewardError) as e:  # RewardError: raised in this process (evaluation)
        _print_error(e, cfg.debug)
        return 1
    except RunAborted as e:
        print(f"asyncrl: {e}: no final checkpoint written (the last periodic one is kept)", file=sys.stderr)
        return SIGNAL_EXIT.get(e.signame, 130)
    if summary is None:  # a torchrun rank other than 0: it served the learner; rank 0 reports
        return 0
    acc = summary["final_accuracy"]
    return _report_done("train", summary, f", final accuracy {acc:.3f}" if acc is not None else "")


def cmd_eval(args: argparse.Namespace) -> int:
    """``asyncrl eval CHECKPOINT --task NAME [--limit N] [--output-dir DIR]``."""
    from asyncrl.evaluation import REPORT, eval_checkpoint, eval_config  # torch: see the note at the top

    overrides = _overrides(args, "eval")
    cfg = eval_config(args.checkpoint, overrides)  # flags eval does not read are refused there
    try:
        report = eval_checkpoint(cfg)
    except RewardError as e:
        _print_error(e, cfg.debug)
        return 1
    shown = ", ".join(f"{k} {report[k]:.4f}" for k in ("accuracy", "reward_mean", "gold_win_rate",
                                                        "kl_ref", "attack_success_rate", "diversity")
                      if isinstance(report.get(k), (int, float)))
    print(f"asyncrl: eval {cfg.task.name} on {cfg.model}: {shown + ', ' if shown else ''}n={report['n']}; "
          f"report {Path(cfg.output_dir) / REPORT}", flush=True)
    return 0


def cmd_supervised(command: str, cfg: Config) -> int:
    """``asyncrl sft`` / ``asyncrl rm``."""
    # torch: see the note at the top
    if command == "sft":
        from asyncrl.sft import run_sft as run
    else:
        from asyncrl.rm import run_rm as run

    own = check_run_folder(cfg, command)
    check_report_to(cfg)  # before --overwrite removes anything
    clear_run_folder(Path(cfg.output_dir), own)
    print(f"asyncrl: run folder {cfg.output_dir}", flush=True)
    summary = run(cfg)
    ev = summary["final_eval"] or {}
    held = ev.get("eval_accuracy", ev.get("eval_loss"))
    detail = f", loss {summary['final_loss']}" + (
        f", held-out {'accuracy' if 'eval_accuracy' in ev else 'loss'} {held:.4f}" if held is not None else "")
    return _report_done(command, summary, detail)


def cmd_plot(args: argparse.Namespace) -> int:
    """``asyncrl plot RUN_DIR... [--out FILE.png] [--metric M] [--labels A,B] [--x wall|samples|both]``."""
    labels = [s.strip() for s in args.labels.split(",")] if args.labels is not None else None
    out = plot_runs(args.runs, args.out, metric=args.metric, labels=labels, x=args.x)
    print(f"asyncrl: plot of {len(args.runs)} run(s) written to {out}", flush=True)
    return 0


# Exit codes of a run stopped by a signal, as a shell reports a process killed by it (128 + number).
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def _report_done(command: str, summary: dict, detail: str) -> int:
    """The closing line of a training command; exit code 130 when Ctrl-C stopped it, 143 for SIGTERM."""
    state = "interrupted" if summary["interrupted"] else "done"
    by = f" ({summary['signal']})" if summary.get("signal") else ""
    print(f"asyncrl: {command} {state} at step {summary['steps']}{by}, wall {summary['wall_time_s']:.1f}s{detail}; "
          f"checkpoint {summary['checkpoint']}", flush=True)
    return SIGNAL_EXIT.get(summary.get("signal") or "SIGINT", 130) if summary["interrupted"] else 0


def _print_error(e: BaseException, debug: bool = False, unexpected: bool = False) -> None:
    """``asyncrl: error: <one line>`` on stderr; with ``debug`` the full traceback first."""
    if debug:
        traceback.print_exception(e, file=sys.stderr)
        if "Traceback (most recent call last)" in str(e):  # a worker's traceback, carried in the message
            print(str(e), file=sys.stderr)
    text = one_line(e)
    if unexpected:
        text = f"{type(e).__name__}: {text} (unexpected error" + ("" if debug else "; rerun with --debug for the "
                                                                  "traceback") + ")"
    print(f"asyncrl: error: {text}", file=sys.stderr, flush=True)


def _exit_code(e: BaseException) -> int:
    """2 for bad input (config, files, paths, missing packages), 1 for a run that failed or an
    unexpected error."""
    if isinstance(e, RewardError):  # a ValueError, but raised once the run is going
        return 1
    if isinstance(e, (RunFailed, RunAborted)):
        return 1
    if isinstance(e, (UsageError, ValueError, ImportError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                      PermissionError)):
        return 2
    return 1


def _unknown_arguments(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> str:
    """``unrecognized argument --max-lagg; did you mean --max-lag?`` for what argparse left over."""
    sub = parser._subparsers._group_actions[0].choices.get(command) if command else None  # type: ignore[union-attr]
    flags = [f for f in (sub or parser)._option_string_actions if f.startswith("--")]
    unknown = [a.split("=", 1)[0] for a in extra if a.startswith("-")]
    if not unknown:
        return f"unexpected argument{'s' if len(extra) > 1 else ''} {' '.join(extra)}"
    parts = []
    for a in unknown:
        flat = a.lstrip("-").replace("-", "_")
        owners = [c for c in ("train", "eval", "sft", "rm") if c != command and flat in flat_fields(COMMANDS[c])]
        if owners and command in COMMANDS:  # another command's field: say whose
            parts.append(f"{flat} is not used by asyncrl {command} (a flag of "
                         f"{', '.join('asyncrl ' + o for o in owners)})")
            continue
        close = get_close_matches(a, flags, n=1, cutoff=0.6)
        parts.append(f"unknown flag {a}" + (f"; did you mean {close[0]}?" if close else ""))
    return "; ".join(parts) + f" (asyncrl {command} --help lists the flags)"


def _debug_flag(args: argparse.Namespace) -> bool:
    value = getattr(args, "debug", False)
    return value is True or str(value).lower() in ("true", "yes", "on", "1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    debug = False
    try:
        args, extra = parser.parse_known_args(argv)
        debug = _debug_flag(args)
        if extra:
            raise UsageError(_unknown_arguments(parser, args.command, extra))
        # The CLI owns its process: it alone decides what asyncrl's notes show (--debug: debug messages too).
        with notes(logging.DEBUG if debug else logging.INFO, force=True):
            return _main(args)
    except KeyboardInterrupt as e:
        if debug:
            _print_error(e, True)
        print("asyncrl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error leaves main() as one line (the traceback with --debug)
        code = _exit_code(e)
        expected = code == 2 or type(e).__name__ in ("RunFailed", "RunAborted", "RewardError")
        _print_error(e, debug, unexpected=not expected)
        return code


def _main(args: argparse.Namespace) -> int:
    if args.command == "plot":  # reads run files only: no need to import transformers first
        return cmd_plot(args)
    with quiet_libraries():
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "eval":
        return cmd_eval(args)
    cfg = resolve(args)
    if args.command == "config":
        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
        return 0
    if args.command in ("sft", "rm"):
        return cmd_supervised(args.command, cfg)
    return cmd_train(cfg)


if __name__ == "__main__":
    sys.exit(main())
