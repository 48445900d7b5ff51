"""The prompt ⇒ LoRA hypernetwork against the method it replaces (issue 27): on system prompts it never saw, the
share of the held-out KL gap KL[π0(·|x,z) ‖ π0(·|x)] (Eq. 9, per token) its adapter closes, next to the share
context distillation closes at its defaults on the same prompt and the same held-out teacher samples, and the
seconds each takes. Also on training prompts (how well it fits).

    .venv/bin/python -m benchmarks.hypernetwork distil   # distillation on every prompt (~2 min each on one core)
    .venv/bin/python -m benchmarks.hypernetwork hyper    # the shipped network on every prompt (seconds each)
    .venv/bin/python -m benchmarks.hypernetwork curve 4  # H trained on every 4th training prompt (64), same passes
    .venv/bin/python -m benchmarks.hypernetwork curve 1 101  # all 254 prompts, 101 steps (the 64-prompt run's steps)
    .venv/bin/python -m benchmarks.hypernetwork report   # the table (markdown), from benchmarks/hypernetwork.json

The curve (issue 27's fallback): H retrained on every k-th training prompt (254/k prompts) for 400/k steps — the
same ~3.15 passes over its prompts as the shipped network — and measured like `hyper` on the held-out prompts only.

Rows are appended to benchmarks/hypernetwork.json as they finish (a stopped run resumes where it was).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "hypernetwork.json"
N_TRAIN_INPUTS = 12  # inputs a user gives distillation (its defaults hold none of them out: eval_inputs are given)
N_EVAL = 8  # held-out inputs: one teacher sample each, the same pairs for both methods


def prompts() -> list[tuple[str, str]]:
    """(split, prompt): the 10 held-out prompts, then 4 training prompts spread over the families."""
    from triangle_nb import _prompt_family as family

    train = family.train_prompts()
    picks = [train[i] for i in np.linspace(0, len(train) - 1, 4).round().astype(int)]
    return [("heldout", z) for z in family.heldout_prompts()] + [("train", z) for z in picks]


def inputs() -> tuple[list[str], list[str]]:
    from triangle_nb import _prompt_family as family

    rng = np.random.default_rng(27)
    pool = list(family.TRAIN_INPUTS)
    return [pool[i] for i in rng.choice(len(pool), N_TRAIN_INPUTS, replace=False)], list(family.HELDOUT_INPUTS[:N_EVAL])


def _done() -> list[dict[str, Any]]:
    return json.loads(OUT.read_text()) if OUT.is_file() else []


def _append(row: dict[str, Any]) -> None:
    rows = _done() + [row]
    OUT.write_text(json.dumps(rows, indent=1))


def _measure(pi0: Any, method: str, split: str, z: str, row: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """One prompt: its adapter's held-out share closed (a live run, never a baked one), appended as a row (with the
    fields of `row`)."""
    import triangle_nb as tnb
    from triangle_nb.bake import forced_live

    xs, held = inputs()
    t0 = time.perf_counter()
    with forced_live():
        res = tnb.prompt_to_update(pi0, z, xs, eval_inputs=held, **kwargs)
    seconds = time.perf_counter() - t0
    m = res.metrics
    _append({"method": method, "split": split, "prompt": z, "kl_before": m["kl_heldout_before"],
             "kl_after": m["kl_heldout_after"], "closed": m["kl_heldout_closed"], "seconds": seconds,
             "adapter_seconds": m.get("adapter_seconds", m.get("seconds")), **(row or {})})
    if res.policy is not None and res.policy.adapter:
        pi0.backbone.remove_adapter(res.policy.adapter)
    print(method, split, f"{m['kl_heldout_closed']:.3f}", f"{seconds:.0f}s", z, flush=True)


def _policy() -> Any:
    import torch

    import triangle_nb as tnb

    torch.set_num_threads(1)
    return tnb.load_policy()


def run(method: str) -> None:
    pi0 = _policy()
    done = {(r["method"], r["prompt"]) for r in _done()}
    for split, z in prompts():
        if (method, z) not in done:
            _measure(pi0, method, split, z, **({"method": "hypernetwork"} if method == "hyper" else {}))


def curve(every: int, steps: int | None = None) -> None:
    """Train H on every `every`-th training prompt for `steps` (default: the shipped network's passes over its
    prompts) and measure it on the held-out prompts (method 'hyper_<prompts>_<steps>' in hypernetwork.json)."""
    import triangle_nb as tnb
    from triangle_nb import _prompt_family as family
    from triangle_nb.bake import forced_live
    from triangle_nb.hypernetwork import HyperConfig

    pi0 = _policy()
    zs = list(family.train_prompts())[::every]
    steps = steps or round(HyperConfig.steps * len(zs) / len(family.train_prompts()))
    t0 = time.perf_counter()
    with forced_live():
        net = tnb.train_hypernetwork(pi0, zs, list(family.TRAIN_INPUTS), steps=steps).network
    trained = {"train_seconds": time.perf_counter() - t0}
    for split, z in prompts():
        if split == "heldout":
            _measure(pi0, f"hyper_{len(zs)}_{steps}", split, z, trained, method="hypernetwork", network=net)


def _curve_point(method: str) -> tuple[int, int] | None:
    """(training prompts, steps) of a curve row's method; the shipped network's own rows are 'hyper'."""
    from triangle_nb import _prompt_family as family
    from triangle_nb.hypernetwork import HyperConfig

    if method == "hyper":
        return len(family.train_prompts()), HyperConfig.steps
    if not method.startswith("hyper_"):
        return None
    n, steps = method.split("_")[1:]
    return int(n), int(steps)


def curve_report() -> str:
    """Held-out share closed against the number of training prompts and steps, with distillation's share."""
    held = {z for split, z in prompts() if split == "heldout"}
    rows = [r for r in _done() if r["prompt"] in held]
    distil = np.mean([r["closed"] for r in rows if r["method"] == "distil"])
    points: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        if (point := _curve_point(r["method"])) is not None:
            points.setdefault(point, []).append(r["closed"])
    lines = ["| training prompts | steps | held-out KL gap closed | / distillation's |", "|---:|---:|---:|---:|"]
    for (n, steps), closed in sorted(points.items()):
        lines.append(f"| {n} | {steps} ({steps * 2 / n:.2f} passes) | {np.mean(closed):.1%} (n = {len(closed)}) | "
                     f"{np.mean(closed) / distil:.2f} |")
    return "\n".join(lines)


def report() -> str:
    """The markdown table: per prompt, the share closed by each method, and the means per split."""
    rows = _done()
    by = {(r["method"], r["prompt"]): r for r in rows}
    lines = ["| split | prompt | KL before | distillation closed | hypernetwork closed | ratio | distil s | hyper adapter s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    summary: dict[str, list[tuple[float, float]]] = {"heldout": [], "train": []}
    for split, z in prompts():
        d, h = by.get(("distil", z)), by.get(("hyper", z))
        if d is None or h is None:
            continue
        if d["closed"] is None or h["closed"] is None:  # no gap to close on this prompt
            continue
        summary[split].append((d["closed"], h["closed"]))
        ratio = f"{h['closed'] / d['closed']:.2f}" if d["closed"] > 0 else "—"
        lines.append(f"| {split} | {z[:60]} | {d['kl_before']:.3f} | {d['closed']:.1%} | {h['closed']:.1%} | "
                     f"{ratio} | {d['seconds']:.0f} | {h['adapter_seconds']:.2f} |")
    for split, pairs in summary.items():
        if pairs:
            d, h = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
            lines.append(f"| **{split} mean (n = {len(pairs)})** | | | **{d:.1%}** | **{h:.1%}** | **{h / d:.2f}** | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "report"
    if what == "report":
        print(report())
        print()
        print(curve_report())
    elif what == "curve":
        curve(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        run(what)
