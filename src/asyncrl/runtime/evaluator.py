"""Evaluation during training, and the training clock it pauses.

``TrainClock``: the training wall-clock of metrics rows, checkpoints and the summary. A resume
continues it; evaluation does not count (:meth:`TrainClock.pause`); it stops when training ends,
so stopping workers, the final evaluation and the final checkpoint are not training time.

``Evaluator``: greedy evaluation of the learner's current weights on the task's evaluation set
(step 0, every ``eval_every`` steps, the end). Each evaluation goes to ``eval.jsonl`` (through the
run's logger) and to :attr:`Evaluator.history` for the summary. What it needs is built at its first
use, not at set-up: an evaluation engine other than the learner's own model (``eval_engine``), and
the reference model of tasks that report ``kl_ref`` (``wants_kl``) when the learner has no copy.
"""

from __future__ import annotations

import time
from typing import Callable

from asyncrl.config import Config
from asyncrl.engines import make_engine
from asyncrl.evaluation import evaluate, limits_of
from asyncrl.lora import ReferenceView, load_policy
from asyncrl.policy import autocast, load_model, resolve_model_path


class TrainClock:
    def __init__(self, start_s: float = 0.0, now: Callable[[], float] = time.perf_counter):
        """``start_s``: training seconds before this process (a resume continues the clock)."""
        self._now = now
        self._start_s = start_s
        self._t0 = now()
        self.paused_s = 0.0  # evaluation time of this process
        self._end: float | None = None

    def restart(self) -> None:
        """Training begins now (set-up before this call is not training time)."""
        self._t0 = self._now()

    def pause(self, seconds: float) -> None:
        """``seconds`` just spent outside training (an evaluation) do not count."""
        self.paused_s += seconds

    def stop(self) -> None:
        """Training ended: :meth:`wall` stays where it is now."""
        if self._end is None:
            self._end = self.wall()

    def wall(self) -> float:
        """Training seconds so far, this run's earlier processes included."""
        if self._end is not None:
            return self._end
        return self._start_s + self._now() - self._t0 - self.paused_s


class Evaluator:
    def __init__(self, cfg: Config, task, learner, tokenizer, device, *, policy_path: str, base_path: str,
                 logger, clock: TrainClock):
        """``policy_path``: the weights this process started from (an evaluation engine is built
        from them); ``base_path``: the initial policy, the reference of ``kl_ref``."""
        self.cfg, self.task, self.learner, self.tokenizer, self.device = cfg, task, learner, tokenizer, device
        self.policy_path = policy_path
        self.start_version = learner.version  # the version of policy_path's weights
        self.logger = logger
        self.clock = clock
        self.history: list[dict] = []  # this process's evaluations, for the summary
        self.engine_name = cfg.engine.eval_engine or cfg.engine.name
        self.engine = None  # built at the first evaluation when it is not the learner's own model
        # A sharded learner's model is in pieces across ranks (a forward on rank 0 alone would wait
        # for the others): evaluation gets a whole copy, an hf engine loaded with its weights.
        self.sharded = bool(getattr(learner, "sharded", False))
        # Tasks that report kl_ref / ref_perplexity (wants_kl) evaluate against the initial policy (or
        # reference_model); loaded at the first evaluation, reusing the learner's copy when it has one.
        self.wants_kl = bool(getattr(task, "wants_kl", False))
        reference_model = getattr(cfg.task, "reference_model", None)  # only tasks with wants_kl have it
        self.ref_path = resolve_model_path(reference_model, cfg.task.name) if reference_model else base_path
        self.ref = None
        if self.wants_kl and not reference_model:
            if cfg.lora and not self.sharded:
                self.ref = ReferenceView(learner.model)
            elif not self.sharded:  # the learner's reference (reference_on: learner), else None: loaded when first needed
                self.ref = learner.ref_model

    def due(self, step: int) -> bool:
        """An evaluation on cadence after ``step`` (the end has its own)."""
        return bool(self.cfg.evaluation.eval_every) and step % self.cfg.evaluation.eval_every == 0 and step < self.cfg.steps

    def run(self, step: int) -> float | None:
        """Evaluate the current weights as those of ``step``; returns the accuracy (None when the
        task reports none)."""
        cfg = self.cfg
        w = self.clock.wall()  # the training time at which this evaluation's weights were reached
        te = time.perf_counter()
        if self.wants_kl and self.ref is None:
            self.ref = load_model(self.ref_path, self.device).eval().requires_grad_(False)
        with autocast(self.device):
            engine = self._engine()
            metrics, rows = evaluate(getattr(engine, "model", None) if self.sharded else self.learner.model,
                                     self.tokenizer, self.task,
                                     max_new_tokens=cfg.sampling.max_new_tokens, limit=cfg.evaluation.eval_limit,
                                     chat_template=cfg.chat_template, ref_model=self.ref,
                                     length_penalty=cfg.rewards.length_penalty, missing_eos_penalty=cfg.rewards.missing_eos_penalty,
                                     engine=engine, limits=limits_of(cfg, self.task, self.policy_path),
                                     reward_errors=cfg.rewards.reward_errors)
        dt = time.perf_counter() - te
        self.logger.log_eval({"step": step, "wall_time_s": w, **metrics, "n": len(rows), "eval_time_s": dt},
                             rows[: cfg.evaluation.eval_log_generations])
        self.clock.pause(dt)
        self.history.append({"step": step, **metrics})
        return metrics.get("accuracy")

    def _engine(self):
        """The evaluation engine holding the learner's current weights; None: hf, the learner's
        own model evaluates (no copy)."""
        if self.engine_name == "hf" and not self.sharded:
            return None
        if self.engine is None:
            # It holds policy_path's weights: those of the version this process started at,
            # not necessarily the current one (a resumed run's first evaluation comes later).
            # A sharded learner's hf copy: the policy as the generators build it (with LoRA, base + adapter).
            model = load_policy(self.cfg, self.policy_path, self.device) if self.engine_name == "hf" else None
            self.engine = make_engine(self.cfg, self.policy_path, self.tokenizer, name=self.engine_name,
                                      temperature=1.0, seed=self.cfg.seed, version=self.start_version,
                                      **({"model": model} if model is not None else {}))
        if self.engine.version != self.learner.version:
            self.engine.load_weights(self.learner.weights(), self.learner.version)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
