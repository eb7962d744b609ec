"""Generation engines, chosen at one dispatch point: :func:`make_engine`."""

from __future__ import annotations

from asyncrl.engines.base import Completion, Engine


def make_engine(name: str, model, tokenizer, *, max_new_tokens: int, temperature: float) -> Engine:
    if name == "hf":
        from asyncrl.engines.hf import HFEngine

        return HFEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    raise ValueError(f"unknown engine {name!r}; known engines: hf")


__all__ = ["Completion", "Engine", "make_engine"]
