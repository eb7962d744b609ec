"""Built-in task ``reasoning_gym``: procedurally generated, verifiable reasoning problems.

``reasoning-gym`` (``pip install 'asyncrl[envs]'``; tested with 0.1.25) generates problems of
100+ kinds (arithmetic chains, base conversion, sudoku, word ladders, ...) offline from a seed,
each with its own verifier. ``--rg-dataset NAME`` picks the kind; ``--rg-config JSON`` passes the
dataset's own settings (e.g. ``'{"min_terms": 2, "max_terms": 3}'`` for ``chain_sum``).

Training prompts: ``rg_size`` problems generated with seed ``rg_seed``, reshuffled every epoch;
evaluation: ``rg_eval_size`` problems with seed ``rg_seed + 1`` (the same every run, whatever the
training seed). A problem is identified by its split and index, so every generator process
rebuilds the same problems from the seed; prompts carry only that pair (``meta``).

Prompt text is ``prompt_template`` with ``{question}`` replaced by the problem (the chat template
on top when the model has one). Reward: the dataset's ``score_answer`` (1.0 correct; some
datasets give partial credit in [0, 1]) of the text inside the completion's last
``<answer>...</answer>`` (reasoning-gym's ``extract_answer``); no tags = 0. Evaluation reports
``accuracy`` (score 1.0) and ``score_mean``.
"""

from __future__ import annotations

import difflib

from asyncrl.data import json_object_flag
from asyncrl.tasks.base import ListPrompts
from asyncrl.types import Prompt

DEFAULT_TEMPLATE = "{question}\nGive only the final answer, inside <answer></answer> tags."
INSTALL = "pip install 'asyncrl[envs]' (reasoning-gym==0.1.25)"


def _reasoning_gym():
    try:
        import reasoning_gym  # optional (asyncrl[envs]); 0.3 s to import, only for this task
    except ImportError:
        raise ValueError(f"task reasoning_gym needs the reasoning-gym package: {INSTALL}") from None
    return reasoning_gym


def dataset_names() -> list[str]:
    """Every reasoning-gym dataset name, sorted."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS  # after _reasoning_gym() checked the install

    return sorted(DATASETS)


def parse_config(text: str | None) -> dict:
    """``--rg-config``: a JSON object of the dataset's settings (None = its defaults)."""
    return json_object_flag(text, "rg_config", "the dataset's settings")


class ReasoningGymTask(ListPrompts):
    name = "reasoning_gym"

    def __init__(self, dataset: str, size: int, eval_size: int, seed: int = 0, config: str | None = None,
                 template: str | None = None):
        rg = _reasoning_gym()
        names = dataset_names()
        if dataset not in names:
            close = difflib.get_close_matches(dataset, names, n=3)
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else "")
                             + " (`asyncrl train --task reasoning_gym --rg-dataset list` prints them all)")
        self.dataset = dataset
        self.template = template or DEFAULT_TEMPLATE
        if "{question}" not in self.template:
            raise ValueError("reasoning_gym prompt_template must contain {question}")
        settings = parse_config(config)
        try:  # built here, so a bad setting fails at start-up with the dataset's own message
            self._data = {"train": rg.create_dataset(dataset, size=size, seed=seed, **settings),
                          "eval": rg.create_dataset(dataset, size=eval_size, seed=seed + 1, **settings)}
        except (TypeError, ValueError, AssertionError) as e:
            raise ValueError(f"reasoning-gym dataset {dataset!r} refused rg_config {settings}: "
                             f"{type(e).__name__}: {e}") from None
        super().__init__(self._prompts("train"), self._prompts("eval"))

    def _prompts(self, split: str) -> list[Prompt]:
        data = self._data[split]
        return [Prompt(prompt_id=f"rg-{self.dataset}-{split}-{i}",
                       text=self.template.replace("{question}", data[i]["question"]),
                       meta={"split": split, "index": i})
                for i in range(len(data))]

    def _score(self, prompt: Prompt, completion: str) -> tuple[float, str | None]:
        from reasoning_gym.utils import extract_answer  # the package is there (see __init__)

        data = self._data[prompt.meta["split"]]
        answer = extract_answer(completion)
        if answer is None:
            return 0.0, None
        return float(data.score_answer(answer, data[prompt.meta["index"]])), answer

    def reward(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"reward: {len(prompts)} prompts but {len(completions)} completions")
        return [self._score(p, c)[0] for p, c in zip(prompts, completions)]

    def evaluate(self, prompts: list[Prompt], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
        rows = []
        for p, c in zip(prompts, completions, strict=True):
            score, predicted = self._score(p, c)
            entry = self._data[p.meta["split"]][p.meta["index"]]
            rows.append({"prompt_id": p.prompt_id, "prompt": p.text, "completion": c, "answer": str(entry["answer"]),
                         "predicted": predicted, "correct": score == 1.0, "reward": score})
        n = max(1, len(rows))
        return {"accuracy": sum(r["correct"] for r in rows) / n, "score_mean": sum(r["reward"] for r in rows) / n}, rows
