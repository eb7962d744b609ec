"""The learner role: batches of groups in, one optimizer step out, versioned weights published.

Reference log-probs come with the samples when generators computed them (``reference_on:
generator``, the default: once per sample, on generator time); with ``reference_on: learner`` the
learner computes them here with its own frozen copy of the initial policy, one extra no-grad
forward per micro-batch, every time a sample is trained on.

With ``learner_ranks > 1`` every rank holds a ``Learner`` over one FSDP2-sharded model
(:mod:`asyncrl.sharding`): each rank trains on its share of the batch's prompt groups (split by
tokens), FSDP reduces the gradients, and the calls that gather (``weights``, ``state_dict``,
``full_model_state``, ``load_state_dict``) are collectives every rank makes in the same order
(rank 0 is driven by the controller, the others by :mod:`asyncrl.runtime.learner_ranks`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch
from torch import Tensor

from asyncrl.buffer import BufferBatch
from asyncrl.config import Config
from asyncrl.losses.common import LossInputs, mismatch_metrics, mismatch_sums, seq_sum
from asyncrl.losses.registry import make_loss
from asyncrl.lora import ReferenceView, adapter_snapshot, is_peft, load_policy
from asyncrl.optim import make_optimizer
from asyncrl.policy import (FLASH_VARLEN, TRAIN_DTYPE, Packed, autocast, completion_logprobs, default_dtype,
                            load_model, load_tokenizer, pack)
from asyncrl.sharding import RankGroup, split_groups_by_tokens, tied_aliases
from asyncrl.weights import snapshot


def flatten(batch: BufferBatch):
    """Groups -> prompt-major rows: prompts, completions, behaviour log-probs, rewards, ref log-probs
    (each a list of N = B*K entries)."""
    prompts, comps, beh, rewards, refs = [], [], [], [], []
    for g in batch.groups:
        for s in g.samples:
            prompts.append(s.prompt_ids)
            comps.append(s.completion_ids)
            beh.append(s.behaviour_logprobs)
            rewards.append(s.reward)
            refs.append(s.ref_logprobs)
    return prompts, comps, beh, rewards, refs


def _pad_floats(rows: list[list[float]], width: int) -> Tensor:  # [N, width]
    out = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def load_learner_models(cfg: Config, policy_path: str, base_path: str, device: torch.device):
    """(policy, reference or None, tokenizer) for a learner: the policy from ``policy_path`` (a
    resume's checkpoint), fp32 master weights (bf16 autocast on GPU); with LoRA base + adapter
    (resumed from policy_path's). The reference is always the *initial* policy (``base_path``),
    also after a resume, and only with ``reference_on: learner``; with LoRA it is the policy's own
    model with the adapter disabled (no second copy)."""
    tokenizer = load_tokenizer(policy_path)
    model = load_policy(cfg, policy_path, device, TRAIN_DTYPE)
    ref = None
    if cfg.loss.reference and cfg.loss.reference_on == "learner":
        ref = ReferenceView(model) if cfg.lora else load_model(base_path, device)
    return model, ref, tokenizer


def micro_batches_by_tokens(groups: list, budget_tokens: int) -> list[list]:
    """Prompt groups -> micro-batches of at most ``budget_tokens`` padded tokens each (rows x
    (longest prompt + longest completion), what :func:`asyncrl.policy.pack` allocates).

    Whole groups only (the losses compare the K samples of a prompt). Groups are bucketed by
    length: sorted by their longest row (stable), then packed greedily, so a micro-batch holds
    rows of similar length and pads little. A group over the budget on its own is its own
    micro-batch."""
    def width(g) -> tuple[int, int]:
        return max(len(s.prompt_ids) for s in g.samples), max(len(s.completion_ids) for s in g.samples)

    out: list[list] = []
    current: list = []
    p_max = c_max = rows = 0
    for g in sorted(groups, key=lambda g: sum(width(g))):
        p, c = width(g)
        np_, nc, nr = max(p_max, p), max(c_max, c), rows + len(g.samples)
        if current and nr * (np_ + nc) > budget_tokens:
            out.append(current)
            current, np_, nc, nr = [], p, c, len(g.samples)
        current.append(g)
        p_max, c_max, rows = np_, nc, nr
    if current:
        out.append(current)
    return out


def _merge(updates: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of one learner step's optimizer steps: means, tokens summed, the last LR,
    ``skipped_update`` if any was skipped, and ``optimizer_steps``."""
    out: dict[str, float] = {}
    for k in updates[0]:
        values = [u[k] for u in updates if k in u]
        if k == "skipped_update":
            out[k] = any(values)
        elif k == "learner_tokens":
            out[k] = sum(values)
        elif k == "lr":
            out[k] = values[-1]
        else:
            out[k] = sum(values) / len(values)
    out["optimizer_steps"] = len(updates)
    return out


class Scorer(torch.nn.Module):
    """Policy (+ PPO's value head) -> per-token completion log-probs ``[N, C]`` (+ values ``[N, C]``).

    Every learner forward goes through this one module so that FSDP2 can shard it as its root:
    the lean path calls the model's trunk and LM head directly (not ``model.forward``), and the
    root's hooks are what gather the embeddings, final norm, head and value head."""

    def __init__(self, model, value_head: torch.nn.Module | None, device: torch.device, temperature: float,
                 chunk_tokens: int | None, padding_free: bool = False):
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.device, self.temperature, self.chunk_tokens = device, temperature, chunk_tokens
        self.padding_free = padding_free

    def forward(self, packed: Packed) -> tuple[Tensor, Tensor | None]:
        with_hidden = self.value_head is not None
        with autocast(self.device):
            out = completion_logprobs(self.model, packed, self.temperature, with_hidden=with_hidden,
                                      chunk_tokens=self.chunk_tokens, padding_free=self.padding_free)
        logp, hidden = out if with_hidden else (out, None)
        values = self.value_head(hidden.float()).squeeze(-1) if with_hidden else None
        # A copy, not a view: FSDP2's backward hook on a root output is lost through an in-place op
        # on a view (values: the squeeze above is one).
        return logp.clone(), (values.clone() if values is not None else None)


class Learner:
    def __init__(self, cfg: Config, model, ref_model, pad_id: int, device: torch.device,
                 group: RankGroup | None = None):
        """``group``: this process's place among ``learner_ranks`` > 1 ranks (the model is then
        sharded here, before the optimizer is built); None = one learner process."""
        self.cfg = cfg
        self.model = model.train()
        self.ref_model = ref_model.eval() if ref_model is not None else None
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False)
        self.pad_id = pad_id
        self.device = device
        self.chunk_tokens = cfg.learner.logprob_chunk_tokens  # None = the full-logits path
        if cfg.learner.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs (LoRA) and with the lean path's own checkpoints.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.loss_fn = make_loss(cfg)
        self.value_head = None
        if cfg.loss.name == "ppo":
            # PPO's critic shares the policy trunk: a linear head on the last hidden state.
            hidden = model.config.hidden_size
            self.value_head = torch.nn.Linear(hidden, 1).to(device=device, dtype=next(model.parameters()).dtype)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        temperature = cfg.sampling.temperature
        padding_free = cfg.learner.padding_free
        if padding_free is None:  # where the attention takes packed rows natively
            padding_free = getattr(model.config, "_attn_implementation", None) in FLASH_VARLEN
        self.padding_free = bool(padding_free) and self.chunk_tokens is not None
        self.scorer = Scorer(model, self.value_head, device, temperature, self.chunk_tokens, self.padding_free)
        self.ref_scorer = None
        self._prox_scorer = None  # sharded decoupled PPO: the proximal copy, sharded like the policy
        self.group = group
        if group is not None:
            from asyncrl.sharding import shard  # noqa: PLC0415 - torch.distributed.fsdp: only when sharding
            if getattr(cfg.loss, "decoupled", False):  # copied before sharding, so it shards the same way
                prox = copy.deepcopy(model).eval().requires_grad_(False)
                self._prox_scorer = Scorer(prox, None, device, temperature, self.chunk_tokens)
                shard(self._prox_scorer, group, device, cfg.learner.cpu_offload)
            shard(self.scorer, group, device, cfg.learner.cpu_offload)
            if self.ref_model is not None and not isinstance(self.ref_model, ReferenceView):
                self.ref_scorer = Scorer(self.ref_model, None, device, temperature, self.chunk_tokens)
                shard(self.ref_scorer, group, device, cfg.learner.cpu_offload)
        # Trainable parameters only: all of them in full fine-tuning, the adapter with LoRA (lora.py);
        # the model's, then the value head's (the order checkpoints index the optimizer state by).
        params = [p for p in self.scorer.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(params, cfg)
        self.version = 0  # optimizer steps taken; samples carry the version that generated them
        # Benchmarks set this to a dict: each step() then fills it with that step's seconds per phase
        # (policy_forward, ref_forward, loss, backward, optimizer, other). None (default) = no timing.
        self.timings: dict[str, float] | None = None
        self._mark_t = 0.0
        # Decoupled PPO's proximal policy = the weights of the latest sync (see _refresh_proximal).
        self._prox_model = None

    def _mark(self, phase: str) -> None:
        """Adds the time since the previous mark to ``timings[phase]`` (no-op unless timing)."""
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._mark_t
        self._mark_t = now

    def _micro_inputs(self, packed: Packed, beh: Tensor, rewards: Tensor, ref: Tensor | None) -> LossInputs:
        logp, values = self.scorer(packed)
        self._mark("policy_forward")
        if ref is None and self.ref_model is not None:
            with torch.no_grad():
                if self.ref_scorer is not None:
                    ref = self.ref_scorer(packed)[0]
                elif self.group is not None:  # sharded LoRA: the policy's own root, adapter off
                    ref = self._adapter_off_logprobs(packed)
                else:
                    ref = completion_logprobs(self.ref_model, packed, self.cfg.sampling.temperature,
                                              chunk_tokens=self.chunk_tokens)
            self._mark("ref_forward")
        prox = None
        if getattr(self.cfg.loss, "decoupled", False):
            if self._prox_model is None:  # sync_every 1: the latest sync is the current weights
                prox = logp.detach()
            elif self._prox_scorer is not None:
                with torch.no_grad():
                    prox = self._prox_scorer(packed)[0]
                self._mark("prox_forward")
            else:
                with torch.no_grad(), autocast(self.device):
                    prox = completion_logprobs(self._prox_model, packed, self.cfg.sampling.temperature,
                                               chunk_tokens=self.chunk_tokens)
                self._mark("prox_forward")
        return LossInputs(
            logp=logp, mask=packed.completion_mask, behaviour_logp=beh, rewards=rewards,
            group_size=self.cfg.batch.samples_per_prompt, ref_logp=ref, values=values, prox_logp=prox,
        )

    def _adapter_off_logprobs(self, packed: Packed) -> Tensor:
        """A sharded LoRA learner's reference log-probs ``[n, C]``: the policy with its adapter
        disabled, in eval mode, through the FSDP root (what :class:`ReferenceView` does unsharded)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.scorer(packed)[0]
        finally:
            self.model.train(was_training)

    def _refresh_proximal(self) -> None:
        """Decoupled PPO with ``sync_every > 1``: keep a frozen copy of the weights the controller
        last published (it publishes after every step that makes ``version % sync_every == 0``, and
        at the start of a run or resume: the copy is first taken at this Learner's first step).
        asyncrl takes one optimizer step per batch, so with ``sync_every 1`` the latest sync is the
        current weights and no copy is kept (prox = stopgrad of the policy's own forward)."""
        if self._prox_scorer is not None:  # sharded: each rank copies its own shards, no communication
            # The root units keep their parameters gathered after a forward: shard them back first,
            # so both sides are the sharded parameters.
            self.scorer.reshard()
            self._prox_scorer.reshard()
            with torch.no_grad():
                for q, p in zip(self._prox_scorer.model.parameters(), self.model.parameters()):
                    q.copy_(p)
            self._prox_model = self._prox_scorer.model
        elif self._prox_model is None:
            self._prox_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        else:
            self._prox_model.load_state_dict(self.model.state_dict())

    @property
    def steps_done(self) -> int:
        """Learner steps (batches) taken: ``version`` counts optimizer steps, ``updates_per_step`` per batch."""
        return self.version // self.cfg.updates_per_step

    def _micro_batches(self, groups: list) -> list[list]:
        """``groups`` (one rank's) as micro-batches: ``micro_batch_tokens`` -> by padded tokens,
        length-bucketed (:func:`micro_batches_by_tokens`); else ``micro_batch_prompts`` groups
        at a time in batch order (all at once when unset)."""
        b = self.cfg.batch
        if b.micro_batch_tokens is not None:
            return micro_batches_by_tokens(groups, b.micro_batch_tokens)
        mb = b.micro_batch_prompts or len(groups)
        return [groups[g0 : g0 + mb] for g0 in range(0, len(groups), mb)]

    def _share(self, groups: list) -> tuple[list[list], int]:
        """This rank's micro-batches (of all the groups on one rank; with ranks, of a split
        balanced by tokens that every rank computes alike) and how many every rank runs."""
        if self.group is None:
            micro = self._micro_batches(groups)
            return micro, len(micro)
        shares = [self._micro_batches([groups[i] for i in idx]) for idx in split_groups_by_tokens(groups, self.group.world)]
        return shares[self.group.rank], max(len(m) for m in shares)

    def step(self, batch: BufferBatch) -> dict[str, float]:
        """One learner step on ``batch``: ``mini_batches`` x ``batch_epochs`` optimizer steps (one
        by default), each on an equal share of its prompt groups in batch order, every epoch over
        the same mini-batches; returns metrics (floats: the mean over the optimizer steps, tokens
        summed, ``skipped_update`` if any was skipped)."""
        t0 = time.perf_counter()
        if self.timings is not None:
            self.timings.clear()
            self._mark_t = t0
        a, per = self.cfg.asynchrony, self.cfg.updates_per_step
        if getattr(self.cfg.loss, "decoupled", False) and (per > 1 or a.sync_every > 1) and (
                self._prox_model is None or per > 1 or self.steps_done % a.sync_every == 0):
            self._refresh_proximal()
        if per == 1:
            m = self._update(batch.groups)
        else:
            size = len(batch.groups) // self.cfg.batch.mini_batches
            minis = [batch.groups[j : j + size] for j in range(0, len(batch.groups), size)]
            m = _merge([self._update(mini) for _ in range(self.cfg.batch.batch_epochs) for mini in minis])
        dt = time.perf_counter() - t0
        m.update(train_time_s=dt, learner_tokens_per_s=m["learner_tokens"] / dt)
        return m

    def _update(self, groups: list) -> dict[str, float]:
        """One optimizer step on ``groups`` (this rank's share of them, with ranks)."""
        K = self.cfg.batch.samples_per_prompt
        n_groups = len(groups)  # over every rank
        micro, n_micro = self._share(groups)  # this rank's micro-batches; how many every rank runs
        # FSDP averages gradients over ranks: each rank's share is scaled back up by the rank count.
        world = self.group.world if self.group is not None else 1
        mismatch: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        kl_sum = loss_sum = 0.0
        tokens = 0
        for i in range(n_micro):
            # A rank with fewer micro-batches than another repeats its first one with weight 0: FSDP's
            # collectives need every rank in every forward and backward.
            pad_pass = i >= len(micro)
            part = micro[0] if pad_pass else micro[i]
            prompts, comps, beh_rows, reward_rows, refs = flatten(BufferBatch(part, []))
            finished = [s.finished for g in part for s in g.samples]  # [n]
            fresh = torch.tensor([s.version == self.version for g in part for s in g.samples])  # [n]
            weight = 0.0 if pad_pass else len(prompts) / (n_groups * K)  # this micro-batch's share of groups
            packed = pack(prompts, comps, self.pad_id).to(self.device)
            C = packed.completion_ids.shape[1]
            beh = _pad_floats(beh_rows, C).to(self.device)  # [n, C]
            rewards = torch.tensor(reward_rows, dtype=torch.float32, device=self.device)  # [n]
            ref = _pad_floats(refs, C).to(self.device) if all(r is not None for r in refs) else None  # [n, C]
            self._mark("other")
            inp = self._micro_inputs(packed, beh, rewards, ref)
            masks = [s.loss_mask for g in part for s in g.samples]  # multi-turn: environment tokens are 0
            if any(m is not None for m in masks):
                keep = _pad_floats([m if m is not None else [1] * len(c) for m, c in zip(masks, comps)], C)  # [n, C]
                inp = dataclasses.replace(inp, mask=inp.mask * keep.to(self.device))
            if getattr(self.cfg.loss, "mask_truncated_completions", False):
                # Cut at max_new_tokens: no loss on these tokens (their rewards still shape the baselines).
                keep = torch.tensor(finished, dtype=inp.mask.dtype, device=self.device).unsqueeze(-1)  # [n, 1]
                inp = dataclasses.replace(inp, mask=inp.mask * keep)
            loss, metrics = self.loss_fn(inp, self.version)
            self._mark("loss")
            (loss * (weight * world)).backward()
            self._mark("backward")
            if pad_pass:
                continue
            loss_sum += loss.item() * weight
            for k, v in mismatch_sums(inp.logp, beh, inp.mask, fresh.to(self.device)).items():
                mismatch[k] = mismatch.get(k, 0.0) + v
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * weight
            if inp.ref_logp is not None:
                kl = seq_sum(inp.logp.detach() - inp.ref_logp, inp.mask).mean().item()
                kl_sum += kl * weight
            tokens += int(packed.attention_mask.sum())
        if self.group is not None:  # every rank's sums: the whole batch's
            loss_sum, kl_sum, tokens, sums, mismatch = self.group.sum_metrics(loss_sum, kl_sum, tokens, sums, mismatch)
        self._mark("other")
        params = [p for grp in self.optimizer.param_groups for p in grp["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, self.cfg.optimizer.max_grad_norm if self.cfg.optimizer.max_grad_norm else float("inf")
        )
        # Sharded: the norm of the whole gradient, a DTensor reduced over ranks.
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()
        lr = self.scheduler.get_last_lr()[0]
        # Numerical guard: a NaN/inf loss or gradient would poison the weights and Adam's moments
        # for good. Such an update is skipped (weights and optimizer state untouched); the step
        # still counts, as in the Hugging Face Trainer's overflow skip, so the LR schedule and the
        # versions stay on the step clock. The controller stops the run after too many in a row.
        skipped = not (math.isfinite(loss_sum) and math.isfinite(grad_norm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self._mark("optimizer")
        self.version += 1
        return {
            "loss": loss_sum,
            # Sequence-level KL(pi || ref) estimated on the batch's samples: mean over sequences of
            # the summed per-token log-ratio (0 when no reference model is kept).
            "kl": kl_sum,
            "grad_norm": grad_norm,
            "skipped_update": skipped,
            "lr": lr,
            "train_time_s": 0.0,  # set by step(), over all its optimizer steps
            "learner_tokens": tokens,
            "learner_tokens_per_s": 0.0,
            **{f"loss/{k}": v for k, v in sums.items()},
            # Behaviour (engine) vs learner log-probs of the sampled tokens: the mismatch that
            # importance-sampling corrections exist for; "_fresh" = staleness-0 samples only.
            **mismatch_metrics(mismatch),
        }

    def weights(self) -> dict[str, Tensor]:
        """A CPU snapshot of the policy weights, safe to hand to other threads/processes, in the
        generators' dtype (bf16 on GPU: half the bytes to move; fp32 on CPU); tied tensors are
        copied once (:func:`asyncrl.weights.snapshot`). With LoRA, the adapter tensors only (``lora.py``).
        Sharded: gathered one layer at a time; rank 0 gets the snapshot, other ranks ``{}``."""
        if self.group is not None:
            from asyncrl.sharding import full_snapshot  # noqa: PLC0415

            dtype = default_dtype(self.device)
            if is_peft(self.model):  # the adapter only: gather the trained parameters, then peft's names
                state = full_snapshot(self.scorer, self.model, dtype, self.group.rank, keep=self._trained_names())
                return adapter_snapshot(self.model, dtype, state) if self.group.rank == 0 else {}
            return full_snapshot(self.scorer, self.model, dtype, self.group.rank)
        if is_peft(self.model):
            return adapter_snapshot(self.model, default_dtype(self.device))
        return snapshot(self.model, default_dtype(self.device))

    def _trained_names(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if p.requires_grad}

    def full_model_state(self) -> dict[str, Tensor] | None:
        """Sharded: the model's whole state (fp32, CPU) on rank 0, for ``save_pretrained``; ``{}``
        on other ranks. One rank: None (the model itself is saved)."""
        if self.group is None:
            return None
        from asyncrl.sharding import full_snapshot, full_state  # noqa: PLC0415

        if is_peft(self.model):  # LoRA: the adapter's parameters (peft's save_pretrained picks them)
            return full_snapshot(self.scorer, self.model, torch.float32, self.group.rank, keep=self._trained_names())

        state = full_state(self.scorer)
        # Tied tensors (input and output embeddings) are one parameter under two names: the full
        # state has a copy under each; keep the first name, as save_pretrained does for one rank.
        aliases = set(tied_aliases(self.model))
        return {k[len("model."):]: v for k, v in state.items()
                if k.startswith("model.") and k[len("model."):] not in aliases}

    # --- checkpoint state beyond the model weights ---
    def state_dict(self) -> dict:
        """The learner's state beyond the weights. Sharded: gathered (a collective), the same form
        as one rank's, on rank 0 (other ranks' copy holds no optimizer state)."""
        if self.group is not None:
            from asyncrl.sharding import full_optimizer_state, full_state  # noqa: PLC0415

            optimizer = full_optimizer_state(self.scorer, self.optimizer)
            value_head = None
            if self.value_head is not None:
                state = full_state(self.scorer)
                value_head = {k[len("value_head."):]: v for k, v in state.items() if k.startswith("value_head.")}
            return {"version": self.version, "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                    "value_head": value_head}
        return {
            "version": self.version,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "value_head": self.value_head.state_dict() if self.value_head is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Sharded: a collective; rank 0's ``state["optimizer"]`` is the one loaded (broadcast to
        the others, which may pass None there); version, schedule and value head come from each
        rank's ``state`` (the same everywhere)."""
        self.version = state["version"]
        self.scheduler.load_state_dict(state["scheduler"])
        if self.group is not None:
            from asyncrl.sharding import load_full_state, load_optimizer_state  # noqa: PLC0415

            load_optimizer_state(self.scorer, self.optimizer, state.get("optimizer"))
            if self.value_head is not None and state.get("value_head") is not None:
                load_full_state(self.scorer, {f"value_head.{k}": v for k, v in state["value_head"].items()})
            return
        self.optimizer.load_state_dict(state["optimizer"])
        if self.value_head is not None and state.get("value_head") is not None:
            self.value_head.load_state_dict(state["value_head"])
