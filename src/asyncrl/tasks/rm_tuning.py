"""Task ``reward_model``: maximise a learned reward model's score (the TL;DR / chatbot RLHF setting).

    asyncrl train --task reward_model --model path/to/sft-policy --reward-model path/to/rm \\
        [--prompts ../shared/data/alpaca-eval/alpaca_eval_805_prompts.jsonl] [--prompt-field instruction] \\
        [--gold-reward-model path/to/gold-rm --eval-prompts eval.jsonl --reference-field output] \\
        [--length-penalty 0.001] [--missing-eos-penalty 1.0] [--reward-device cuda:1]

Prompts: rows of ``prompts`` (any format :func:`asyncrl.data.load_rows` reads; default the 805
AlpacaEval instructions), text from ``prompt_field`` (default ``instruction``), optionally wrapped
by ``prompt_template``; ids ``<file name>:<row>``. Training reshuffles every epoch; evaluation uses
``eval_prompts`` or the prompts file itself, in file order.

Reward: the output of ``reward_model``, a Hugging Face ``*ForSequenceClassification`` folder with
one output (``asyncrl rm`` checkpoints are such folders), on the instruction (the field's value,
without the policy's ``prompt_template``) followed by the completion, encoded exactly as ``asyncrl
rm --prompt-field`` encodes its training pairs (:func:`asyncrl.policy.encode_texts`): the RM
tokenizer's chat template user turn + generation prompt when it has one (``chat_template: never``
switches it off), else the instruction's tokens (with BOS), then the completion's tokens; cut to
the last ``min(max_seq_tokens, max_position_embeddings)`` tokens. Scored in batches of
``reward_batch_size``, without gradients, on ``reward_device``; loaded on first use (each
generator worker and the evaluator hold one copy).

The length and missing-EOS penalties of the RLHF papers are not part of this task: they are
``length_penalty`` / ``missing_eos_penalty``, applied by the generator to every task's reward
(:mod:`asyncrl.generator`), so evaluation here reports the raw RM score.

Evaluation (greedy completions): ``reward_mean`` (training RM), ``reward_errors``; with
``gold_reward_model``: ``gold_reward_mean``; with ``reference_field`` (a column of the eval rows
holding a reference completion): ``win_rate`` under the training RM and, with a gold RM,
``gold_win_rate`` = fraction of prompts where gold(policy completion) > gold(reference) (ties
lose). :func:`asyncrl.evaluation.evaluate` adds ``kl_ref`` / ``ref_perplexity`` against the
reference policy and ``completion_tokens_mean`` / ``missing_eos_rate`` because this task sets
``wants_kl``.
"""

from __future__ import annotations

from pathlib import Path

from asyncrl.data import column, load_rows
from asyncrl.hf_models import RewardModelScorer
from asyncrl.tasks.base import ListPrompts, checked_rewards
from asyncrl.types import Prompt

DEFAULT_PROMPTS = "../shared/data/alpaca-eval/alpaca_eval_805_prompts.jsonl"
DEFAULT_FIELD = "instruction"


def _prompts(path: str, field: str, template: str, reference_field: str | None = None) -> list[Prompt]:
    rows = load_rows(path)
    texts = column(rows, field, path)
    if reference_field:
        column(rows, reference_field, path)  # every row must hold a string reference
    name = Path(path).name
    return [Prompt(prompt_id=f"{name}:{i}", text=template.replace("{question}", t), meta=row)
            for i, (t, row) in enumerate(zip(texts, rows), 1)]


class RewardModelTask(ListPrompts):
    name = "reward_model"
    wants_kl = True  # evaluation.evaluate adds kl_ref / ref_perplexity against the reference policy

    def __init__(self, prompts: str | None, reward_model: str, *, prompt_field: str | None = None,
                 eval_prompts: str | None = None, template: str | None = None,
                 gold_reward_model: str | None = None, reference_field: str | None = None,
                 device: str = "auto", batch_size: int = 16, chat_template: str = "auto",
                 max_seq_tokens: int = 1024, reward_errors: str = "stop"):
        self.template = template or "{question}"
        if "{question}" not in self.template:
            raise ValueError("prompt_template must contain {question}")
        self.field = prompt_field or DEFAULT_FIELD
        self.reference_field = reference_field
        self.reward_errors = reward_errors
        self.reward_name = f"reward model {reward_model}"
        kw = dict(device=device, batch_size=batch_size, chat_template=chat_template, max_seq_tokens=max_seq_tokens)
        self.rm = RewardModelScorer(reward_model, **kw)
        self.gold = (RewardModelScorer(gold_reward_model, what="gold reward model", flag="--gold-reward-model", **kw)
                     if gold_reward_model else None)
        path = prompts or DEFAULT_PROMPTS
        if not Path(path).exists():
            raise ValueError(f"reward_model prompts file not found: {path} (set --prompts)")
        # Read the files now so a bad file or field fails at start-up with its row named.
        train = _prompts(path, self.field, self.template)
        super().__init__(train, _prompts(eval_prompts, self.field, self.template, reference_field) if eval_prompts
                         else (_prompts(path, self.field, self.template, reference_field) if reference_field
                               else None))

    def instructions(self, prompts: list[Prompt]) -> list[str]:
        """What the reward model sees before the completion: the field's value, no template."""
        return [str(p.meta.get(self.field, p.text)) for p in prompts]

    def reward(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        return self.rm.score(self.instructions(prompts), list(completions))

    def evaluate(self, prompts: list[Prompt], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
        rewards, errors = checked_rewards(self, prompts, completions, self.reward_errors)
        instr = self.instructions(prompts)
        rows = []
        for i, (p, c, r) in enumerate(zip(prompts, completions, rewards, strict=True)):
            rows.append({"prompt_id": p.prompt_id, "prompt": p.text, "completion": c, "reward": r,
                         **({"error": errors[i]} if i in errors else {})})
        ok = [i for i, r in enumerate(rewards) if r is not None]
        metrics = {"reward_mean": _mean([rewards[i] for i in ok]), "reward_errors": float(len(errors))}
        gold = self.gold.score(instr, list(completions)) if self.gold is not None else None
        if gold is not None:
            metrics["gold_reward_mean"] = _mean(gold)
            for row, g in zip(rows, gold):
                row["gold_reward"] = g
        if self.reference_field:
            refs = [str(p.meta[self.reference_field]) for p in prompts]
            ref_r = self.rm.score(instr, refs)
            metrics["win_rate"] = _mean([float(rewards[i] > ref_r[i]) for i in ok])
            for row, ref, rr in zip(rows, refs, ref_r):
                row.update({"reference": ref, "reference_reward": rr})
            if gold is not None:
                ref_g = self.gold.score(instr, refs)
                wins = [g > rg for g, rg in zip(gold, ref_g)]
                metrics["gold_win_rate"] = _mean([float(w) for w in wins])
                for row, rg, w in zip(rows, ref_g, wins):
                    row.update({"reference_gold_reward": rg, "gold_win": w})
        return metrics, rows


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
