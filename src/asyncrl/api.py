"""The Python API: ``from asyncrl import Config, train``.

``train`` runs exactly what ``asyncrl train`` runs (the CLI is a thin layer over :func:`run_train`),
from a script or a notebook, and returns the run's summary (what ``summary.json`` holds)::

    from asyncrl import Config, train

    def accuracy(completions, solution, **kwargs):          # TRL's reward-function convention
        return [1.0 if c.strip() == s else 0.0 for c, s in zip(completions, solution)]

    summary = train(Config(loss="grpo", model="path/to/model", steps=200),
                    reward_funcs=accuracy, train_dataset=dataset)

``reward_funcs``, ``train_dataset`` and ``eval_dataset`` take the names and the kinds of object
TRL's ``GRPOTrainer`` takes: callables (or ``module:function`` strings, or reward-model folders),
and a ``datasets.Dataset`` (after your own ``map`` / ``filter``), a list of dicts or a path. Given
any of them, the task is ``custom``. Errors raise (a one-line ``ConfigError`` / ``ValueError`` for
bad input, :class:`RunFailed` when the run stopped on an error, with ``.summary`` when it had
started training; ``RewardError`` when a reward function fails in this process, in evaluation); Ctrl-C stops
after the current step with a final checkpoint and returns the summary (``interrupted``).
Messages go through ``logging`` (``asyncrl.*`` loggers): shown like the CLI's when the caller
configured no logging, otherwise left to the caller's handlers (docs/logging.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from asyncrl.config import Config, ConfigError, EnvTaskConfig, file_keys, place, read_config_file, validated
from asyncrl.console import notes, quiet_libraries
from asyncrl.errors import RunFailed, one_line
from asyncrl.io import RUN_DIRS, RUN_FILES, foreign_entry
from asyncrl.metrics import check_report_to

if TYPE_CHECKING:
    from asyncrl.tasks import TaskInputs

log = logging.getLogger(__name__)

__all__ = ["RunFailed", "as_config", "run_train", "train"]

# The CLI imports this module at start-up (`asyncrl --help`, `asyncrl config`, `asyncrl plot`), which must
# not pay for torch and transformers (2.3 s to import here): what a run needs below is imported in the
# functions that start one (run_train, precheck_train, train, config_from with --resume).


def as_config(config, objects: dict | None = None) -> Config:
    """A ``Config``, a dict of fields, a YAML path or None (the defaults) -> a validated Config
    (a copy: the caller's object is not changed); fields the run would not read are refused, as
    with flags. ``objects``: the names of the Python objects given to :func:`train`
    (``reward_funcs``, ...) mapped to whether they were given: any of them makes the task ``custom``."""
    from_file: set[str] = set()
    if config is None:
        data = {}
    elif isinstance(config, Config):
        data = config.model_dump(exclude_unset=True)  # nested: what the caller set, defaults left to apply
    elif isinstance(config, dict):
        data = dict(config)  # flat keys, nested keys or both
    elif isinstance(config, (str, Path)):
        data = read_config_file(config)
        from_file = file_keys(data)
    else:
        raise ConfigError(f"config must be a Config, a dict, a YAML path or None, not {type(config).__name__}")
    given = [k for k, v in (objects or {}).items() if v]
    if given:
        data = place(Config, data)
        task = data.get("task")
        task = task.model_dump() if hasattr(task, "model_dump") else dict(task or {})
        if task.get("name", "custom") != "custom":
            raise ConfigError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for task 'custom' (your "
                              f"prompts and reward functions), but the config sets task {task['name']!r}")
        task["name"] = "custom"
        clash = [f for f, obj in (("prompts", "train_dataset"), ("eval_prompts", "eval_dataset"),
                                  ("reward_funcs", "reward_funcs"), ("reward", "reward_funcs"))
                 if obj in given and task.get(f)]
        if clash:
            raise ConfigError(f"{', '.join(clash)} set in the config and given to train() as objects: pass each once")
        data["task"] = task
    return config_from(data, "train", from_file)


def config_from(data: dict, command: str = "train", from_file=()) -> Config:
    """Fields given (a YAML file's, flags, a dict) -> a validated Config, the fields a ``command``
    run would not read refused. With ``resume`` (train, config) the checkpoint's config is the base
    and the fields given are checked against the merged config (``--clip-eps`` resuming a grpo run is
    read, whatever the defaults). ``from_file``: the fields that came from a YAML file."""
    if data.get("resume") and command in ("train", "config"):
        from asyncrl.checkpoint import resume_config  # torch: see the note at the top

        return resume_config(data, from_file)
    return validated(data, command, from_file)


def default_output_dir(cfg: Config, command: str = "train") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if command in ("sft", "rm"):
        return f"runs/{command}-{stamp}"
    return f"runs/{cfg.task.name}-{cfg.loss.name}-lag{cfg.asynchrony.max_lag}-{stamp}"


def train(config=None, *, reward_funcs=None, train_dataset=None, eval_dataset=None, env=None) -> dict | None:
    """Train as ``asyncrl train`` does; returns the summary dict (also in ``summary.json``); under
    ``torchrun``, ranks other than 0 return None.

    ``config``: a :class:`Config`, a dict of its fields, a YAML path, or None for the defaults.
    ``reward_funcs``: one or a list of callables in TRL's convention (``async def`` too),
    ``module:function`` strings or sequence-classification model folders (docs/tasks.md);
    weights are ``config.reward_weights``. ``train_dataset`` / ``eval_dataset``: a
    ``datasets.Dataset``, a list of dicts, or a path / hub name (as ``--prompts``). Any of them
    selects the ``custom`` task (an explicit other ``task`` is an error). ``env``: an environment
    object (:class:`asyncrl.envs.Environment`) for multi-turn episodes; it selects the ``env`` task
    (sent to generator processes and Ray actors with cloudpickle)."""
    from asyncrl.tasks import TaskInputs  # torch: see the note at the top

    if callable(reward_funcs) or isinstance(reward_funcs, (str, Path)):
        reward_funcs = [reward_funcs]
    if env is not None:
        if reward_funcs is not None or train_dataset is not None or eval_dataset is not None:
            raise ConfigError("env= runs an environment, which brings its own prompts and rewards; reward_funcs, "
                              "train_dataset and eval_dataset are for task 'custom': pass one or the other")
        cfg = as_config(config)
        if "task" in cfg.model_fields_set and cfg.task.name != "env":
            raise ConfigError(f"env= is for task 'env', but the config sets task {cfg.task.name!r}")
        if cfg.task.name != "env":
            cfg.task = EnvTaskConfig(env=f"{type(env).__module__}:{type(env).__name__}")
    else:
        cfg = as_config(config, {"reward_funcs": reward_funcs is not None, "train_dataset": train_dataset is not None,
                                 "eval_dataset": eval_dataset is not None})
    inputs = TaskInputs(list(reward_funcs) if reward_funcs is not None else None, train_dataset, eval_dataset, env)
    # asyncrl's notes (run folder, warnings) on the console unless the caller configured logging
    # themselves; nothing of the caller's logging is left changed afterwards (docs/logging.md)
    with notes():
        return run_train(cfg, inputs)


def run_train(cfg: Config, inputs: TaskInputs | None = None) -> dict | None:
    """The one training entry point (``asyncrl train`` and :func:`train`): check the run folder
    and everything that needs no weights, then run the controller; returns the summary, raises
    :class:`RunFailed` when the run stopped on an error. Under ``torchrun`` every rank but 0 only
    serves the sharded learner and returns None."""
    with quiet_libraries():  # for the run only: the caller's transformers settings come back afterwards
        return _run_train(cfg, inputs)


def torchrun_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several that ``torchrun`` started, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def _torchrun_config(cfg: Config, world: int) -> Config:
    """Under torchrun the launcher's world size is the learner's rank count."""
    if cfg.learner.ranks not in (1, world):
        raise ConfigError(f"learner_ranks={cfg.learner.ranks} but torchrun started {world} processes: "
                          f"pass --learner-ranks {world} or leave it out")
    return type(cfg).model_validate({**cfg.model_dump(), "learner": {**cfg.learner.model_dump(), "ranks": world}})


def _run_train(cfg: Config, inputs: TaskInputs | None) -> dict | None:
    from asyncrl.runtime.controller import Controller  # torch: see the note at the top

    launched = torchrun_rank()
    if launched is not None:
        cfg = _torchrun_config(cfg, launched[1])
        if launched[0] > 0:  # a learner rank only: rank 0 runs the controller and the generators
            from asyncrl.runtime.learner_ranks import serve_torchrun_rank  # torch

            serve_torchrun_rank(cfg)
            return None
    if cfg.output_dir is None:
        cfg.output_dir = default_output_dir(cfg)
    inputs = inputs if inputs is not None and not inputs.empty else None
    run_dir = Path(cfg.output_dir)
    own = check_run_folder(cfg, "train")
    task = precheck_train(cfg, inputs)
    clear_run_folder(run_dir, own)  # only once every check passed
    log.info("run folder %s", run_dir)
    if cfg.runtime.name == "ray" and cfg.runtime.ray_learner == "actor":
        from asyncrl.runtime.ray_learner import run_in_learner_actor  # ray: optional (asyncrl[ray])

        summary = run_in_learner_actor(cfg, run_dir, inputs)  # the actor builds its own task
    else:
        summary = Controller(cfg, run_dir, task=task, inputs=inputs).run()
    if summary.get("failed"):
        raise RunFailed(f"{one_line(summary['failed'])} (final checkpoint {summary['checkpoint']})", summary)
    return summary


def check_run_folder(cfg: Config, command: str = "train") -> list[Path]:
    """Refuse an existing, non-empty ``output_dir`` unless ``--resume`` (train) or ``--overwrite``;
    returns asyncrl's own files in it, which ``--overwrite`` removes (:func:`clear_run_folder`)."""
    run_dir = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in its folder and --overwrite replaces it: pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file, not a folder")
    if cfg.resume or not run_dir.is_dir():
        return []
    entries = sorted(run_dir.iterdir())
    if not entries:
        return []
    if not cfg.overwrite:
        resume = f"--resume {run_dir} to continue it, " if command == "train" else ""
        if (run_dir / "checkpoints").exists():
            raise ConfigError(f"{run_dir} already holds a run with checkpoints; pass {resume}--overwrite to replace "
                              "it, or choose another --output-dir")
        shown = ", ".join(e.name for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(f"output_dir {run_dir} is not empty (it holds {shown}); pass --overwrite to replace "
                          "asyncrl's files in it (other files are kept), or choose another --output-dir")
    own = []
    for e in entries:
        tmp = e.name.startswith(".") and any(e.name.startswith(f".{n}.") for n in RUN_FILES)
        if (e.name in RUN_FILES or tmp) and e.is_file():
            own.append(e)
        elif e.name in RUN_DIRS and e.is_dir():
            bad = foreign_entry(e)  # `--overwrite` removes asyncrl's files (io.RUN_FILES, RUN_DIRS), nothing else
            if bad is not None:
                raise ConfigError(f"--overwrite: {e / bad} was not written by asyncrl, so {e} is not removed; "
                                  "move it away or choose another --output-dir")
            own.append(e)
    return own


def clear_run_folder(run_dir: Path, own: list[Path]) -> None:
    """``--overwrite``: remove an old run's files (found by :func:`check_run_folder`), nothing else."""
    for e in own:
        shutil.rmtree(e) if e.is_dir() else e.unlink()
    if own:
        log.info("--overwrite: removed %s from %s", ", ".join(e.name for e in own), run_dir)


def precheck_train(cfg: Config, inputs: TaskInputs | None = None):
    """Start-up checks that need no model weights, before the run folder exists: the report_to
    packages, the task (data, reward import), model paths, the device, and that every prompt fits
    the model's context. Returns the task, for the controller to use rather than build again."""
    # torch: see the note at the top
    from asyncrl.policy import resolve_device, resolve_model_path
    from asyncrl.envs import make_task
    from asyncrl.tasks import check_prompt_lengths

    check_report_to(cfg)
    task = make_task(cfg, inputs)
    model_path = resolve_model_path(cfg.model, cfg.task.name)
    reference_model = getattr(cfg.task, "reference_model", None)  # only the reward_model task has it
    if reference_model:
        resolve_model_path(reference_model, cfg.task.name)
    resolve_device(cfg.device)
    check_prompt_lengths(task, cfg, model_path, train=True)
    if cfg.asynchrony.prompt_sharding:
        from asyncrl.generator import in_shard  # torch

        in_shard(task, (0, cfg.asynchrony.num_generators))  # a prompt list too short for the shards: one line
    return task

