"""Reward-guided decoding (`tnb.reward_guided`, ARGS-style token-level Eq. 2): its effect and its cost.

On held-out neutral inputs (never used to choose β or top_k) with VADER as r: mean sentiment of greedy answers from
π0 and from reward-guided π0 (β = 0.1, top_k = 8), the throughput ratio against plain generation in the same
process, reward calls per generated token and seconds per token.
"""

from __future__ import annotations

import time

import triangle_nb as tnb

from .cases import Env, Row, row

NEUTRAL = ["Describe a typical Tuesday.", "Tell me about the history of bricks.", "Explain how a refrigerator works.",
           "Describe the weather in autumn.", "How do trains run on time?", "Write two sentences about a parking lot.",
           "Summarise what an office printer does.", "What happens at a post office?"]


def guided(env: Env) -> list[Row]:
    pi0 = env.load()
    sentiment = tnb.rewards.Sentiment()
    xs = NEUTRAL[: 2 if env.sizes.steer_tokens < 8 else len(NEUTRAL)]
    n = 8 if env.sizes.steer_tokens < 8 else 32
    times: dict[str, list[float]] = {"plain": [], "guided": []}
    texts: dict[str, list[str]] = {}
    calls = scored = 0
    for _ in range(env.sizes.repeats):  # alternate, so load from other processes hits both
        for name in times:
            policy = tnb.reward_guided(pi0, sentiment, beta=0.1, top_k=8) if name == "guided" else pi0
            t0 = time.perf_counter()
            with env.rss.phase(name):
                texts[name] = policy.generate(xs, max_new_tokens=n)
            times[name].append(time.perf_counter() - t0)
            if name == "guided":
                calls, scored = policy.combine.calls, policy.combine.scored
    plain, ours = min(times["plain"]), min(times["guided"])
    before, after = float(sentiment(xs, texts["plain"]).mean()), float(sentiment(xs, texts["guided"]).mean())
    tokens = len(xs) * n  # an upper bound: answers may stop earlier (the stop stays on, as a user would run it)
    note = (f"{len(xs)} held-out neutral inputs × up to {n} greedy tokens; mean VADER π0 {before:+.3f} → guided "
            f"{after:+.3f} (gain {after - before:+.3f}, target ≥ +0.3); {calls} reward calls for {calls} decoding "
            f"steps ({scored // max(calls, 1)} candidates each), {ours / calls:.3f} s per step vs plain "
            f"{plain / n:.3f} s")
    return [row("guided", "reward-guided π0 (VADER, β=0.1, top_k=8) vs plain π0.generate", ours="tnb.reward_guided",
                baseline="plain π0.generate", unit="tokens/s", ours_value=tokens / ours, base_value=tokens / plain,
                ratio=plain / ours, note=note, rss_ours=env.rss.mb("guided"), rss_base=env.rss.mb("plain")),
            row("guided", "reward-guided: mean VADER gain over π0 (held-out)", ours="tnb.reward_guided",
                baseline="π0", unit="VADER", ours_value=after, base_value=before, ratio=after - before, target=0.3,
                note="ratio column = the gain (after − before), not a speed ratio")]
