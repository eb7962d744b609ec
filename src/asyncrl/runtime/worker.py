"""Hosting a generator beside the learner: the same loop runs in a thread or a spawned process.

Messages into a worker (its own inbox, handled strictly in order):
  ("weights", state_dict, version)   load new weights
  ("generate", request_id, n_prompts) sample n prompts x K and reply
  ("stop",)
Messages out (one shared outbox): ("ready", wid) | ("groups", wid, request_id, groups, GenStats,
weight_load_s) | ("error", wid, traceback_text) | ("error", wid, one_line_message, True) for errors
the user must see as one line (reward errors).
"""

from __future__ import annotations

import os
import queue
import threading
import traceback

import torch

from asyncrl.config import Config
from asyncrl.tasks.base import RewardError


def build_generator(cfg: Config, model_path: str, worker_id: int, ref_path: str | None = None,
                    start_version: int = 0):
    from asyncrl.engines import make_engine
    from asyncrl.generator import Generator
    from asyncrl.policy import load_model, load_tokenizer, resolve_device
    from asyncrl.tasks import make_task

    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, device)
    ref = None
    if cfg.reference and cfg.reference_on == "generator":
        ref = load_model(ref_path or model_path, device).eval().requires_grad_(False)
    engine = make_engine("hf", model, tokenizer, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    # A resumed run continues with fresh prompt and sampling streams instead of replaying the first ones.
    offset = 100_003 * start_version
    torch.manual_seed(cfg.seed * 7919 + worker_id + offset)
    return Generator(engine, make_task(cfg), tokenizer, samples_per_prompt=cfg.samples_per_prompt,
                     seed=cfg.seed * 1000 + worker_id + offset, chat_template=cfg.chat_template, ref_model=ref,
                     temperature=cfg.temperature, reward_errors=cfg.reward_errors,
                     length_penalty=cfg.length_penalty, missing_eos_penalty=cfg.missing_eos_penalty)


def worker_loop(cfg_dict: dict, model_path: str, ref_path: str, worker_id: int, start_version: int, inbox,
                outbox, threads: int | None) -> None:
    import time

    import signal

    if threading.current_thread() is threading.main_thread():
        # A spawned worker process: Ctrl-C is the controller's to handle; it sends "stop".
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if threads:  # None in thread mode: the thread pool is per process, owned by the learner
            torch.set_num_threads(threads)
        cfg = Config(**cfg_dict)
        gen = build_generator(cfg, model_path, worker_id, ref_path, start_version)
        outbox.put(("ready", worker_id))
        load_s = 0.0
        while True:
            msg = inbox.get()
            if msg[0] == "stop":
                return
            if msg[0] == "weights":
                t0 = time.perf_counter()
                gen.engine.load_weights(msg[1], msg[2])
                load_s += time.perf_counter() - t0
            elif msg[0] == "generate":
                groups, stats = gen.generate(msg[2])
                outbox.put(("groups", worker_id, msg[1], groups, stats, load_s))
                load_s = 0.0
    except KeyboardInterrupt:
        return  # the controller handles Ctrl-C; workers just leave quietly
    except RewardError as e:
        outbox.put(("error", worker_id, str(e), True))
    except BaseException:
        outbox.put(("error", worker_id, traceback.format_exc()))


class WorkerHandle:
    """One generator worker, running as a thread or a process; the controller only sees queues."""

    def __init__(self, kind: str, cfg: Config, model_path: str, ref_path: str, worker_id: int, start_version: int,
                 outbox, threads: int, ctx=None):
        self.kind = kind
        self.worker_id = worker_id
        args_cfg = cfg.model_dump()
        if kind == "process":
            self.inbox = ctx.Queue()
            self._runner = ctx.Process(
                target=worker_loop, args=(args_cfg, model_path, ref_path, worker_id, start_version, self.inbox, outbox, threads),
                daemon=True, name=f"asyncrl-gen-{worker_id}",
            )
        else:
            self.inbox = queue.Queue()
            self._runner = threading.Thread(
                target=worker_loop, args=(args_cfg, model_path, ref_path, worker_id, start_version, self.inbox, outbox, None),
                daemon=True, name=f"asyncrl-gen-{worker_id}",
            )
        self._runner.start()

    def send(self, msg) -> None:
        self.inbox.put(msg)

    def alive(self) -> bool:
        return self._runner.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self.inbox.put(("stop",))
        except (ValueError, OSError):
            pass
        self._runner.join(timeout)
        if self.kind == "process" and self._runner.is_alive():
            self._runner.terminate()
            self._runner.join(2)


class InlineWorker:
    """Runs the generator in the controller's own thread: a request is served the moment it is
    sent. Nothing overlaps: with ``max_lag: 0`` it is synchronous training without any hand-off
    between roles; with ``max_lag: N`` the controller dispatches N requests ahead, so every batch
    is trained exactly N updates after the weights that generated it (a simulated lag)."""

    kind = "inline"

    def __init__(self, cfg: Config, model_path: str, ref_path: str, worker_id: int, start_version: int, outbox):
        self.worker_id = worker_id
        self._outbox = outbox
        self._gen = build_generator(cfg, model_path, worker_id, ref_path, start_version)
        self._load_s = 0.0
        outbox.put(("ready", worker_id))

    def send(self, msg) -> None:
        import time

        if msg[0] == "weights":
            t0 = time.perf_counter()
            self._gen.engine.load_weights(msg[1], msg[2])
            self._load_s += time.perf_counter() - t0
        elif msg[0] == "generate":
            groups, stats = self._gen.generate(msg[2])
            self._outbox.put(("groups", self.worker_id, msg[1], groups, stats, self._load_s))
            self._load_s = 0.0

    def alive(self) -> bool:
        return True

    def stop(self, timeout: float = 0.0) -> None:
        pass


def make_outbox(kind: str):
    if kind == "process":
        import torch.multiprocessing as mp

        # spawn, not fork: forking a process that already runs torch thread pools can deadlock.
        ctx = mp.get_context("spawn")
        return ctx, ctx.Queue()
    return None, queue.Queue()


def default_threads(cfg: Config) -> tuple[int, int]:
    """(learner threads, threads per generator process), measured choices in docs/runtime.md."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.synchronous or cfg.workers == "inline":
        # Roles never overlap (synchronous or inline), so each may use every core in its turn.
        gen, learner = cores, cores
    else:
        gen = max(1, cores // (1 + cfg.num_generators))
        learner = max(1, cores - gen * cfg.num_generators)
    return cfg.learner_threads or learner, cfg.generator_threads or gen
