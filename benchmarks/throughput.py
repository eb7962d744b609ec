"""Throughput of each role in isolation, in-process, against batch size and model size (CPU, fp32).

Four measurements, one panel each in ``throughput.png`` (plus ``results.json`` and printed tables):

(a) generation: generated tokens/s of the ``hf`` engine (``HFEngine.generate``, the call generators
    make) sampling K=8 completions for P prompts of the default ``arithmetic`` task, P = 1..64
    (B*K = 8..512 sequences). Tokens = lengths of the returned ``Completion.ids`` (EOS included,
    padding after EOS not counted), time = the ``generate`` call only: the same definition as
    ``gen_tokens_per_s`` in metrics.jsonl. Two markers show the full request ``Generator.generate``
    at the default ``prompts_per_step`` (tokens / wall time of the whole call: prompt encoding,
    sampling, decoding, reward, and reference log-probs when ``reference_on: generator``; the second
    marker is the same request with no reference model in the generator).
(b) learner: ``Learner.step`` on P prompts x 8 real generated samples, for ``tb`` and ``grpo`` with
    reference log-probs carried by the samples (default ``reference_on: generator``) and ``tb`` with
    ``reference_on: learner``. Tokens = the non-pad prompt+completion tokens the step runs forward and
    backward (``learner_tokens``), time = the step's ``train_time_s``: exactly ``learner_tokens_per_s``
    in metrics.jsonl. results.json also holds completion-token counts.
(c) weight sync: random-init Llama models built from a config (no download) of ~1M, 10M, 35M and
    135M parameters (135M = SmolLM2-135M's shape), fp32 on CPU. Times (1) ``Learner.weights()``, the
    CPU snapshot every publish takes; (2) ``HFEngine.load_weights`` (``load_state_dict``) of that
    snapshot, which is the whole sync of ``workers: inline`` / ``thread``; (3) ``workers: process``:
    a fresh snapshot put on a spawn-context ``torch.multiprocessing`` queue to a spawned process
    that loads it into its own model and acknowledges, timed from ``put`` to the acknowledgement
    (snapshot excluded; moving it into shared memory, the hand-over and the child's load included).
    The first publish to the child is a warm-up. MB/s = snapshot bytes / time, MB = 1e6 bytes; the
    snapshot holds tied embeddings once (``transport.snapshot``), so MB counts distinct bytes.
(d) one learner step of the default job (tiny ``arithmetic`` model, 16 prompts x 8) split into phases
    by ``Learner.timings`` (perf_counter marks inside ``Learner.step``; off by default):
    policy forward (log-probs, with grad), reference forward (only with ``reference_on: learner``),
    loss, backward, optimizer (grad clip + AdamW + scheduler), other (flattening, packing, padding,
    metric ``.item()`` calls).
roles (printed and in results.json, no panel): one generation request (``Generator.generate``, default
    job) and one learner step per torch thread count (``--role-threads``): why async overlap on a
    2-core machine gains what it gains (README "Measured", docs/runtime.md).

Every measurement: ``--warmup`` untimed runs, then ``--repeats`` timed ones; tables show median
(min-max). Throughputs are per repeat (tokens / seconds), so their max matches the fastest repeat.
``--threads`` sets ``torch.set_num_threads`` (default: all cores; the process child too, as the
learner waits while it loads). ``--parts`` picks sections (gen,learner,sync,phases,roles).

    python benchmarks/throughput.py --out runs/bench-throughput
    python benchmarks/throughput.py --out runs/bench-roles --parts roles --role-threads 1,2 --repeats 10
    python benchmarks/throughput.py --out /tmp/tp --quick                           # smoke run

How to read it: in (a) and (b), tokens/s rises while larger batches still amortise per-call
overhead (Python, kernel launches, HF ``generate`` bookkeeping) and flattens once the cores are
busy; the gap between (a)'s line at B*K=128 and the two markers is what decoding, reward and the
reference forward add to a request. In (c), compare the seconds with a learner step ((b), (d)) to
see whether publishing every step (``sync_every: 1``) matters at a model size; process mode adds
the shared-memory copy and the hand-over to the load. (d) shows what a learner step spends its
time on and what ``reference_on: learner`` adds. Timings need a quiet machine: on a loaded one,
torch's thread pools stall (seen as ~0.2 s per publish to the child even at 1M parameters).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, spread, write_json  # noqa: E402

import torch  # noqa: E402

K = 8  # samples per prompt (Config default)
PHASES = ["policy_forward", "ref_forward", "loss", "backward", "optimizer", "other"]
# Llama shapes for (c); the parameter counts actually built are reported.
SIZES = {
    "1M": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=384, vocab_size=2048),
    "10M": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=768, vocab_size=16384),
    "35M": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, num_key_value_heads=2,
                intermediate_size=1024, vocab_size=49152),
    "135M": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152),  # SmolLM2-135M
}
CPU = torch.device("cpu")


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def job(cfg, **changes):
    """``cfg`` with ``changes``, validated again (so e.g. a new loss gets its own default variant)."""
    from asyncrl.config import Config

    return Config(**{**cfg.model_dump(exclude={"variant", "workers"}), **changes})


def measure(fn, repeats: int, warmup: int) -> list[dict]:
    """Runs ``fn`` (returning a dict of numbers) ``warmup`` times untimed, then ``repeats`` times."""
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


def summarize(reps: list[dict]) -> dict:
    return {k: spread([r[k] for r in reps]) for k in reps[0]}


# --- (a) generation ---------------------------------------------------------------------------

def bench_generation(args, gen, gen_noref, cfg) -> dict:
    from asyncrl.policy import encode_prompts
    from asyncrl.tasks import make_task

    engine, tok = gen.engine, gen.tokenizer
    stream = make_task(cfg).train_prompts(cfg.seed + 1)
    rows = []
    for P in args.prompts:
        def once():
            ids = encode_prompts(tok, [next(stream).text for _ in range(P)], cfg.chat_template)
            t = time.perf_counter()
            comps = engine.generate(ids, K)
            dt = time.perf_counter() - t
            tokens = sum(len(c.ids) for g in comps for c in g)
            return {"s": dt, "tokens": tokens, "tokens_per_s": tokens / dt}

        r = summarize(measure(once, args.repeats, args.warmup))
        rows.append({"prompts": P, "sequences": P * K, **r})
        print(f"  engine  P={P:>3} B*K={P * K:>4}: {fmt(r['tokens_per_s'], 0)} tok/s, "
              f"{fmt(r['s'], 4)} s, {fmt(r['tokens'], 0)} tokens", flush=True)
    full = {}
    for name, g in (("with_reference", gen), ("no_reference", gen_noref)):
        def once(g=g):
            t = time.perf_counter()
            _, st = g.generate(cfg.batch.prompts_per_step)
            dt = time.perf_counter() - t
            return {"s": dt, "gen_time_s": st.gen_time_s, "score_time_s": st.score_time_s,
                    "tokens": st.tokens, "tokens_per_s": st.tokens / dt}

        r = summarize(measure(once, args.repeats, args.warmup))
        full[name] = {"prompts": cfg.batch.prompts_per_step, "sequences": cfg.batch.prompts_per_step * K, **r}
        print(f"  Generator.generate P={cfg.batch.prompts_per_step} ({name}): {fmt(r['tokens_per_s'], 0)} tok/s, "
              f"{fmt(r['s'], 4)} s = sampling {fmt(r['gen_time_s'], 4)} + decode/reward/ref "
              f"{fmt(r['score_time_s'], 4)}", flush=True)
    return {"engine": rows, "generator": full}


# --- (b) learner --------------------------------------------------------------------------------

def make_learner(cfg, path, pad_id, with_ref: bool, timed: bool = False):
    from asyncrl.learner import Learner
    from asyncrl.policy import load_model

    torch.manual_seed(0)
    learner = Learner(cfg, load_model(path, CPU), load_model(path, CPU) if with_ref else None, pad_id, CPU)
    if timed:
        learner.timings = {}
    return learner


def make_batch(groups, reference_on: str):
    from asyncrl.buffer import BufferBatch

    if reference_on == "learner":  # the learner computes them with its own reference copy
        groups = copy.deepcopy(groups)
        for g in groups:
            for s in g.samples:
                s.ref_logprobs = None
    return BufferBatch(groups=groups, staleness=[0] * (len(groups) * K))


def variants(losses: list[str], both_refs: bool) -> list[tuple[str, str]]:
    out = [(loss, "generator") for loss in losses]
    return out + [(loss, "learner") for loss in (losses if both_refs else losses[:1])]


def bench_learner(args, cfg, path, pad_id, pool) -> dict:
    out = {}
    for loss, ref_on in variants(args.losses, both_refs=False):
        name = f"{loss}, reference_on {ref_on}"
        lcfg = job(cfg, loss=loss, reference_on=ref_on)
        learner = make_learner(lcfg, path, pad_id, with_ref=ref_on == "learner")
        rows = []
        for P in args.prompts:
            batch = make_batch(pool[:P], ref_on)
            completion = sum(len(s.completion_ids) for g in batch.groups for s in g.samples)

            def once():
                m = learner.step(batch)
                return {"s": m["train_time_s"], "tokens": m["learner_tokens"],
                        "tokens_per_s": m["learner_tokens_per_s"],
                        "completion_tokens_per_s": completion / m["train_time_s"]}

            r = summarize(measure(once, args.repeats, args.warmup))
            rows.append({"prompts": P, "sequences": P * K, "completion_tokens": completion, **r})
            print(f"  {name:<28} P={P:>3} B*K={P * K:>4}: {fmt(r['tokens_per_s'], 0)} tok/s, "
                  f"{fmt(r['s'], 4)} s, {fmt(r['tokens'], 0)} tokens ({completion} completion)", flush=True)
        out[name] = rows
    return out


# --- (c) weight sync ----------------------------------------------------------------------------

def build_llama(spec: dict):
    from transformers import AutoModelForCausalLM, LlamaConfig

    conf = LlamaConfig(**spec, max_position_embeddings=512, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(conf, dtype=torch.float32)


def build_engine(model):
    from asyncrl.engines.hf import HFEngine
    from asyncrl.policy import BUILTIN_MODELS, load_tokenizer

    # The tokenizer only supplies pad/EOS ids; load_weights never touches it.
    return HFEngine(model, load_tokenizer(str(BUILTIN_MODELS["arithmetic"])), max_new_tokens=8, temperature=1.0)


def sync_child(inbox, outbox, threads: int) -> None:
    """The receiving side of a process-mode publish, as in runtime/worker.py: load, then answer."""
    torch.set_num_threads(threads)
    engine = None
    while True:
        msg = inbox.get()
        if msg[0] == "stop":
            return
        if msg[0] == "build":
            engine = None
            engine = build_engine(build_llama(msg[1]))
            outbox.put(("ready",))
        elif msg[0] == "weights":
            t = time.perf_counter()
            engine.load_weights(msg[1], msg[2])
            load_s = time.perf_counter() - t
            del msg
            outbox.put(("loaded", load_s))


def sync_one(name: str, args, inbox, outbox) -> dict:
    """(c) at one model size; the child process is asked to build the same model first."""
    from asyncrl.config import Config
    from asyncrl.learner import Learner
    from asyncrl.runtime.transport import distinct_bytes

    spec = SIZES[name]
    inbox.put(("build", spec))  # the child builds its model while we build ours
    torch.manual_seed(0)
    learner = Learner(Config(), build_llama(spec), None, 0, CPU)
    engine = build_engine(build_llama(spec))
    params = sum(p.numel() for p in learner.model.parameters())
    state = learner.weights()
    mb = distinct_bytes(state) / 1e6
    # Wait for the child's model before timing anything: its start-up must not share the cores.
    assert outbox.get(timeout=600)[0] == "ready"

    def snapshot():
        t = time.perf_counter()
        learner.weights()
        return {"s": time.perf_counter() - t}

    def load():
        t = time.perf_counter()
        engine.load_weights(state, 1)
        return {"s": time.perf_counter() - t}

    version = 0

    def publish():
        nonlocal version
        version += 1
        fresh = learner.weights()  # new tensors every publish, as in the runtime
        t = time.perf_counter()
        inbox.put(("weights", fresh, version))
        put_s = time.perf_counter() - t
        msg = outbox.get(timeout=600)
        rt = time.perf_counter() - t
        assert msg[0] == "loaded", msg
        return {"s": rt, "put_s": put_s, "child_load_s": msg[1]}

    row = {"size": name, "params": params, "snapshot_mb": mb, "spec": spec}
    for key, fn, warmup in (("snapshot", snapshot, args.warmup), ("inline_load", load, args.warmup),
                            ("process_roundtrip", publish, max(1, args.warmup))):
        reps = measure(fn, args.repeats, warmup)
        row[key] = {**summarize(reps), "mb_per_s": spread([mb / x["s"] for x in reps])}
    print(f"  {name:>5} ({params / 1e6:.1f}M params, {mb:.1f} MB snapshot): "
          f"snapshot {fmt(row['snapshot']['s'], 4)} s ({row['snapshot']['mb_per_s']['median']:.0f} MB/s), "
          f"load_state_dict {fmt(row['inline_load']['s'], 4)} s "
          f"({row['inline_load']['mb_per_s']['median']:.0f} MB/s), "
          f"process round trip {fmt(row['process_roundtrip']['s'], 4)} s "
          f"({row['process_roundtrip']['mb_per_s']['median']:.0f} MB/s; child load "
          f"{fmt(row['process_roundtrip']['child_load_s'], 4)} s)", flush=True)
    return row


def bench_sync(args) -> list[dict]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")  # as make_outbox in runtime/worker.py
    inbox, outbox = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=sync_child, args=(inbox, outbox, args.threads), daemon=True)
    child.start()
    try:
        return [sync_one(name, args, inbox, outbox) for name in args.sizes]
    finally:
        inbox.put(("stop",))
        child.join(30)
        if child.is_alive():
            child.terminate()


# --- (d) phases of one learner step ---------------------------------------------------------------

def bench_phases(args, cfg, path, pad_id, pool) -> dict:
    out = {}
    for loss, ref_on in variants(args.losses, both_refs=True):
        name = f"{loss}, reference_on {ref_on}"
        lcfg = job(cfg, loss=loss, reference_on=ref_on)
        learner = make_learner(lcfg, path, pad_id, with_ref=ref_on == "learner", timed=True)
        batch = make_batch(pool[: cfg.batch.prompts_per_step], ref_on)

        def once():
            m = learner.step(batch)
            return {"step": m["train_time_s"], **{p: learner.timings.get(p, 0.0) for p in PHASES}}

        r = summarize(measure(once, args.repeats, args.warmup))
        out[name] = r
        print(f"  {name:<28} step {fmt(r['step'], 4)} s: "
              + ", ".join(f"{p} {r[p]['median'] * 1e3:.1f}" for p in PHASES) + " (ms, median)", flush=True)
    return out


# --- roles: one request and one step per thread count (was benchmarks/role_costs.py) ---------------

def bench_roles(args, gen, cfg, path, pad_id, pool) -> list[dict]:
    learner = make_learner(cfg, path, pad_id, with_ref=False)
    batch = make_batch(pool[: cfg.batch.prompts_per_step], "generator")
    rows = []
    print(f"  {'threads':>7} {'gen request s (min/med)':>26} {'learner step s (min/med)':>26}")
    for threads in args.role_threads:
        torch.set_num_threads(threads)
        for _ in range(args.warmup):
            gen.generate(cfg.batch.prompts_per_step), learner.step(batch)
        g, s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            gen.generate(cfg.batch.prompts_per_step)  # sampling + reward + reference log-probs
            g.append(time.perf_counter() - t)
            t = time.perf_counter()
            learner.step(batch)
            s.append(time.perf_counter() - t)
        gs, ss = spread(g), spread(s)
        rows.append({"threads": threads, "gen_request_s": gs, "learner_step_s": ss})
        print(f"  {threads:>7} {gs['min']:12.3f} / {gs['median']:.3f} {ss['min']:15.3f} / {ss['median']:.3f}",
              flush=True)
    torch.set_num_threads(args.threads)
    return rows


# --- plot ---------------------------------------------------------------------------------------------

def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def log_ticks(ax, xs, label):
        ax.set_xscale("log")
        ax.set_xticks(xs, [label(x) for x in xs])
        ax.minorticks_off()

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (a, b), (c, d) = axes

    def line(ax, rows, x, key, label, sub=None):
        """Medians of ``row[key]`` (or ``row[key][sub]``) against ``row[x]``, min-max as error bars."""
        sp = [r[key][sub] if sub else r[key] for r in rows]
        med = [s["median"] for s in sp]
        err = [[m - s["min"] for m, s in zip(med, sp)], [s["max"] - m for m, s in zip(med, sp)]]
        ax.errorbar([r[x] for r in rows], med, yerr=err, marker="o", ms=4, capsize=2, label=label)

    gen = res.get("generation")
    if gen:
        line(a, gen["engine"], "sequences", "tokens_per_s", "HFEngine.generate (sampling only)")
        for (name, g), mk in zip(gen["generator"].items(), ("s", "D")):
            what = "+ reward + ref log-probs" if name == "with_reference" else "+ reward, no ref"
            a.errorbar([g["sequences"]], [g["tokens_per_s"]["median"]], fmt=mk, ms=7,
                       label=f"Generator.generate, P={g['prompts']} ({what})")
        log_ticks(a, [r["sequences"] for r in gen["engine"]], str)
        a.legend(fontsize=7)
    a.set(title="(a) generation, K=8 per prompt", xlabel="batch B*K (sequences)",
          ylabel="generated tokens/s (EOS incl.)")

    lrn = res.get("learner")
    if lrn:
        for name, rows in lrn.items():
            line(b, rows, "sequences", "tokens_per_s", name)
        log_ticks(b, [r["sequences"] for r in next(iter(lrn.values()))], str)
        b.legend(fontsize=7)
    b.set(title="(b) Learner.step", xlabel="batch B*K (sequences)",
          ylabel="learner tokens/s (prompt+completion)")

    sync = res.get("weight_sync")
    if sync:
        last = sync[-1]
        for key, label in (("snapshot", "Learner.weights() snapshot"),
                           ("inline_load", "HFEngine.load_weights (inline/thread)"),
                           ("process_roundtrip", "process: queue put -> child load -> ack")):
            line(c, sync, "params", key,
                 f"{label}; {last[key]['mb_per_s']['median']:.0f} MB/s at {last['params'] / 1e6:.0f}M", sub="s")
        log_ticks(c, [r["params"] for r in sync], lambda n: f"{n / 1e6:.1f}M")
        c.set_yscale("log")
        c.legend(fontsize=7)
    c.set(title="(c) weight sync per publish (fp32, CPU)", xlabel="parameters", ylabel="seconds")

    ph = res.get("learner_phases")
    if ph:
        names = list(ph)
        left = [0.0] * len(names)
        for p in PHASES:
            vals = [ph[n][p]["median"] * 1e3 for n in names]
            d.barh(names, vals, left=left, label=p.replace("_", " "))
            left = [x + v for x, v in zip(left, vals)]
        d.invert_yaxis()
        d.tick_params(axis="y", labelsize=7)
        d.legend(fontsize=7, ncol=2)
    d.set(title="(d) one learner step, 16 prompts x 8 (median)", xlabel="milliseconds")

    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"asyncrl throughput, {res['threads']} torch threads, {res['machine']['cpu_cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-throughput")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; --quick 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before each measurement")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=cores, help="torch threads (default: all cores)")
    ap.add_argument("--prompts", default=None, help="prompt counts P for (a), (b) (default 1,2,4,8,16,32,64)")
    ap.add_argument("--losses", default="tb,grpo", help="losses for (b), (d)")
    ap.add_argument("--sizes", default=None, help=f"model sizes for (c), of {','.join(SIZES)} (default all)")
    ap.add_argument("--parts", default="gen,learner,sync,phases,roles",
                    help="what to run: gen (a), learner (b), sync (c), phases (d), roles")
    ap.add_argument("--role-threads", default="1,2", help="torch thread counts for the roles table")
    ap.add_argument("--quick", action="store_true", help="smoke run: P 1,4,16, sizes 1M,10M, 1 repeat")
    args = ap.parse_args()
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    args.prompts = ints(args.prompts or ("1,4,16" if args.quick else "1,2,4,8,16,32,64"))
    args.sizes = (args.sizes or ("1M,10M" if args.quick else ",".join(SIZES))).split(",")
    args.losses = args.losses.split(",")
    args.role_threads = ints(args.role_threads)
    parts = set(args.parts.split(","))
    unknown = (parts - {"gen", "learner", "sync", "phases", "roles"}) | (set(args.sizes) - set(SIZES))
    if unknown:
        ap.error(f"unknown parts/sizes: {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from asyncrl.config import Config
    from asyncrl.policy import resolve_model_path
    from asyncrl.runtime.worker import WorkerSpec, build_generator

    cfg = Config()  # the default job: arithmetic, 16 prompts x 8, tb, reference_on generator
    path = resolve_model_path(None, cfg.task.name)
    res: dict = {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                 "quick": args.quick, "samples_per_prompt": K, "prompts_per_step": cfg.batch.prompts_per_step,
                 "max_new_tokens": cfg.sampling.max_new_tokens}
    print(f"{args.threads} torch threads, {args.repeats} repeats after {args.warmup} warm-up; "
          f"median (min-max)", flush=True)
    gen = pool = None
    if parts & {"gen", "learner", "phases", "roles"}:
        gen = build_generator(WorkerSpec.of(cfg, path))  # reference_on generator: samples carry ref log-probs
        pad_id = gen.tokenizer.pad_token_id
        need = max([*args.prompts, cfg.batch.prompts_per_step]) if parts & {"learner"} else cfg.batch.prompts_per_step
        pool = []
        while len(pool) < need:  # real generated groups, reused for every learner batch
            pool += gen.generate(min(64, need - len(pool)))[0]
    if "gen" in parts:
        print("(a) generation", flush=True)
        gen_noref = build_generator(WorkerSpec.of(job(cfg, reference_on="learner"), path))
        res["generation"] = bench_generation(args, gen, gen_noref, cfg)
    if "learner" in parts:
        print("(b) learner step (tokens = non-pad prompt+completion, as learner_tokens_per_s)", flush=True)
        res["learner"] = bench_learner(args, cfg, path, pad_id, pool)
    if "sync" in parts:
        print("(c) weight sync", flush=True)
        res["weight_sync"] = bench_sync(args)
    if "phases" in parts:
        print("(d) learner step phases (Learner.timings)", flush=True)
        res["learner_phases"] = bench_phases(args, cfg, path, pad_id, pool)
    if "roles" in parts:
        print("roles: one request / one learner step of the default job per thread count", flush=True)
        res["roles"] = bench_roles(args, gen, cfg, path, pad_id, pool)
    write_json(out / "results.json", res)
    print(f"wrote {out / 'results.json'}")
    if parts - {"roles"}:
        plot(res, out / "throughput.png")
        print(f"wrote {out / 'throughput.png'}")


if __name__ == "__main__":
    main()
