"""The survey's open problems, measured on the embedded model (issue 28).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.open_problems                 # both parts, live, ~15 min
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.open_problems --part arm      # or lifelong; --script dev

1. GenARM (§3.2): a sentiment autoregressive reward model π_r trained on contrastive pairs (RLCD: a cheerful vs a
   gloomy system prompt on 24 training inputs, kept where VADER agrees), decoded as π0 + (1/β)·π_r, side by side on
   the 8 held-out neutral inputs of section 9 with π0, ARGS (`reward_guided(π0, Sentiment(), β=0.1, top_k=8)`: VADER
   itself as r), ARGS with π_r's sequence score as r (a model reward: k scored candidates per step), and best-of-N
   with the Bradley–Terry head trained on the same pairs. Mean VADER of the answers (greedy, ≤ 32 tokens, stop on) and
   seconds per generated token, one torch thread.
2. Lifelong internalisation (§4.2): a scripted conversation (`tnb.lifelong.SCRIPTS`: fictional facts in four early
   turns, five turns on other topics) in a `tnb.Conversation(window=W, every=k)`, then eight probes asked next:
   accuracy with (a) the window only, (b) the window + the internalised adapter, (c) the full history (the ceiling).

Every run is live (`tnb.set_live(True)`), unless `--baked`: then the training runs that match notebook 09's bakes
exactly (same call, same data) are served from them — the same adapters a live run makes (tests/test_provenance.py
reruns their first steps); decoding, timing and probing are always live. Writes JSON (--out), prints markdown rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import triangle_nb as tnb
from triangle_nb.autoregressive_reward import CHEERFUL, GLOOMY, HELDOUT_INPUTS, TRAIN_INPUTS
from triangle_nb.lifelong import SCRIPTS, Conversation, recall

ARM = {"steps": 30, "batch_size": 4, "learning_rate": 3e-3, "beta_r": 0.1, "lora_r": 4, "seed": 0}
BETAS = (1.0, 0.5, 0.25)
LIFELONG = {"window": 192, "every": 4, "reply_tokens": 32}
TOKENS = 32


def preference_data(pi0: tnb.Policy, sentiment: Any) -> Any:
    """RLCD pairs on the training inputs, kept where VADER scores chosen above rejected."""
    ds = tnb.contrastive_pairs(pi0, CHEERFUL, GLOOMY, list(TRAIN_INPUTS), max_new_tokens=TOKENS, seed=0)
    keep = sentiment(ds["prompt"], ds["chosen"]) > sentiment(ds["prompt"], ds["rejected"])
    return ds.select([i for i, k in enumerate(keep) if k])


def _decode(policy: Any, xs: list[str], sentiment: Any, **kw: Any) -> dict[str, Any]:
    """Greedy answers (best-of-N samples), mean VADER and seconds per generated token."""
    t0 = time.perf_counter()
    if isinstance(policy, tnb.BestOfN):
        ys = policy.generate(xs, max_new_tokens=TOKENS, temperature=0.7, seed=0)
        tokens = sum(len(policy.policy.tokenizer(y)["input_ids"]) for y in ys)  # the chosen answers' length
    else:
        ids = policy.generate_ids(xs, max_new_tokens=TOKENS, **kw)
        ys, tokens = [policy.decode_response(t) for t in ids], sum(len(t) for t in ids)
    seconds = time.perf_counter() - t0
    return {"reward": float(sentiment(xs, ys).mean()), "seconds": seconds, "tokens": tokens,
            "s_per_token": seconds / max(tokens, 1), "answers": ys}


def arm_part(pi0: tnb.Policy) -> dict[str, Any]:
    sentiment, xs = tnb.rewards.Sentiment(), list(HELDOUT_INPUTS)
    t0 = time.perf_counter()
    ds = preference_data(pi0, sentiment)
    data_s = time.perf_counter() - t0
    arm = tnb.train_reward_model(pi0, preferences=ds, method="autoregressive", **ARM)
    bt = tnb.train_reward_model(ds, seed=0)
    rows = {"π0 (greedy)": _decode(pi0, xs, sentiment)}
    rows["ARGS: reward_guided(π0, Sentiment(), β=0.1, top_k=8)"] = _decode(
        tnb.reward_guided(pi0, sentiment, beta=0.1, top_k=8), xs, sentiment)
    for beta in BETAS:
        rows[f"π0 + (1/{beta:g})·π_r (ARM, Eq. 7)"] = _decode(pi0 + (1 / beta) * arm.policy, xs, sentiment)
    rows["ARGS with the ARM as r (r = β_r log π_r, β=0.1, top_k=8)"] = _decode(
        tnb.reward_guided(pi0, arm, beta=0.1, top_k=8), xs, sentiment)
    for n in (4, 8):
        rows[f"best-of-{n} with the Bradley–Terry head (T=0.7)"] = _decode(tnb.BestOfN(pi0, bt, n), xs, sentiment)
    base = rows["π0 (greedy)"]["reward"]
    args_spt = rows["ARGS: reward_guided(π0, Sentiment(), β=0.1, top_k=8)"]["s_per_token"]
    for r in rows.values():
        r["gain"] = r["reward"] - base
        r["s_per_token_vs_args"] = r["s_per_token"] / args_spt
    return {"pairs": len(ds), "data_seconds": data_s, "arm_metrics": arm.metrics, "bt_metrics": bt.metrics,
            "n_heldout_inputs": len(xs), "rows": rows}


def lifelong_part(pi0: tnb.Policy, script: str) -> dict[str, Any]:
    s = SCRIPTS[script]
    chat = s.run(Conversation(pi0, **LIFELONG))
    out = recall(chat, s.probes)
    answers = out.pop("answers")
    return {"script": script, "settings": LIFELONG, **out, "max_prompt_tokens": max(chat.prompt_tokens),
            "prompt_tokens": chat.prompt_tokens, "rounds": chat.rounds, "internalised_turns": chat.internalised,
            "in_window_at_probe": len(chat.turns) - chat.start, "turns": chat.turns,
            "answers": answers.to_dict("records")}


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if "arm" in result:
        a = result["arm"]
        lines += ["| policy | mean VADER (held-out) | gain over π0 | s / token | vs ARGS s / token |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in a["rows"].items():
            lines.append(f"| {name} | {r['reward']:+.3f} | {r['gain']:+.3f} | {r['s_per_token']:.3f} | "
                         f"{r['s_per_token_vs_args']:.2f}× |")
    if "lifelong" in result:
        life = result["lifelong"]
        lines += ["", "| condition | recall (8 probes) | prompt tokens |", "|---|---:|---:|",
                  f"| (a) truncation only (window W={life['settings']['window']}) | {life['recall_truncation']:.3f} | "
                  f"{life['prompt_tokens_window']} |",
                  f"| (b) internalised (same window + adapter) | {life['recall_internalised']:.3f} | "
                  f"{life['prompt_tokens_window']} |",
                  f"| (c) full history (ceiling) | {life['recall_full_history']:.3f} | {life['prompt_tokens_full']} |",
                  f"| (c') full history as a note of what the user said | {life['recall_full_history_notes']:.3f} | – |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.open_problems", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("arm", "lifelong", "both"), default="both")
    ap.add_argument("--script", choices=sorted(SCRIPTS), default="test")
    ap.add_argument("--out", default="open_problems.json")
    ap.add_argument("--baked", action="store_true", help="serve training runs from notebook 09's bakes when they match")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tnb.set_live(not args.baked)
    pi0 = tnb.load_policy()
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.part in ("lifelong", "both"):
        result["lifelong"] = lifelong_part(pi0, args.script)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
        print(markdown(result), flush=True)
    if args.part in ("arm", "both"):
        result["arm"] = arm_part(pi0)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
