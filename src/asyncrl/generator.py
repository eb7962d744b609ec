"""The generator role: prompts -> engine (K samples each) -> task reward -> ``Group``s."""

from __future__ import annotations

import time
from dataclasses import dataclass

from asyncrl.engines.base import Engine
import torch

from asyncrl.policy import completion_logprobs, encode_prompts, pack
from asyncrl.tasks.base import Task
from asyncrl.types import Group, Prompt, Sample


@dataclass
class GenStats:
    gen_time_s: float  # engine (sampling) time
    score_time_s: float  # decoding, task reward and reference log-probs
    tokens: int  # generated tokens (EOS included)
    version: int


class Generator:
    def __init__(self, engine: Engine, task: Task, tokenizer, *, samples_per_prompt: int, seed: int,
                 chat_template: str = "auto", ref_model=None, temperature: float = 1.0):
        self.engine = engine
        self.ref_model = ref_model  # frozen initial policy; None = the learner computes reference log-probs
        self.temperature = temperature
        self.task = task
        self.tokenizer = tokenizer
        self.k = samples_per_prompt
        self.chat_template = chat_template
        self._prompts = task.train_prompts(seed)

    def generate(self, num_prompts: int) -> tuple[list[Group], GenStats]:
        prompts: list[Prompt] = [next(self._prompts) for _ in range(num_prompts)]
        prompt_ids = encode_prompts(self.tokenizer, [p.text for p in prompts], self.chat_template)
        version = self.engine.version
        t0 = time.perf_counter()
        completions = self.engine.generate(prompt_ids, self.k)  # [B][K]
        t1 = time.perf_counter()
        flat_prompts = [p for p in prompts for _ in range(self.k)]
        texts = [self.tokenizer.decode(c.ids, skip_special_tokens=True) for g in completions for c in g]
        rewards = self.task.reward(flat_prompts, texts)  # [B*K]
        refs = self._ref_logprobs(prompt_ids, completions)  # [B*K] lists, or Nones
        t2 = time.perf_counter()
        groups, tokens, r = [], 0, iter(zip(rewards, texts, refs))
        for prompt, ids, comps in zip(prompts, prompt_ids, completions):
            samples = []
            for c in comps:
                reward, text, ref = next(r)
                samples.append(Sample(prompt.prompt_id, ids, c.ids, c.logprobs, float(reward), version,
                                      c.finished, text, ref))
                tokens += len(c.ids)
            groups.append(Group(prompt, samples))
        return groups, GenStats(t1 - t0, t2 - t1, tokens, version)

    @torch.no_grad()
    def _ref_logprobs(self, prompt_ids: list[list[int]], completions) -> list:
        rows_c = [c.ids for g in completions for c in g]
        if self.ref_model is None:
            return [None] * len(rows_c)
        rows_p = [p for p, g in zip(prompt_ids, completions) for _ in g]
        device = next(self.ref_model.parameters()).device
        batch = pack(rows_p, rows_c, self.tokenizer.pad_token_id).to(device)
        logp = completion_logprobs(self.ref_model, batch, self.temperature).float().cpu()  # [B*K, C]
        return [logp[i, : len(c)].tolist() for i, c in enumerate(rows_c)]
