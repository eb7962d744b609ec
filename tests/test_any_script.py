"""``asyncrl.train`` from any kind of script: a file without an ``if __name__ == "__main__":``
guard, standard input and ``python -c`` (a notebook is a ``-c``-like main module: no file, no
spec). Each runs in a fresh interpreter, as a user would, with tiny settings on the built-in
arithmetic model. Before workers stopped re-running the main module, the file failed with
"An attempt has been made to start a new process before the current process has finished its
bootstrapping phase" and standard input with FileNotFoundError for ``<stdin>``."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SRC = str(Path(__file__).resolve().parent.parent / "src")

# The README's snippet, shrunk: a reward function defined in the main module (so it must travel
# by value), process workers (max_lag 1 -> asynchronous), no main guard.
SCRIPT = textwrap.dedent("""
    import json, sys
    from asyncrl import Config, train
    from asyncrl.policy import BUILTIN_MODELS

    def accuracy(completions, answer, **kwargs):
        return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]

    rows = [{"question": f"{a}+{b}=", "answer": a + b} for a, b in [(1, 2), (12, 3), (40, 9), (7, 7)]]
    summary = train(Config(model=str(BUILTIN_MODELS["arithmetic"]), prompt_field="question", steps=2, prompts_per_step=2, samples_per_prompt=2,
                           max_new_tokens=3, eval_every=0, warmup_steps=0, max_lag=1, workers="process",
                           output_dir=sys.argv[1] if len(sys.argv) > 1 else OUT, **EXTRA),
                    reward_funcs=[accuracy], train_dataset=rows)
    print("STEPS", summary["steps"])
""")


def _code(out: Path, **extra) -> str:
    return f"OUT = {str(out)!r}\nEXTRA = {extra!r}\n" + SCRIPT


def _run(args: list[str], tmp_path: Path, stdin: str | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=timeout)


def _check(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STEPS 2" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_a_script_without_a_main_guard(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "train_me.py").write_text(_code(out))
    _check(_run(["train_me.py"], tmp_path), out)


def test_standard_input(tmp_path):
    out = tmp_path / "run"
    _check(_run(["-"], tmp_path, stdin=_code(out)), out)


def test_python_dash_c(tmp_path):
    out = tmp_path / "run"
    _check(_run(["-c", _code(out)], tmp_path), out)


def test_a_script_run_as_a_module_without_a_main_guard(tmp_path):
    """``python -m pkg.mod``: spawn would re-import it by its module name (``__spec__``)."""
    out = tmp_path / "run"
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "train_me.py").write_text(_code(out))
    env_path = [str(tmp_path)]
    proc = subprocess.run([sys.executable, "-m", "mypkg.train_me"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([SRC, *env_path])}, timeout=240)
    _check(proc, out)


def test_ray_runtime_from_standard_input(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    code = _code(out, runtime="ray", generator_num_cpus=1).replace(', workers="process"', "")
    _check(_run(["-"], tmp_path, stdin=code, timeout=400), out)
