"""Engine ``hf``: batched sampling with transformers' ``generate`` (KV cache) on the policy model."""

from __future__ import annotations

import torch
from torch import Tensor

from asyncrl.engines.base import Completion, eos_token_ids
from asyncrl.lora import is_peft, load_adapter_state
from asyncrl.policy import token_logprobs


class HFEngine:
    def __init__(self, model, tokenizer, *, max_new_tokens: int, temperature: float, version: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.version = version
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = eos_token_ids(model.generation_config, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def load_weights(self, state: dict[str, Tensor], version: int) -> None:
        # In-place copy keeps the module (and any compiled/cached state) alive.
        if is_peft(self.model):  # LoRA: the update is the adapter only; the base stays as loaded
            load_adapter_state(self.model, state)
        else:
            self.model.load_state_dict(state, strict=True)
        self.version = version

    def close(self) -> None:
        pass  # the model belongs to the caller (the learner's, in evaluation)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], k: int, greedy: bool = False) -> list[list[Completion]]:
        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, P - len(p) :] = torch.tensor(p)
            attn[i, P - len(p) :] = 1
        sampling = dict(do_sample=False) if greedy else dict(
            # top_k/top_p disabled explicitly: HF defaults to top_k=50, which would make the
            # behaviour distribution differ from the learner's plain temperature softmax.
            do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0
        )
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=1 if greedy else k,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
            **sampling,
        )
        gen = out.sequences[:, P:]  # [B*K, C] (rows prompt-major, K per prompt)
        logits = torch.stack(out.logits, dim=1)  # [B*K, C, V] raw logits before any warper
        logp = token_logprobs(logits, gen, self.temperature).cpu()  # [B*K, C]
        gen = gen.cpu()
        per_prompt = 1 if greedy else k
        results: list[list[Completion]] = []
        for b in range(len(prompts)):
            group = []
            for j in range(per_prompt):
                row = b * per_prompt + j
                toks = gen[row].tolist()
                end, finished = len(toks), False
                for t, tok in enumerate(toks):
                    if tok in self.eos_ids:
                        end, finished = t + 1, True
                        break
                group.append(Completion(toks[:end], logp[row, :end].tolist(), finished))
            if greedy and k > 1:
                group = group * k
            results.append(group)
        return results

