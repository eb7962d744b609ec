"""Engine ``hf``: batched sampling with transformers' ``generate`` (KV cache) on the policy model."""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import Tensor

from asyncrl.engines.base import Completion, eos_token_ids
from asyncrl.lora import is_peft, load_adapter_state
from asyncrl.policy import token_logprobs


# transformers' ``generate`` samples from the process RNG (it takes no torch.Generator). An engine
# with its own generator borrows the process RNG for one call (:func:`borrowed_rng`); two threads
# borrowing it at once (thread workers of one process) would draw from each other's stream.
_BORROW_LOCK = threading.Lock()


@contextlib.contextmanager
def borrowed_rng(generator: torch.Generator | None):
    """Run the body drawing from ``generator``'s stream instead of the process's: the process RNG
    of ``generator``'s device is set to its state, and afterwards the advanced state is copied back
    into ``generator`` and the process RNG restored, so the caller's random state is untouched and
    the draws equal those of a process seeded like ``generator``. None: the process RNG as is."""
    if generator is None:
        yield
        return
    dev = generator.device
    with _BORROW_LOCK:
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            with torch.random.fork_rng(devices=[index], device_type="cuda"):
                torch.cuda.set_rng_state(generator.get_state(), index)
                yield
                generator.set_state(torch.cuda.get_rng_state(index))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(generator.get_state())
                yield
                generator.set_state(torch.get_rng_state())


class HFEngine:
    def __init__(self, model, tokenizer, *, max_new_tokens: int, temperature: float, version: int = 0,
                 generator: torch.Generator | None = None):
        """``generator``: the random state sampling draws from (a generator worker's own, on the
        model's device); None = the process RNG (evaluation with the learner's model)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.version = version
        self.generator = generator
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
        # greedy draws nothing; sampling draws from this engine's generator, if it has one
        with borrowed_rng(None if greedy else self.generator):
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

