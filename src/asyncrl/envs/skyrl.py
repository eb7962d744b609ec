"""A skyrl-gym environment, unchanged, as an asyncrl :class:`~asyncrl.envs.base.Environment`.

``--env skyrl:ID`` (an id registered in ``skyrl_gym``, e.g. the built-in ``gsm8k``) or
``--env skyrl:package.module:Class`` (a ``skyrl_gym.envs.base_text_env.BaseTextEnv`` subclass), with
``--env-prompts FILE``: rows in SkyRL's dataset format (``pip install 'asyncrl[envs]'``; tested
with skyrl-gym 0.4.0).

Rows (``.jsonl``, ``.json`` or ``.parquet``, read by :func:`asyncrl.data.load_rows`): ``prompt``, a
list of ``{"role", "content"}`` chat messages, is what the policy sees; every other field but
``env_class`` (``reward_spec``, ``extra_info``, ``data``, ...) is the episode's ``extras``, exactly
as SkyRL's ``PromptDataset`` passes them. The whole row is kept in ``Prompt.meta``. A row's
``env_class`` is not used to pick the environment (one adapter runs one environment); with a
registered id it must name that id (a dataset mixing environments is refused at start-up), with a
``module:Class`` it is ignored.

Episodes follow SkyRL's ``SkyRLGymGenerator.agent_loop``:

* reset: a fresh environment per episode, ``skyrl_gym.make(ID, env_config=..., extras=row extras)``
  (or ``Class(env_config=..., extras=...)``), then ``env.init(a copy of the row's messages)``. An
  ``init`` that returns a different prompt (skyrl-gym's ``rlm`` environment builds its own system
  prompt) is refused with an :class:`EnvError`: asyncrl has encoded the row's prompt before the
  episode starts, so the rewritten prompt would never reach the model; put it in the dataset.
* step: ``env.step(turn)``; its ``BaseTextEnvStepOutput`` becomes a :class:`Step`: the observation
  messages as they are (``[]`` when done becomes no observation), the reward, done.
  ``metadata`` is kept on the episode state (``state.metadata``), not used. A
  ``postprocessed_action`` (SkyRL rewrites the policy's turn with it, and calls it deprecated) is
  ignored: asyncrl trains on the tokens the policy sampled.
* the environment is closed when it ends the episode, when its step raises, or, for an episode the
  generator cut (``max_turns`` / ``max_episode_tokens``), when the generator drops the state.

Exceptions from the skyrl environment propagate (the generator turns them into one-line errors and
``--reward-errors`` decides). An episode's reward is the sum of its steps' (SkyRL puts each step's
reward on that turn's last token; for single-step environments such as ``gsm8k`` they agree).

``env_config`` (``--env-args``, a JSON object) is the environment's own section of SkyRL's
``environment.skyrl_gym`` config, e.g. ``{"db_path": ...}`` for ``text2sql``; it is passed as an
omegaconf ``DictConfig`` (the built-in environments read it by attribute), empty by default.

``max_turns``: an int is what SkyRL's ``generator.max_turns`` is: written into every episode's
``extras["max_turns"]`` (the built-in multi-turn environments end their episodes there) and the
generator's turn limit. None: nothing is written, and the limit is the environment's own
``max_turns`` attribute, read from one environment built (not ``init``-ed) from the first training
row at start-up (``BaseTextEnv`` sets 1, ``gsm8k_multi_turn`` 5, ``text2sql`` 5, ``search`` 2).
That build also checks ``env_config`` and the first row's extras before the run starts.
"""

from __future__ import annotations

import copy
import difflib
import numbers
import weakref
from pathlib import Path
from typing import Any, Iterator

from asyncrl.data import DataError, field_value, load_rows, rows_of
from asyncrl.rewards import import_user_module
from asyncrl.envs.base import EnvError, Environment, Step
from asyncrl.errors import clip, one_line
from asyncrl.tasks.base import shuffled_forever
from asyncrl.types import Prompt

INSTALL = "pip install 'asyncrl[envs]' (skyrl-gym==0.4.0)"
NOT_EXTRAS = ("prompt", "env_class")  # a row's fields that are not the environment's extras (as in SkyRL)


def _skyrl_gym():
    try:
        import skyrl_gym  # optional (asyncrl[envs]); 0.3 s to import (pandas), only for this environment
    except ImportError:
        raise ValueError(f"skyrl-gym environments need the skyrl-gym package: {INSTALL}") from None
    return skyrl_gym


def messages_text(messages: list[dict]) -> str:
    """A readable ``role: content`` rendering of chat messages (``Prompt.text``)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _messages(value, where: str) -> list[dict]:
    """A row's ``prompt`` as a list of chat messages (plain dicts; keys a parquet file filled with
    None dropped), else a one-line ValueError naming ``where``."""
    if not isinstance(value, (list, tuple)) or not value:
        got = "an empty list" if isinstance(value, (list, tuple)) else type(value).__name__
        raise DataError(f"{where}: field 'prompt' must be a non-empty list of chat messages "
                        f"([{{'role': ..., 'content': ...}}, ...]), got {got}")
    out = []
    for j, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: prompt message {j} must be {{'role': str, 'content': str}}, "
                            f"got {clip(repr(m), 80)}")
        out.append({k: v for k, v in m.items() if v is not None or k in ("role", "content")})
    return out


def skyrl_prompts(source, env_id: str | None = None) -> list[Prompt]:
    """SkyRL dataset rows -> prompts (``prompt_id`` = ``<file name>:<row number>``, ``meta`` = the
    row). ``source``: a file (or anything :func:`asyncrl.data.load_rows` reads) or a list of row
    dicts. ``env_id``: the registered environment every row's ``env_class``, when present, must name.
    Problems are one-line ValueErrors naming the row."""
    if isinstance(source, (str, Path)):
        rows, name = load_rows(source), Path(source).name or str(source)
    else:
        rows, name = rows_of(source, "skyrl prompts"), "rows"
    out = []
    for i, row in enumerate(rows, 1):
        where = f"{name} row {i}"
        msgs = _messages(field_value(row, "prompt", name, i), where)
        cls = row.get("env_class")
        if env_id is not None and cls is not None and cls != env_id:
            raise DataError(f"{where}: env_class {cls!r}, but the environment is {env_id!r}; one adapter runs one "
                            "environment: split the dataset by env_class (or drop the column)")
        out.append(Prompt(f"{name}:{i}", messages_text(msgs), dict(row), messages=msgs))
    return out


def _env_class(env: str | type):
    """``module:Class`` (or the class itself) -> the class, a BaseTextEnv subclass; else a ValueError."""
    from skyrl_gym.envs.base_text_env import BaseTextEnv  # after _skyrl_gym() checked the install

    if isinstance(env, str):
        module, _, attr = env.partition(":")
        try:
            kind = getattr(import_user_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"skyrl environment {env!r}: cannot load {attr!r} from module {module!r} "
                             f"({one_line(e, limit=200)})") from None
    else:
        kind = env
    if not (isinstance(kind, type) and issubclass(kind, BaseTextEnv)):
        raise ValueError(f"skyrl environment {env!r} is {clip(repr(kind), 80)}, not a subclass of "
                         "skyrl_gym.envs.base_text_env.BaseTextEnv")
    return kind


class _Episode:
    """One episode's state: its skyrl environment, closed once (done, error, or dropped)."""

    def __init__(self, env):
        self.env = env
        self.close = weakref.finalize(self, env.close)  # calling it closes now; never twice
        self.done = False
        self.metadata: dict = {}


class SkyRLEnvironment(Environment):
    """A skyrl-gym environment over SkyRL dataset rows (see the module docstring)."""

    observation_role = "user"  # skyrl observations are messages with their own roles; unused

    def __init__(self, env: str | type, prompts, *, eval_prompts=None, env_config: Any = None,
                 max_turns: int | None = None):
        """``env``: a registered skyrl-gym id, ``package.module:Class`` or the class itself;
        ``prompts`` / ``eval_prompts``: SkyRL dataset rows (a file, or a list of row dicts;
        no ``eval_prompts`` = the training rows); ``env_config``: the environment's config (a dict,
        made a ``DictConfig``; None = empty); ``max_turns``: None = the environment's own."""
        skyrl_gym = _skyrl_gym()
        from omegaconf import DictConfig, OmegaConf  # a dependency of skyrl-gym

        if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
            raise ValueError(f"skyrl environment: max_turns must be a positive integer or None, got {max_turns!r}")
        if isinstance(env, str) and ":" not in env:
            if env not in skyrl_gym.registry:
                ids = sorted(skyrl_gym.registry)
                close = difflib.get_close_matches(env, ids, n=3)
                raise ValueError(f"unknown skyrl-gym environment {env!r}"
                                 + (f"; did you mean {', '.join(close)}?" if close else "")
                                 + f" (registered: {', '.join(ids)}; or package.module:Class, a BaseTextEnv subclass)")
            self._id, self._class = env, None
        else:
            self._class = _env_class(env)
            self._id = env if isinstance(env, str) else f"{self._class.__module__}:{self._class.__qualname__}"
        self.name = f"skyrl:{self._id}"
        if env_config is None:
            env_config = {}
        if isinstance(env_config, dict):
            env_config = OmegaConf.create(env_config)
        elif not isinstance(env_config, DictConfig):
            env_config = copy.deepcopy(env_config)  # e.g. a config dataclass of the user's: passed as is
        self.env_config = env_config
        self._set_turns = max_turns
        registered = self._id if self._class is None else None
        self._train = skyrl_prompts(prompts, registered)
        self._eval = self._train if eval_prompts is None else skyrl_prompts(eval_prompts, registered)
        # Build one environment now: a bad env_config or row fails at start-up, and None reads its max_turns.
        first = self._train[0]
        try:
            probe = self._make(first)
        except Exception as e:  # noqa: BLE001 - the user's environment may raise anything
            raise ValueError(f"skyrl environment {self._id!r} could not be built for prompt {first.prompt_id!r}: "
                             f"{one_line(e, limit=300, typed=True)}") from None
        try:
            turns = getattr(probe, "max_turns", 1) if max_turns is None else max_turns
        finally:
            probe.close()
        if isinstance(turns, bool) or not isinstance(turns, numbers.Integral) or turns < 1:
            raise ValueError(f"skyrl environment {self._id!r} sets max_turns={turns!r}; pass max_turns (a positive "
                             "integer)")
        self.max_turns = int(turns)

    # prompts ---------------------------------------------------------------------------------------
    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        return shuffled_forever(self._train, seed)

    def train_pool(self) -> list[Prompt]:
        """Every training prompt (prompt sharding and the start-up length check read them)."""
        return self._train

    def eval_prompts(self) -> list[Prompt]:
        return self._eval

    # episodes --------------------------------------------------------------------------------------
    def _make(self, prompt: Prompt):
        extras = {k: copy.deepcopy(v) for k, v in prompt.meta.items() if k not in NOT_EXTRAS}
        if self._set_turns is not None:
            extras["max_turns"] = self._set_turns  # what SkyRL's generator does with generator.max_turns
        if self._class is None:
            return _skyrl_gym().make(self._id, env_config=self.env_config, extras=extras)
        return self._class(env_config=self.env_config, extras=extras)

    def reset(self, prompt: Prompt) -> _Episode:
        state = _Episode(self._make(prompt))
        try:
            first, _ = state.env.init(copy.deepcopy(prompt.messages))
        except BaseException:
            state.close()
            raise
        if not isinstance(first, (list, tuple)) or list(first) != prompt.messages:
            state.close()
            raise EnvError(f"skyrl environment {self._id!r}: init() rewrote the prompt of {prompt.prompt_id!r} "
                           f"(to {clip(repr(first), 80)}); asyncrl encodes the row's prompt before the episode "
                           "starts, so an init() that changes it is not supported: put that prompt in the dataset")
        return state

    def step(self, state: _Episode, turn: str) -> Step:
        if state.done:
            raise EnvError(f"skyrl environment {self._id!r}: step after the episode ended")
        try:
            out = state.env.step(turn)
        except BaseException:
            state.done = True
            state.close()
            raise
        if not isinstance(out, dict) or any(k not in out for k in ("observations", "reward", "done")):
            state.done = True
            state.close()
            raise EnvError(f"skyrl environment {self._id!r}: step returned {clip(repr(out), 80)}, expected a "
                           "BaseTextEnvStepOutput(observations, reward, done, metadata)")
        obs, reward, done = out["observations"], out["reward"], bool(out["done"])
        state.metadata = out.get("metadata") or {}
        if isinstance(reward, numbers.Real) and not isinstance(reward, bool):
            reward = float(reward)  # gsm8k returns int 0 for a turn without an answer; numpy numbers too
        if isinstance(obs, (list, tuple)):
            obs = [dict(m) if isinstance(m, dict) else m for m in obs]
        if done:
            state.done = True
            state.close()
            if isinstance(obs, list) and not obs:
                obs = None
        return Step(obs, reward, done)  # checked by the generator (checked_step): malformed -> one line
