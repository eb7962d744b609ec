"""Built-in task ``arithmetic``: two-operand integer addition/subtraction, exact-match reward.

Prompt text is ``"37+58="``; the expected completion is ``"95"`` followed by EOS. The tiny base
model shipped in ``asyncrl/assets/arithmetic-base`` was supervised on this exact format (see
``scripts/train_arithmetic_base.py``), stopping well short of mastery so RL has room to improve it.
"""

from __future__ import annotations

import random
from typing import Iterator

from asyncrl.types import Prompt

MAX_OPERAND = 99
OPS = ("+", "-")
EVAL_SEED = 1234
EVAL_SIZE = 200


def make_problem(rng: random.Random) -> tuple[str, int]:
    a = rng.randint(0, MAX_OPERAND)
    b = rng.randint(0, MAX_OPERAND)
    op = rng.choice(OPS)
    answer = a + b if op == "+" else a - b
    return f"{a}{op}{b}=", answer


def parse_answer(completion: str) -> int | None:
    """The integer the model wrote, or None when the completion is not a bare integer."""
    text = completion.strip()
    try:
        return int(text)
    except ValueError:
        return None


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, eval_size: int = EVAL_SIZE):
        self.eval_size = eval_size

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        # Training and evaluation streams are drawn from the same distribution with disjoint
        # seeds; with 2*100*100 problems some overlap is expected and harmless (the metric is
        # skill on the distribution, not memorisation of a held-out set).
        rng = random.Random(seed)
        i = 0
        while True:
            text, answer = make_problem(rng)
            yield Prompt(prompt_id=text, text=text, meta={"answer": answer})
            i += 1

    def eval_prompts(self) -> list[Prompt]:
        rng = random.Random(EVAL_SEED)
        out = []
        for _ in range(self.eval_size):
            text, answer = make_problem(rng)
            out.append(Prompt(prompt_id=text, text=text, meta={"answer": answer}))
        return out

    def reward(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"reward: {len(prompts)} prompts but {len(completions)} completions")
        return [
            1.0 if parse_answer(c) == p.meta["answer"] else 0.0
            for p, c in zip(prompts, completions)
        ]

    def evaluate(self, prompts: list[Prompt], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
        rows = []
        for p, c in zip(prompts, completions, strict=True):
            predicted = parse_answer(c)
            correct = predicted == p.meta["answer"]
            rows.append({"prompt_id": p.prompt_id, "prompt": p.text, "completion": c, "answer": p.meta["answer"],
                         "predicted": predicted, "correct": correct, "reward": 1.0 if correct else 0.0})
        accuracy = sum(r["correct"] for r in rows) / max(1, len(rows))
        return {"accuracy": accuracy}, rows
