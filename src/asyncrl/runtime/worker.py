"""The generator worker: one :class:`GeneratorService` behind every host.

A host (``hosts.py``: inline, thread, process; ``ray_host.py``: Ray actors) only moves typed
messages (``messages.py``) to and from a service; what a worker does with them is written once,
here: ``WeightsUpdate`` -> receive through the weight transport and load into the engine;
``GenerateRequest`` -> sample, score and reply with ``RequestDone``.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from typing import Callable

import torch

from asyncrl.config import Config
from asyncrl.engines import engine_context, make_engine
from asyncrl.generator import Generator, GeneratorSettings
from asyncrl.lora import ReferenceView, load_policy
from asyncrl.policy import load_model, load_tokenizer, resolve_device
from asyncrl.envs import make_task
from asyncrl.tasks import TaskInputs
from asyncrl.runtime.messages import (
    FromWorker, GenerateRequest, GeneratorState, RequestDone, RestoreGenerator, StopWorker, WeightsUpdate,
    WorkerError, WorkerReady,
)
from asyncrl.runtime.spec import WorkerSpec
from asyncrl.runtime.transport import WeightReceiver
from asyncrl.runtime.transports import make_receiver
from asyncrl.tasks.base import RewardError

PARENT_CHECK_S = 1.0  # how often an idle worker process checks that its controller still lives


def build_generator(spec: WorkerSpec, task=None):
    """The generator role for ``spec`` (one worker): the one place a generator's config fields are
    read. ``task`` overrides ``make_task(cfg)`` (the Ray runtime passes a task whose reward-side
    models live in one shared actor)."""
    cfg = Config(**spec.config)
    model_path, worker_id = spec.model_path, spec.worker_id
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(model_path)
    # LoRA, hf engine: the engine samples with base + adapter, unmerged, and the reference is that
    # same model with the adapter disabled. The vllm engine merges the adapter itself (it loads the
    # base), so its reference is the base model, loaded from ref_path like a full run's.
    policy = load_policy(cfg, model_path, device) if cfg.lora and cfg.engine.name == "hf" else None
    ref = None
    if cfg.loss.reference and cfg.loss.reference_on == "generator":
        ref = ReferenceView(policy) if policy is not None else (
            load_model(spec.ref_path or model_path, device).eval().requires_grad_(False))
    # A resumed run continues with fresh prompt and sampling streams instead of replaying the first ones.
    offset = 100_003 * spec.start_version
    sample_seed = cfg.seed * 7919 + worker_id + offset
    # The generator's own random state, on the device it samples on: the hf engine draws from it
    # (never from the process RNG, which inline and thread generators share with the learner); the
    # vllm engine seeds its sampler with the same number.
    rng = torch.Generator(device).manual_seed(sample_seed)
    engine = make_engine(cfg, model_path, tokenizer, seed=sample_seed, model=policy, generator=rng)
    inputs = TaskInputs.loads(spec.inputs) if isinstance(spec.inputs, bytes) else spec.inputs
    settings = GeneratorSettings(
        samples_per_prompt=cfg.batch.samples_per_prompt, seed=cfg.seed * 1000 + worker_id + offset,
        chat_template=cfg.chat_template, temperature=cfg.sampling.temperature, reward_errors=cfg.rewards.reward_errors,
        length_penalty=cfg.rewards.length_penalty, missing_eos_penalty=cfg.rewards.missing_eos_penalty,
        shard=spec.shard, inflight_updates=cfg.engine.vllm.inflight_updates,
        max_turns=getattr(cfg.task, "max_turns", None), max_episode_tokens=getattr(cfg.task, "max_episode_tokens", None),
        context_tokens=engine_context(cfg, model_path), max_new_tokens=cfg.sampling.max_new_tokens)
    return Generator(engine, task if task is not None else make_task(cfg, inputs), tokenizer, settings,
                     ref_model=ref, rng=rng)


class GeneratorService:
    """A generator plus the receiving half of the weight transport; hosts feed it messages.

    The generator's random state is its own ``torch.Generator`` (``generator.rng``), whatever hosts
    it, so it travels in its :class:`GeneratorState` for every worker kind and a resume continues
    it exactly; the process RNG (the learner's, for inline and thread workers) is never touched.
    """

    def __init__(self, generator, receiver: WeightReceiver, worker_id: int):
        self.generator = generator
        self.receiver = receiver
        self.worker_id = worker_id
        self._load_s = 0.0  # weight loading since the last reply
        # In-flight updates: what the engine calls between decoding steps to take weights that
        # arrived meanwhile (set by the host's loop, which owns the inbox); None = none arrive.
        self.between_steps: Callable[[], None] | None = None

    def state(self) -> GeneratorState:
        seed, drawn = self.generator.stream_state()
        rng = self.generator.rng
        return GeneratorState(seed, drawn, rng.get_state() if rng is not None else None)

    def restore(self, state: GeneratorState) -> None:
        self.generator.restore_stream(state.prompt_seed, state.prompts_drawn)
        rng = self.generator.rng
        if rng is None:
            return
        if state.rng is not None:
            rng.set_state(state.rng)
        elif rng.device.type == "cpu" and state.torch_rng is not None:  # an older checkpoint: see GeneratorState
            rng.set_state(state.torch_rng)
        elif rng.device.type == "cuda" and state.cuda_rng:
            rng.set_state(state.cuda_rng[rng.device.index or 0])

    @property
    def version(self) -> int:
        """The version of the weights the engine holds."""
        return self.generator.engine.version

    def load(self, update: WeightsUpdate) -> None:
        t0 = time.perf_counter()
        self.generator.engine.load_weights(self.receiver.receive(update), update.version)
        self._load_s += time.perf_counter() - t0

    def generate(self, req: GenerateRequest) -> RequestDone:
        if self.between_steps is not None and self.generator.settings.inflight_updates:
            groups, stats = self.generator.generate(req.num_prompts, between_steps=self.between_steps)
        else:
            groups, stats = self.generator.generate(req.num_prompts)
        done = RequestDone(self.worker_id, req.request_id, groups, stats, self._load_s, self.state())
        self._load_s = 0.0
        return done

    def close(self) -> None:
        """Release the engine (vLLM's engine core and memory) and the receiver; not used again."""
        try:
            self.generator.engine.close()
        finally:
            self.receiver.close()

    def handle(self, msg) -> RequestDone | None:
        if isinstance(msg, WeightsUpdate):
            self.load(msg)
            return None
        if isinstance(msg, GenerateRequest):
            return self.generate(msg)
        if isinstance(msg, RestoreGenerator):
            self.restore(msg.state)
            return None
        raise TypeError(f"generator worker got an unknown message {type(msg).__name__}")


def error_message(worker_id: int, exc: BaseException) -> WorkerError:
    """A worker's exception as a message: reward errors are the user's (one line, stop the run);
    anything else is the worker's (traceback; the controller restarts it)."""
    if isinstance(exc, RewardError):
        return WorkerError(worker_id, str(exc), user_error=True)
    return WorkerError(worker_id, "".join(traceback.format_exception(exc)))


def worker_loop(spec: WorkerSpec, inbox, outbox) -> None:
    """Body of a thread or process worker: build, say ready, then serve the inbox in order."""
    worker_id = spec.worker_id
    own_process = threading.current_thread() is threading.main_thread()
    # The spawning controller, as multiprocessing knows it (its pid and a sentinel that becomes
    # ready when it exits): not os.getppid() here, which is already 1 when the controller was
    # killed while this process started. None in a thread, or a process multiprocessing did not spawn.
    parent = multiprocessing.parent_process() if own_process else None
    if own_process:
        # A spawned worker process: Ctrl-C and SIGTERM (sent to the whole process group by
        # terminals, schedulers and clusters) are the controller's to handle; it sends StopWorker.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    service = None
    try:
        if spec.threads:  # None in thread mode: the thread pool is per process, owned by the learner
            torch.set_num_threads(spec.threads)
        service = GeneratorService(build_generator(spec), make_receiver(spec.transport, spec.receiver_spec),
                                   worker_id)
        deferred: deque = deque()  # messages read during a request (in-flight updates), served next
        service.between_steps = lambda: take_weights(service, inbox, deferred)
        outbox.put(WorkerReady(worker_id))
        while True:
            try:
                msg = deferred.popleft() if deferred else inbox.get(timeout=PARENT_CHECK_S)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    # The controller was killed (SIGKILL): no one will stop this worker, and no one
                    # reads its outbox, so do not wait at exit to flush what is queued there.
                    getattr(outbox, "cancel_join_thread", lambda: None)()
                    return
                continue
            if isinstance(msg, StopWorker):
                return
            reply = service.handle(msg)
            if reply is not None:
                outbox.put(reply)
    except KeyboardInterrupt:
        return  # the controller handles Ctrl-C; workers just leave quietly
    except (BrokenPipeError, ConnectionResetError):
        return  # the controller closed this worker's pipe while a request ran (the run is over): no one reads
    except BaseException as e:
        try:
            outbox.put(error_message(worker_id, e))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the controller is gone; it learns of the loss from the closed pipe
    finally:
        if service is not None:
            service.close()


def take_weights(service: GeneratorService, inbox, deferred: deque) -> None:
    """In-flight updates, between two decoding steps: load every weights update waiting in
    ``inbox`` (in order); any other message waits in ``deferred`` for the end of the request."""
    while True:
        try:
            msg = inbox.get_nowait()
        except queue.Empty:
            return
        if isinstance(msg, WeightsUpdate):
            service.load(msg)
        else:
            deferred.append(msg)


def default_threads(cfg: Config) -> tuple[int, int]:
    """(learner threads, threads per generator process), measured choices in docs/runtime.md."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.synchronous or cfg.asynchrony.workers == "inline":
        # Roles never overlap (synchronous or inline), so each may use every core in its turn.
        gen, learner = cores, cores
    else:
        gen = max(1, cores // (1 + cfg.asynchrony.num_generators))
        learner = max(1, cores - gen * cfg.asynchrony.num_generators)
    return cfg.learner_threads or learner, cfg.asynchrony.generator_threads or gen


__all__ = ["FromWorker", "GeneratorService", "WorkerSpec", "build_generator", "default_threads", "error_message", "worker_loop"]
