"""Render the benchmark rows as BENCHMARKS.md: one table per section and a closing note of ratios vs targets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from triangle_nb import _io
from triangle_nb.results import current_schema

SECTIONS = [
    ("steering", "1. Eq. 7 steering (components sharing one base)", ["steering", "cfg", "naive"]),
    ("logprobs", "2. `logprobs` scoring", ["logprobs"]),
    ("generate", "3. `generate`: batched vs sequential calls", ["generate"]),
    ("load", "4. Model load", ["load"]),
    ("arrows", "5. Arrows end to end (default settings)", ["arrows"]),
    ("memory", "6. Peak memory", ["memory"]),
    ("training", "7. Training memory (allocator, activation checkpointing)", ["training"]),
    ("engine", "8. Training engine (transformers.Trainer vs the hand-written loop)", ["engine"]),
    ("guided", "9. Reward-guided decoding (`tnb.reward_guided`, token-level Eq. 2): effect and cost", ["guided"]),
    ("peer", "10. Side by side with language-model-arithmetic (its own venv, same formula, model, inputs, tokens)",
     ["peer"]),
]
FIDELITY = ("fidelity", "12. Fidelity checks (slow end-to-end checks run here, not in `pytest tests`)", ["fidelity"])

# Why a missed target is missed, and what would fix it (from profiling; see the closing note).
WHY_MISSED: dict[str, str] = {
    "steering": (
        "LoRA components now run through `triangle_nb/fused_lora.py`: per LoRA layer the batch's adapters are stacked "
        "once (A [S, in, r], B [S, r, out], scaling folded in) and each layer does one bmm and one in-place baddbmm "
        "on the rows' contiguous blocks, instead of PEFT's per-adapter gather / lora_A / lora_B / scatter and its "
        "hooks on all 210 LoRA layers per call. A 6-row decoding step went from 334-354 ms (PEFT) to 213-234 ms, "
        "against ~200 ms for 6 rows on the base alone: what is left is the LoRA matmuls themselves (they read 39 MB of "
        "adapter weights per step, memory-bound) and ~5-8 ms of dispatch. So LoRA components now cost what prompt "
        "components cost, and what keeps both under 0.8x on one CPU thread is the number of rows: a 3-component "
        "composition prefills 3x the prompt tokens (compute-bound: ~4 ms per position after a ~120 ms fixed cost per "
        "forward) and decodes 6 rows per step instead of 2. The step-cost model (120 ms + 4 ms per position) predicts "
        "0.77x for 2 prompts x 24 tokens; the ratio rises with longer generations (the prefill share falls) and with "
        "more free cores or a GPU, where 6 rows cost what 2 do. What would reach it here: a shared prefill where "
        "components share a prefix (not the case for different system prompts: z comes first), or speculative "
        "decoding with the base as draft."
    ),
    "logprobs": (
        "Pairs that share a prompt now encode it once (scoring.py: the chunk's common stem once, each prompt's tail "
        "once, responses on copies of its KV cache, the LM head only at response positions). Costs measured on one "
        "thread: ~120 ms fixed per forward, ~3.8 ms per position through the body, ~1.5 ms per position for the LM head "
        "(V = 49,152). For 8 prompts x 4 responses the shared path feeds ~700 positions instead of ~1,900, and ~540 of "
        "them are response tokens that must be fed; with no padding and 3 forwards the bound is ~3.2x, and we run 6 "
        "forwards with ~30 padded positions, hence just under 3x. What would add the rest: a chunked LM head (4,096-"
        "token blocks measured 0.31 -> 0.24 s for 282 positions), or longer shared prompts (few-shot z), where the "
        "saving grows with the prompt's share of the tokens."
    ),
    "generate": (
        "Decoding steps are memory-bound (each reads all 540 MB of fp32 weights), so more rows per step should be "
        "nearly free; a miss means the prefill (compute-bound, proportional to the rows) or CPU contention from the "
        "shared machine dominated this run."
    ),
}


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def _target(r: dict[str, Any]) -> str:
    if r.get("target") is None:
        return "–"
    return f"≥ {r['target']:+g} {'✅' if r['met'] else '❌'}" if _is_gain(r) else f"≥ {r['target']:g}× {'✅' if r['met'] else '❌'}"


def _is_gain(r: dict[str, Any]) -> bool:
    """A row whose ratio column holds a gain (after − before of an objective), not a speed ratio."""
    return r.get("unit") == "VADER"


def _ratio(r: dict[str, Any]) -> str:
    return f"**{r['ratio']:+.3f}**" if _is_gain(r) else f"**{_fmt(r['ratio'])}×**"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| case | ours | baseline | ours | baseline | ours / baseline | target | peak RSS ours / baseline (MiB) | notes |",
           "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | – | – | – | – | – | – | – | failed: {r['error']} |")
            continue
        unit = r["unit"]
        out.append(f"| {r['case']} | {r['ours']} | {r['baseline']} | {_fmt(r['ours_value'])} {unit} | "
                   f"{_fmt(r['base_value'])} {unit} | {_ratio(r)} | {_target(r)} | "
                   f"{_fmt(r.get('rss_ours_mb'), 0)} / {_fmt(r.get('rss_base_mb'), 0)} | {r.get('note', '')} |")
    return out


def _arrow_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| arrow | wall time | objective: before → after | gain per minute | peak RSS (MiB) | notes |",
           "|---|---:|---|---:|---:|---|"]
    for r in rows:
        if "seconds" not in r:
            out.append(f"| {r['case']} | – | – | – | – | {r.get('note') or r.get('error', '')} |")
            continue
        out.append(f"| {r['case']} | {r['seconds']:.0f} s | {r['objective']}: {r['before']:.3f} → {r['after']:.3f} | "
                   f"{r['ours_value']:.3f} | {_fmt(r.get('rss_ours_mb'), 0)} | {r['note']} |")
    return out


def _fidelity(result: dict[str, Any]) -> list[str]:
    """Section 12: one line per check of benchmarks/fidelity.py, passed or failed, with what it checked."""
    rows = result["cases"].get("fidelity", {}).get("rows", [])
    out = [f"## {FIDELITY[1]}", "", ("Each check raises on failure; `python -m benchmarks.fidelity` runs them alone "
                                      "(exit status 1 if one fails)."), ""]
    if not rows:
        return out + ["Not run (excluded with `--only`).", ""]
    out += ["| check | result | wall time | what it checked |", "|---|---|---:|---|"]
    for r in rows:
        verdict = "–" if "error" in r or r.get("passed") is None else ("passed ✅" if r["passed"] else "**failed** ❌")
        out.append(f"| {r['case']} | {verdict} | {_seconds(r.get('seconds'))} | {r.get('note') or r.get('error', '')} |")
    return out + [""]


def _seconds(s: float | None) -> str:
    return "–" if s is None else f"{s:,.0f} s"


def _header(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    mode = ", ".join(k for k in ("quick", "tiny", "inprocess") if result.get(k)) or "full"
    return [
        "# Benchmarks",
        "",
        f"Produced by `{result['command']}` on {result['started']} ({mode} run). Regenerate with "
        "`.venv/bin/python -m benchmarks.run` (`--quick` for a smoke run)."
        + "".join(f" The `{n}` case comes from the run started {t} (`--reuse`)." for n, t in result.get("reused", {}).items()),
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), torch {m['torch']} with {m['threads']} thread(s), transformers "
        f"{m['transformers']}, Python {m['python']}, "
        + (f"bf16 on {m['gpu']}" if m.get("device", "cpu") != "cpu" else "fp32 on CPU") + f". Load average at start {m['load_average']}, at the end "
        f"{result.get('finished_load_average')}.",
        "",
        *([f"**Note.** {result['note']}", ""] if result.get("note") else []),
        "**How to read it.** Every ratio is *ours / baseline as throughput*: the baseline's time divided by ours for "
        "the same work, so > 1 means ours is faster. Ours and its baseline run in the same process, alternating "
        "round-robin after a warm-up; the numbers are medians. The machine is shared with other engineers' jobs, so "
        "absolute numbers are noisy; the ratios are what to read. Generation runs with the end-of-turn stop switched "
        "off so every contender produces exactly the same number of tokens. Each case runs in a fresh process; "
        "peak RSS is the resident set sampled during that contender's runs (process-wide, the loaded model "
        "included).",
        "",
    ]


def _gpu(result: dict[str, Any]) -> list[str]:
    if result["machine"].get("device", "cpu") != "cpu":
        return []
    return ["## 11. GPU", "",
            "Every number above is CPU fp32. GPU runs: `python -m benchmarks.run --device cuda` (bf16) writes the same "
            "tables; `python -m benchmarks.gpu_check --device cuda` re-checks the identities and every arrow on CUDA. "
            "An H100 run of both is summarised in the closing note of the issue tracker and in README.md.",
            ""]


def _closing(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Closing note: every ratio against its target", ""]
    for r in rows:
        if "error" in r or r.get("target") is None:
            continue
        verdict = "met" if r["met"] else "**missed**"
        out.append(f"- {r['section']} / {r['case']}: {_ratio(r).strip('*')} vs target {_target(r)[:-2]} — {verdict}")
    for r in rows:
        if r.get("section") == "load" and "error" not in r:
            out.append(f"- load: {r['note']}")
    missed = {r["section"] for r in rows if r.get("met") is False}
    for section in sorted(missed):
        if section in WHY_MISSED:
            out += ["", f"**Why {section} misses, and what would fix it.** {WHY_MISSED[section]}"]
    errors = [r for r in rows if "error" in r]
    if errors:
        out += ["", "Failed cases: " + "; ".join(f"{r['case']} ({r['error']})" for r in errors)]
    return out + [""]


def render(result: dict[str, Any]) -> str:
    """BENCHMARKS.md text from a suite result (`benchmarks.run.main`)."""
    lines = _header(result)
    all_rows: list[dict[str, Any]] = []
    for key, title, cases in SECTIONS:
        rows = [r for c in cases for r in result["cases"].get(c, {}).get("rows", [])]
        all_rows += rows
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["Not run (excluded with `--only`).", ""]
            continue
        lines += _arrow_table(rows) if key == "arrows" else _table(rows)
        rss = [f"{c}: {_fmt(result['cases'][c].get('max_rss_mb'), 0)} MiB" for c in cases if c in result["cases"]]
        lines += ["", f"Peak RSS of the whole case process (ru_maxrss): {', '.join(rss)}.", ""]
    failed = [r for r in result["cases"].get("fidelity", {}).get("rows", []) if r.get("passed") is False]
    closing = _closing(all_rows + [{"case": r["case"], "error": r["note"]} for r in failed])
    return "\n".join(lines + _gpu(result) + _fidelity(result) + baked() + hypernetwork() + closing)


EFFECTS = ("reward_heldout", "kl_heldout", "probe_accuracy_heldout", "spearman_heldout", "nll_gap_heldout_closed")


def baked() -> list[str]:
    """Section 13, read from the shipped bakes themselves (never stale): what each bake ran, how long it took live
    and its held-out effect."""
    from triangle_nb import bake

    out = ["## 13. Baked runs (`python -m triangle_nb.bake`; served at once when a call matches exactly)", "",
           "| bake | notebook / panel | live seconds (1 thread) | held-out effect |", "|---|---|---:|---|"]
    for e in sorted(bake.entries(), key=lambda e: (e["source"], e["created"])):
        folder = Path(e["folder"])
        meta = _io.read_json(folder / "result.json") if (folder / "result.json").is_file() else {}
        metrics = current_schema(dict(meta.get("metrics", {})), dict(meta.get("info", {})))[0]  # saved before: renamed
        shown = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()
                          if isinstance(v, float) and k.startswith(EFFECTS))
        out.append(f"| `{folder.name}` | {e['source']} | {e['seconds']:.0f} | {shown or '(adapter only)'} |")
    return out + ["", "Seconds were measured while other jobs shared the 2 cores; alone they are roughly half.", ""]


def hypernetwork() -> list[str]:
    """Section 14, from benchmarks/hypernetwork.json (`python -m benchmarks.hypernetwork`): the prompt ⇒ LoRA
    network's share of the held-out KL gap closed, next to context distillation at its defaults."""
    from .hypernetwork import OUT, curve_report, report

    if not OUT.is_file():
        return []
    return ["## 15. Prompt ⇒ LoRA in one forward (`method=\"hypernetwork\"`, survey §4.2) vs context distillation", "",
            "Per prompt: the held-out KL[π0(·|x,z) ‖ π(·|x)] per token before, and the share of it each adapter closes, "
            "on the same 8 held-out teacher samples (inputs neither method trained on); distillation at its defaults "
            "on 12 inputs. *ratio* = hypernetwork ÷ distillation. Held-out prompts are personas, tones, formats, topics "
            "and a fact in a wording no training prompt uses. `python -m benchmarks.hypernetwork distil|hyper|report`.",
            "", report(), "",
            "Against the number of training prompts (every k-th training prompt, `python -m benchmarks.hypernetwork "
            "curve k [steps]`), held-out prompts only; *passes* = steps × 2 prompts ÷ training prompts:", "",
            curve_report(), ""]
