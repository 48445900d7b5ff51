"""Fidelity checks: the slow end-to-end checks that left `pytest tests` to keep it within CI's budget (issue 30).

Each check is a function that raises AssertionError on failure and returns one line saying what it checked (the
numbers it saw). They are the same checks, with the same assertions, as the tests they came from:

- `binder_recipe` (was tests/test_binder.py): a fresh venv built from binder/requirements.txt and binder/postBuild,
  the tour and the Voilà app executed in it through binder/start, within Binder's memory, mimalloc preloaded;
- `dpo_raises_heldout_sentiment` (was tests/test_reward_to_update.py): 10 DPO steps on the real model raise the
  held-out sentiment (best-of-8 > 1 stayed in the tests: it needs no training);
- `persona_distillation_closes_heldout_gap` (was tests/test_prompt_to_update.py): 8 KL-distillation steps of a
  pirate persona on the real model close a clear share of the held-out NLL gap;
- `soft_prompt_closes_heldout_kl` (was tests/test_update_to_prompt.py): a soft prompt trained 10 steps on the real
  model moves π0 towards the pirate-prompted π0 on held-out questions, and generates.

    .venv/bin/python -m benchmarks.fidelity                      # every check; exit status 1 if one fails
    .venv/bin/python -m benchmarks.fidelity binder_recipe        # some of them
    .venv/bin/python -m benchmarks.run --only fidelity           # the same, as section 12 of BENCHMARKS.md
"""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from triangle_nb.bake import forced_live

ROOT = Path(__file__).resolve().parent.parent
BINDER_RAM_MIB = 2048  # mybinder.org gives 1-2 GB

CHECKS: dict[str, Callable[..., str]] = {}


def check(fn: Callable[..., str]) -> Callable[..., str]:
    """Register a fidelity check under its function name."""
    CHECKS[fn.__name__] = fn
    return fn


@check
def binder_recipe() -> str:
    """Both Binder links in a fresh venv (binder/check.sh, no Docker): the tour executed, the app rendered by Voilà."""
    out = subprocess.run(["bash", "binder/check.sh", "notebooks/00_tour.ipynb", "notebooks/app.ipynb"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800, check=False)
    log = out.stdout + out.stderr
    report = re.search(r"binder check: exit (\d+), (\d+) s wall, peak memory (\d+) MiB", log)
    assert out.returncode == 0 and report, log[-4000:]
    assert int(report.group(3)) < BINDER_RAM_MIB, report.group(0)
    assert "kernel malloc: mimalloc\n" in log, log[-2000:]  # binder/start preloaded it into the notebook kernel
    voila = re.search(r"voila check: ok, .* kernel RSS (\d+) MiB .*kernel malloc: (\w+)", log)
    assert voila, log[-3000:]  # the page rendered, with widget views and no error output
    assert int(voila.group(1)) < BINDER_RAM_MIB and voila.group(2) == "mimalloc", voila.group(0)
    return f"{report.group(0)}; {voila.group(0)} (both < {BINDER_RAM_MIB} MiB, mimalloc preloaded)"


@check
def dpo_raises_heldout_sentiment(pi0: Any) -> str:
    """DPO on the real model, 10 steps: step 1's loss is ln 2 and the held-out sentiment rises at a finite KL."""
    import triangle_nb as tnb
    from triangle_nb.arrows.reward_to_update import EXAMPLE_INPUTS, reward_to_update

    res = reward_to_update(pi0, tnb.rewards.Sentiment(), list(EXAMPLE_INPUTS), method="dpo", steps=10, beta=0.1,
                           learning_rate=1e-3, max_new_tokens=16, eval_samples=4, eval_train=0)
    m, first = res.metrics, float(res.history["loss"].iloc[0])
    assert math.isclose(first, math.log(2), abs_tol=1e-4), first  # π = π_ref at step 1
    assert m["reward_heldout_after"] > m["reward_heldout_before"] + 0.05, m
    assert 0 < m["kl_heldout_after"] < 50, m
    return (f"10 DPO steps: loss at step 1 {first:.5f} = ln 2; held-out sentiment {m['reward_heldout_before']:+.3f} "
            f"-> {m['reward_heldout_after']:+.3f} (> +0.05), KL {m['kl_heldout_after']:.2f} nats (0 < KL < 50)")


@check
def persona_distillation_closes_heldout_gap(pi0: Any) -> str:
    """Held-out: a short KL distillation of a pirate persona (8 steps) closes a clear share of the NLL gap."""
    from triangle_nb.arrows.prompt_to_update import distillation_task, prompt_to_update

    task = distillation_task("persona")
    res = prompt_to_update(pi0, task.prompt, task.inputs[:10], steps=8, max_new_tokens=20, samples=2)
    m = res.metrics
    assert m["n_eval_pairs"] == 2 and res.info["split"] == "heldout" and m["prompt_tokens_saved"] > 10, m
    assert m["kl_heldout_after"] < 0.8 * m["kl_heldout_before"], m
    assert m["nll_gap_heldout_closed"] > 0.25, m
    return (f"8 KL steps on 8 inputs: held-out KL {m['kl_heldout_before']:.3f} -> {m['kl_heldout_after']:.3f} (< 0.8x), "
            f"NLL gap closed {m['nll_gap_heldout_closed']:.2f} (> 0.25) on {m['n_eval_pairs']} held-out pairs, "
            f"{m['prompt_tokens_saved']} prompt tokens saved per call")


@check
def soft_prompt_closes_heldout_kl(pi0: Any) -> str:
    """Held-out: a soft prompt trained against π* = π0 with a pirate prompt (10 steps) moves π0 towards it, and
    generates."""
    from triangle_nb.arrows.prompt_to_update import PIRATE, QUESTIONS
    from triangle_nb.arrows.update_to_prompt import update_to_prompt

    res = update_to_prompt(pi0.with_prompt(PIRATE), pi0, QUESTIONS[:10], method="soft", true_prompt=PIRATE,
                           steps=10, max_new_tokens=20, holdout=0.3)
    m = res.metrics
    assert m["n_eval_pairs"] == 3 and m["kl_heldout_after"] < 0.8 * m["kl_heldout_before"], m
    out = pi0.with_prompt(res.prompt).generate(["Tell me about rain."], max_new_tokens=12)
    assert out[0].strip(), out
    return (f"10 soft-prompt steps: held-out KL to the pirate-prompted π0 {m['kl_heldout_before']:.3f} -> "
            f"{m['kl_heldout_after']:.3f} (< 0.8x) on {m['n_eval_pairs']} held-out pairs; it generates {out[0][:40]!r}")


def run_checks(names: list[str] | None = None, load: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Run the named checks (all by default), each on its own; one row per check: passed, seconds, note."""
    unknown = sorted(set(names or []) - CHECKS.keys())
    if unknown:
        raise SystemExit(f"unknown fidelity checks {unknown}; known: {', '.join(CHECKS)}")
    model: list[Any] = []
    rows = []
    for name in names or list(CHECKS):
        fn, t0 = CHECKS[name], time.perf_counter()
        try:
            with forced_live():  # a check measures a live run, never a baked one (triangle_nb.bake)
                if "pi0" in inspect.signature(fn).parameters:
                    model = model or [load() if load else _load_default()]  # loaded once, for the checks needing it
                    note = fn(model[0])
                else:
                    note = fn()
            passed = True
        except Exception as exc:  # noqa: BLE001  # one failed check must not hide the others
            traceback.print_exc()
            note, passed = f"FAILED: {type(exc).__name__}: {str(exc)[:600]}", False
        rows.append({"section": "fidelity", "case": name, "passed": passed,
                     "seconds": round(time.perf_counter() - t0, 1), "note": note})
        print(f"[fidelity] {name}: {'ok' if passed else 'FAILED'} in {rows[-1]['seconds']:.0f} s: {note}", flush=True)
    return rows


def _load_default() -> Any:
    import triangle_nb as tnb

    return tnb.load_policy()


def fidelity(env: Any) -> list[dict[str, Any]]:
    """The benchmark suite's section 12 (`benchmarks.run --only fidelity`): every check on the real model.

    A --tiny run (the test suite's smoke run) cannot run them: it lists them as not run, with the command."""
    if env.tiny:
        return [{"section": "fidelity", "case": name, "passed": None, "seconds": None,
                 "note": "not run in a --tiny run: `python -m benchmarks.run --only fidelity`"} for name in CHECKS]
    return run_checks(load=env.load)


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = run_checks(list(sys.argv[1:] if argv is None else argv) or None)
    failed = [r["case"] for r in rows if not r["passed"]]
    print(f"[fidelity] {len(rows) - len(failed)} of {len(rows)} passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
