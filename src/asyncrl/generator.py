"""The generator role: prompts -> engine (K samples each) -> task reward -> ``Group``s."""

from __future__ import annotations

import time
from dataclasses import dataclass

from asyncrl.engines.base import Engine
from asyncrl.policy import encode_prompts
from asyncrl.tasks.base import Task
from asyncrl.types import Group, Prompt, Sample


@dataclass
class GenStats:
    gen_time_s: float  # engine time
    reward_time_s: float
    tokens: int  # generated tokens (EOS included)
    version: int


class Generator:
    def __init__(self, engine: Engine, task: Task, tokenizer, *, samples_per_prompt: int, seed: int,
                 chat_template: str = "auto"):
        self.engine = engine
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
        t2 = time.perf_counter()
        groups, tokens, r = [], 0, iter(zip(rewards, texts))
        for prompt, ids, comps in zip(prompts, prompt_ids, completions):
            samples = []
            for c in comps:
                reward, text = next(r)
                samples.append(Sample(prompt.prompt_id, ids, c.ids, c.logprobs, float(reward), version,
                                      c.finished, text))
                tokens += len(c.ids)
            groups.append(Group(prompt, samples))
        return groups, GenStats(t1 - t0, t2 - t1, tokens, version)
