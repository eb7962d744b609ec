"""asyncrl from Python, with reward functions written for TRL's GRPOTrainer.

    python examples/python_api.py                 # 300 async grpo steps on the shipped tiny model
    python examples/python_api.py --steps 5 --output-dir /tmp/x

The dataset is a plain list of dicts (a ``datasets.Dataset`` works the same); its ``prompt`` column
is the prompt and every other column (here ``answer``) reaches the reward functions as a keyword
argument, as in TRL. Two rewards are combined with weights; each one's mean is logged in
metrics.jsonl as ``rewards/<name>/mean``. The reward functions below live in ``__main__`` and are
sent to the generator processes by value (cloudpickle), so the same works in a notebook.
"""

import argparse
import asyncio
import random

from asyncrl import Config, train


def accuracy(completions, answer, **kwargs):
    """1 when the completion is the right integer (TRL's convention: one float per completion)."""
    out = []
    for c, a in zip(completions, answer):
        try:
            out.append(1.0 if int(c.strip()) == a else 0.0)
        except ValueError:
            out.append(0.0)
    return out


async def well_formed(completions, **kwargs):
    """An async reward (awaited concurrently with any others): a bare integer scores 1, anything
    else 0. Real uses call an API or a sandbox here."""
    await asyncio.sleep(0)
    return [1.0 if c.strip().lstrip("-").isdigit() else 0.0 for c in completions]


def problems(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"{a}+{b}=", "answer": a + b})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--output-dir", default=None)
    args = ap.parse_args()
    from asyncrl.policy import BUILTIN_MODELS

    cfg = Config(
        model=str(BUILTIN_MODELS["arithmetic"]),  # the shipped 0.86M Llama; any local HF folder works
        loss="grpo", max_lag=2, steps=args.steps, lr=1e-4, output_dir=args.output_dir,
        reward_weights=[1.0, 0.1], eval_every=max(1, args.steps // 3), eval_limit=100,
    )
    summary = train(cfg, reward_funcs=[accuracy, well_formed], train_dataset=problems(2000, 0),
                    eval_dataset=problems(100, 1))
    first, last = summary["eval_history"][0], summary["eval_history"][-1]
    print(f"reward_mean {first['reward_mean']:.3f} -> {last['reward_mean']:.3f} "
          f"(accuracy {first['rewards/accuracy/mean']:.3f} -> {last['rewards/accuracy/mean']:.3f}) "
          f"in {summary['steps']} steps, {summary['wall_time_s']:.1f} s; run folder {summary['run_dir']}")


if __name__ == "__main__":
    main()
