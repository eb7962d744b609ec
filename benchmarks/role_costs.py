"""Cost of one generation request and one learner step on the default job, per torch thread count.

Explains the async/sync ratio: async overlap can hide at most the cheaper role, and on a CPU
each role's speed depends on the threads it gets. Prints min / median over --repeats.

    python benchmarks/role_costs.py --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from asyncrl.buffer import BufferBatch
from asyncrl.config import Config
from asyncrl.learner import Learner
from asyncrl.policy import load_model, resolve_model_path
from asyncrl.runtime.worker import build_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    cfg = Config()
    path = resolve_model_path(None, cfg.task)
    gen = build_generator(cfg, path, 0)
    cpu = torch.device("cpu")
    learner = Learner(cfg, load_model(path, cpu), None, gen.tokenizer.pad_token_id, cpu)
    groups, _ = gen.generate(cfg.prompts_per_step)
    batch = BufferBatch(groups=groups, staleness=[0] * (len(groups) * cfg.samples_per_prompt))
    print(f"default job: {cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples per step")
    print(f"{'threads':>7} {'gen request s (min/med)':>26} {'learner step s (min/med)':>26}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        gen.generate(cfg.prompts_per_step), learner.step(batch)  # warm-up
        g, s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            gen.generate(cfg.prompts_per_step)  # sampling + reward + reference log-probs
            g.append(time.perf_counter() - t)
            t = time.perf_counter()
            learner.step(batch)
            s.append(time.perf_counter() - t)
        print(f"{threads:>7} {min(g):12.3f} / {statistics.median(g):.3f} {min(s):15.3f} / {statistics.median(s):.3f}")


if __name__ == "__main__":
    main()
