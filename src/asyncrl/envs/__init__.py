"""Multi-turn environments, and the one place a run's task or environment is built: :func:`make_task`.

``--task env --env ID`` runs a built-in environment (:data:`BUILTIN`; ``--env list`` prints the
ids), ``--env skyrl:ID`` a skyrl-gym one (:mod:`asyncrl.envs.skyrl`), ``--env module:factory`` a
user's own; the Python API takes an environment object (``asyncrl.train(env=...)``). Every other
task kind is built by :func:`asyncrl.tasks.make_task`.
"""

from __future__ import annotations

import importlib

from asyncrl.config import Config
from asyncrl.data import json_object_flag
from asyncrl.rewards import import_user_module
from asyncrl.envs.base import EnvError, Environment, Step, checked_step, is_environment
from asyncrl.tasks import TaskInputs
from asyncrl.tasks import make_task as make_single_turn_task

__all__ = ["BUILTIN", "EnvError", "Environment", "Step", "builtin_ids", "checked_step", "is_environment", "make_env",
           "make_task"]

# id -> (module, class); the modules are imported only for the environment a run uses
BUILTIN = {
    "arithmetic_retry": ("asyncrl.envs.retry", "ArithmeticRetryEnvironment"),
    "calculator": ("asyncrl.envs.calculator", "CalculatorEnvironment"),
}


def builtin_ids() -> list[str]:
    return sorted(BUILTIN)


def parse_env_args(text: str | None) -> dict:
    """``--env-args``: a JSON object of keyword arguments (None = none)."""
    return json_object_flag(text, "env_args", "keyword arguments")


def _construct(factory, args: dict, what: str):
    try:
        return factory(**args)
    except TypeError as e:  # wrong keyword arguments: say which environment and which arguments
        raise ValueError(f"{what} does not take env_args {sorted(args)}: {e}") from None


def make_env(cfg: Config):
    """The environment of ``cfg.task`` (an ``env`` task section)."""
    t = cfg.task
    args = parse_env_args(t.env_args)
    if t.env in BUILTIN:
        module, cls = BUILTIN[t.env]
        kind = getattr(importlib.import_module(module), cls)
        if t.env == "calculator":
            args = {"timeout_s": t.tool_timeout_s, **args}
        env = _construct(kind, args, f"environment {t.env!r}")
    elif t.env.startswith("skyrl:"):
        from asyncrl.envs.skyrl import SkyRLEnvironment  # the optional skyrl-gym package, only here

        if t.env_prompts is None:
            raise ValueError(f"--env {t.env} needs --env-prompts FILE (rows in SkyRL's dataset format)")
        env = SkyRLEnvironment(t.env.removeprefix("skyrl:"), t.env_prompts, eval_prompts=t.env_eval_prompts,
                               env_config=args, max_turns=t.max_turns)
    elif ":" in t.env:
        module, _, attr = t.env.partition(":")
        try:
            factory = getattr(import_user_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--env {t.env}: cannot load {attr!r} from module {module!r} ({e})") from None
        env = _construct(factory, args, f"--env {t.env}")
    else:
        raise ValueError(f"unknown environment {t.env!r}; built-in: {', '.join(builtin_ids())} (or skyrl:ID, or "
                         "package.module:factory)")
    return checked_environment(env, t.env)


def checked_environment(env, what: str):
    """``env`` when it has the methods an episode needs, else a one-line ValueError."""
    missing = [m for m in ("train_prompts", "eval_prompts", "reset", "step") if not callable(getattr(env, m, None))]
    if missing:
        raise ValueError(f"environment {what} ({type(env).__name__}) lacks {', '.join(missing)}: an environment "
                         "subclasses asyncrl.envs.Environment")
    return env


def make_task(cfg: Config, inputs: TaskInputs | None = None):
    """The run's task (:func:`asyncrl.tasks.make_task`) or, for ``--task env``, its environment
    (the Python API's ``env=`` object when given)."""
    if cfg.task.name != "env":
        return make_single_turn_task(cfg, inputs)
    if inputs is not None and inputs.env is not None:
        return checked_environment(inputs.env, "given to train()")
    return make_env(cfg)
