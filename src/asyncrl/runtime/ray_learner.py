"""``ray_learner: actor``: the whole controller (and so the learner) inside one Ray actor, the
driver only waiting. See docs/distributed.md. Ray is imported lazily (an optional package).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from asyncrl.config import Config
from asyncrl.errors import one_line
from asyncrl.runtime.controller import Controller
from asyncrl.runtime.ray_host import config_for_actors, ensure_ray
from asyncrl.runtime.object_store import ray_module as _ray
from asyncrl.signals import stop_on_signals
from asyncrl.tasks import TaskInputs


class _LearnerActor:
    """Runs the controller (and so the learner) in an actor; ``max_concurrency=2`` lets
    ``request_stop`` arrive while ``run`` is busy."""

    def __init__(self):
        self.controller = None
        self._stop: str | None = None  # the signal's name once the driver asked to stop

    def run(self, cfg_dict: dict, run_dir: str, inputs: bytes | None = None) -> dict:
        self.controller = Controller(Config(**cfg_dict), Path(run_dir), inputs=TaskInputs.loads(inputs))
        if self._stop:  # the signal arrived while the controller was being built
            self.controller.request_stop(self._stop)
        return self.controller.run()

    def request_stop(self, signame: str = "SIGINT") -> None:
        self._stop = signame
        if self.controller is not None:
            self.controller.request_stop(signame)


_LEARNER_CLASS: list[Any] = []


def _learner_class():
    """The ``ray.remote`` learner actor class, made on first use (importing needs no Ray)."""
    if not _LEARNER_CLASS:
        _LEARNER_CLASS.append(_ray().remote(_LearnerActor))
    return _LEARNER_CLASS[0]


def run_in_learner_actor(cfg: Config, run_dir, inputs=None) -> dict:
    """``ray_learner: actor``: run ``Controller(cfg, run_dir).run()`` inside one actor reserving
    ``learner_num_cpus`` / ``learner_num_gpus`` and return its summary. The driver only waits: a
    first Ctrl-C or SIGTERM asks the controller to stop after the current step (final checkpoint,
    summary with ``interrupted`` and ``signal``), a second one kills the actor (RunAborted). Exceptions the controller raises are
    re-raised here as themselves, so the CLI reports them exactly as in the driver mode."""
    owns = ensure_ray(cfg, learner_actor=True)
    ray = _ray()
    actor = None

    def forward_stop(name: str) -> None:  # the first Ctrl-C / SIGTERM: the actor's controller stops
        if actor is not None:
            actor.request_stop.remote(name)

    try:
        actor = _learner_class().options(
            name=f"asyncrl-learner-{uuid.uuid4().hex[:8]}", num_cpus=cfg.runtime.learner_num_cpus,
            num_gpus=cfg.runtime.learner_num_gpus, max_concurrency=2, max_restarts=0).remote()
        # Absolute paths: the actor may run on another node, in another working directory.
        run_dir = str(Path(run_dir).resolve())
        ref = actor.run.remote({**config_for_actors(cfg), "output_dir": run_dir}, run_dir,
                               inputs.dumps() if inputs is not None else None)
        with stop_on_signals(forward_stop):  # a second signal raises RunAborted (asyncrl.signals)
            while not ray.wait([ref], timeout=0.5)[0]:
                pass
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if e.cause is not None:
                raise e.cause from None
            raise
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"the learner actor died: {one_line(e, 'last')}") from None
    finally:
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        if owns and ray.is_initialized():
            ray.shutdown()


__all__ = ["run_in_learner_actor"]
