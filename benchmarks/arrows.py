"""5. The arrows end to end with their default settings: wall time and the objective reached per minute.

Runs whichever arrow modules exist; a missing module (or a metric it does not report) becomes a note.
Each arrow runs in its own process with a time limit, on a small fixed set of inputs.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import time
from dataclasses import dataclass

from .cases import QUICK, Env, Row, row, run_child

INPUTS = [
    "Tell me about your day.", "What do you think of Mondays?", "Describe the weather today.",
    "How was the movie you saw?", "What is your opinion of homework?", "Tell me about your neighbour.",
    "How do you feel about the rain?", "Describe your last holiday.",
]
Z = "You are a cheerful assistant. Answer warmly, enthusiastically and positively."


@dataclass(frozen=True)
class Arrow:
    """How to run one arrow with default settings and read its objective from `result.metrics`."""

    module: str
    label: str
    objective: str  # what "gain" means
    code: str  # the body run in a child process; it binds `res`
    before: str
    after: str
    lower_is_better: bool = False


ARROWS = [
    Arrow("prompt_to_update", "context distillation (prompt → update), method='kl'", "held-out KL closed",
          f"res = tnb.prompt_to_update(pi0, tnb.Prompt(system={Z!r}), INPUTS)", "kl_heldout_before", "kl_heldout_after",
          lower_is_better=True),
    Arrow("reward_to_update", "DPO (reward → update), Sentiment", "held-out reward gain",
          "res = tnb.reward_to_update(pi0, tnb.rewards.Sentiment(), INPUTS)", "reward_heldout_before",
          "reward_heldout_after"),
    Arrow("reward_to_prompt", "prompt search (reward → prompt), Sentiment", "held-out reward gain",
          "res = tnb.reward_to_prompt(pi0, tnb.rewards.Sentiment(), INPUTS)", "reward_heldout_before", "reward_heldout_after"),
    Arrow("update_to_prompt", "prompt recovery (update → prompt), search", "held-out KL (Eq. 12) closed",
          f"star = tnb.prompt_to_update(pi0, tnb.Prompt(system={Z!r}), INPUTS, steps=10).policy\n"
          "t0 = time.perf_counter()\nres = tnb.update_to_prompt(star, pi0, INPUTS)", "kl_heldout_before", "kl_heldout_after",
          lower_is_better=True),
]

CHILD = """
import json, os, time
import triangle_nb as tnb
from benchmarks.timing import max_rss_mb
INPUTS = {inputs!r}
pi0 = tnb.load_policy(device=os.environ.get("TRIANGLE_NB_BENCH_DEVICE", "cpu"))
t0 = time.perf_counter()
{code}
seconds = time.perf_counter() - t0
metrics = {{k: v for k, v in res.metrics.items() if isinstance(v, (int, float, bool, str))}}
print("BENCH " + json.dumps({{"seconds": seconds, "metrics": metrics, "rss_mb": max_rss_mb()}}))
"""


def arrows(env: Env, timeout: float = 300) -> list[Row]:
    """Run each existing arrow once with its defaults (at most `timeout` s each, `env.arrows_budget` s in all)."""
    budget = env.arrows_budget
    if env.sizes == QUICK or env.tiny:
        return [_skip(a, "skipped in --quick / --tiny runs (trains on the real model for minutes)") for a in ARROWS]
    rows, start = [], time.perf_counter()
    for a in ARROWS:
        left = budget - (time.perf_counter() - start)
        if importlib.util.find_spec(f"triangle_nb.{a.module}") is None:
            rows.append(_skip(a, f"skipped: triangle_nb.{a.module} does not exist yet"))
        elif left < 60:
            rows.append(_skip(a, f"not run: the arrows' time budget (--arrows-budget {budget:.0f} s) was used up"))
        else:
            rows.append(_run(a, min(timeout, left)))
    return rows


def _run(a: Arrow, timeout: float) -> Row:
    try:
        out = run_child(CHILD.format(inputs=INPUTS, code=a.code), timeout=timeout)
    except Exception as exc:  # a timeout or a failing arrow: say so in the report
        what = f"did not finish within {timeout:.0f} s" if isinstance(exc, subprocess.TimeoutExpired) else \
            f"failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1][:200]}"
        return _skip(a, what + " (the machine was shared; see the load average above)")
    m, minutes = out["metrics"], out["seconds"] / 60
    if a.before not in m or a.after not in m:
        return _skip(a, f"metrics {a.before!r} / {a.after!r} not reported (has: {sorted(m)[:12]})")
    gain = (m[a.before] - m[a.after]) if a.lower_is_better else (m[a.after] - m[a.before])
    note = (f"{a.objective}: {m[a.before]:.3f} → {m[a.after]:.3f} in {out['seconds']:.0f} s, "
            f"{len(INPUTS)} inputs, default settings")
    r = row("arrows", a.label, ours=f"tnb.{a.module}", baseline="the arrow's own 'before'", unit="gain/min",
            ours_value=gain / max(minutes, 1e-9), base_value=math.nan, ratio=math.nan, note=note,
            rss_ours=out["rss_mb"])
    return r | {"seconds": round(out["seconds"], 1), "objective": a.objective, "before": m[a.before],
                "after": m[a.after], "gain": gain}


def _skip(a: Arrow, why: str) -> Row:
    return row("arrows", a.label, ours=f"tnb.{a.module}", baseline="–", unit="gain/min", ours_value=math.nan,
               base_value=math.nan, ratio=math.nan, note=why)

