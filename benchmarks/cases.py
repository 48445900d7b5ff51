"""The benchmark cases. Each returns rows "ours vs baseline", timed in the same process.

Every ratio is a throughput ratio: baseline time / our time for the same work, so > 1 means ours is
faster. Generation runs with the stop tokens switched off, so every contender makes exactly the
same number of tokens (greedy decoding would otherwise stop at different steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

import triangle_nb as tnb
from triangle_nb.backbone import Backbone, default_lora_config
from triangle_nb.chat import left_pad, prompt_ids
from triangle_nb.decoding import weighted_sum
from triangle_nb.policy import Composition, Policy
from triangle_nb.scoring import batches, encode_rows

from .timing import PeakRSS, interleaved, median

Row = dict[str, Any]

POSITIVE = tnb.Prompt(system="You are a warm, cheerful assistant who sees the bright side of everything.")
NEGATIVE = tnb.Prompt(system="You are a gloomy, pessimistic assistant who complains about everything.")
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Describe, in detail, a walk through a city in the rain.",
    "Explain how a bicycle works to a ten-year-old.",
    "Tell me about the history of the printing press.",
    "Write a letter to a friend about your summer holidays.",
    "Describe the life cycle of a star.",
    "Give me a recipe for vegetable soup and explain each step.",
    "Write a poem about the sea and the wind.",
    "What are the pros and cons of working from home?",
    "Describe your ideal weekend.",
    "Explain photosynthesis step by step.",
    "Write a short fairy tale about a clever fox.",
    "How do airplanes stay in the air?",
    "Describe a busy market in the morning.",
    "Tell me a story about a robot and a cat.",
    "What makes a good teacher?",
]
PARAGRAPH = (
    "The morning was cold and bright, and the market slowly filled with people carrying baskets of "
    "apples, bread and flowers. A small dog ran between the stalls while the baker shouted prices and "
    "children laughed at a juggler near the fountain. By noon the sun had warmed the stones, the air "
    "smelled of coffee and rain, and everyone seemed to agree that it was the best day of the autumn so "
    "far, although the clouds in the west promised a storm before the evening lamps were lit again."
).split()


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How much work each case does (full run vs --quick smoke run)."""

    steer_prompts: int = 2
    steer_tokens: int = 24
    repeats: int = 2
    naive_lengths: tuple[int, ...] = (64, 128, 256)
    naive_direct: int = 64  # the naive decoder runs end to end at this length; the others: timed steps
    naive_grid: int = 4  # step lengths timed to integrate the naive cost
    logprob_pairs: tuple[int, ...] = (32, 256)
    gen_prompts: tuple[int, ...] = (4, 16)
    gen_tokens: int = 16
    cached_loads: int = 2
    train_steps: int = 6


FULL = Sizes()
QUICK = Sizes(steer_prompts=2, steer_tokens=4, repeats=1, naive_lengths=(4, 8), naive_direct=4, naive_grid=3,
              logprob_pairs=(8,), gen_prompts=(4,), gen_tokens=4, cached_loads=1, train_steps=2)


@dataclass
class Env:
    """What a case needs: the model to load, the sizes, and how to run isolated parts."""

    sizes: Sizes
    tiny: bool = False
    inprocess: bool = False
    arrows_budget: float = 960.0  # seconds for section 5 in all
    rss: PeakRSS = field(default_factory=PeakRSS)
    device: str = field(default_factory=lambda: os.environ.get("TRIANGLE_NB_BENCH_DEVICE", "cpu"))


    def load(self) -> Policy:
        """A fresh policy on its own backbone (the real default model, or a new tiny one)."""
        if not self.tiny:
            return tnb.load_policy(device=self.device)
        from triangle_nb.testing import tiny_policy

        return tiny_policy()  # seeded: the same weights every time, on a backbone of its own


def row(section: str, case: str, *, ours: str, baseline: str, unit: str, ours_value: float, base_value: float,
        ratio: float, target: float | None = None, note: str = "", rss_ours: float | None = None,
        rss_base: float | None = None) -> Row:
    """One result: `ratio` = ours / baseline as throughput (> 1: ours faster); `target` a minimum ratio."""
    return {"section": section, "case": case, "ours": ours, "baseline": baseline, "unit": unit,
            "ours_value": round(ours_value, 4), "base_value": round(base_value, 4), "ratio": round(ratio, 3),
            "target": target, "met": None if target is None else bool(ratio >= target), "note": note,
            "rss_ours_mb": rss_ours, "rss_base_mb": rss_base}


@contextlib.contextmanager
def no_stop(*backbones: Backbone) -> Iterator[None]:
    """Switch the end-of-turn stop off so every run generates exactly max_new_tokens tokens."""
    saved = [bb.stop_ids for bb in backbones]
    for bb in backbones:
        bb.stop_ids = (-1,)  # an id no model produces
    try:
        yield
    finally:
        for bb, ids in zip(backbones, saved, strict=True):
            bb.stop_ids = ids


def add_lora(policy: Policy, name: str, seed: int, scale: float = 0.02, modules: list[str] | None = None) -> Policy:
    """A LoRA adapter (the default config, or only on `modules`) with small random lora_B (B = 0 is the base)."""
    bb = policy.backbone
    config = default_lora_config()
    if modules:
        config.target_modules = set(modules)
    bb.add_adapter(name, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in bb.model.named_parameters():
            if f"lora_B.{name}." in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return policy.with_adapter(name)


# -- 1. Eq. 7 steering --------------------------------------------------------------------------------------------
def steering_configs(pi0: Policy, lora: Policy) -> dict[str, Composition]:
    """Two and three components sharing one base: prompt contrast, and LoRA expert + anti-expert."""
    pz, pn = pi0.with_prompt(POSITIVE), pi0.with_prompt(NEGATIVE)
    expert, anti = add_lora(lora, "expert", 1), add_lora(lora, "anti", 2)
    qv = ["q_proj", "v_proj"]
    expert_qv, anti_qv = add_lora(lora, "expert_qv", 3, modules=qv), add_lora(lora, "anti_qv", 4, modules=qv)
    return {
        "2 prompts: 1.5·π(·|z+) − 0.5·π(·|z−)": Composition(((pz, 1.5), (pn, -0.5))),
        "3 prompts: π0 + π(·|z+) − π(·|z−)": Composition(((pi0, 1.0), (pz, 1.0), (pn, -1.0))),
        "2 LoRA: 1.5·expert − 0.5·anti": Composition(((expert, 1.5), (anti, -0.5))),
        "3 LoRA: π0 + expert − anti (DExperts)": Composition(((lora, 1.0), (expert, 1.0), (anti, -1.0))),
        "3 LoRA on q_proj, v_proj only: π0 + expert − anti": Composition(((lora, 1.0), (expert_qv, 1.0),
                                                                          (anti_qv, -1.0))),
    }


def steering(env: Env) -> list[Row]:
    s = env.sizes
    pi0, lora = env.load(), env.load()  # the baseline's backbone stays a plain model (no PEFT wrapper)
    configs = steering_configs(pi0, lora)
    xs, n = PROMPTS[: s.steer_prompts], s.steer_tokens
    fns: dict[str, Callable[[], object]] = {"plain": lambda: pi0.generate_ids(xs, max_new_tokens=n)}
    fns |= {name: (lambda c=c: c.generate_ids(xs, max_new_tokens=n)) for name, c in configs.items()}
    with no_stop(pi0.backbone, lora.backbone):
        times = interleaved(fns, repeats=s.repeats, rss=env.rss)
    tokens, base = len(xs) * n, median(times["plain"])
    rows = []
    for name in configs:
        t = median(times[name])
        target = None if "only" in name else 0.9 if name.startswith("2 prompts") else 0.8  # issue 16's targets
        rows.append(row("steering", name, ours="Eq. 7 composition", baseline="plain π0.generate", unit="tokens/s",
                        ours_value=tokens / t, base_value=tokens / base, ratio=base / t, target=target,
                        note=f"{len(xs)} prompts × {n} new tokens", rss_ours=env.rss.mb(name),
                        rss_base=env.rss.mb("plain")))
    return rows


def cfg(env: Env) -> list[Row]:
    """The two-prompt composition vs transformers' own CFG (guidance_scale + negative_prompt_ids)."""
    s = env.sizes
    pi0 = env.load()
    bb, xs, n, g = pi0.backbone, PROMPTS[: s.steer_prompts], s.steer_tokens, 1.5
    ours = Composition(((pi0.with_prompt(POSITIVE), g), (pi0.with_prompt(NEGATIVE), 1 - g)))
    pos, pos_mask = (t.to(bb.device) for t in left_pad([prompt_ids(bb.tokenizer, POSITIVE, x) for x in xs], bb.pad_id))
    neg, neg_mask = (t.to(bb.device) for t in left_pad([prompt_ids(bb.tokenizer, NEGATIVE, x) for x in xs], bb.pad_id))
    hf = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=bb.pad_id, temperature=None,
              top_p=None, top_k=None)

    def hf_cfg() -> object:
        return bb.model.generate(input_ids=pos, attention_mask=pos_mask, guidance_scale=g, negative_prompt_ids=neg,
                                 negative_prompt_attention_mask=neg_mask, **hf)

    fns = {"ours 2-prompt": lambda: ours.generate_ids(xs, max_new_tokens=n), "hf cfg": hf_cfg,
           "ours plain": lambda: pi0.generate_ids(xs, max_new_tokens=n),
           "hf plain": lambda: bb.model.generate(input_ids=pos, attention_mask=pos_mask, **hf)}
    with no_stop(bb):
        times = interleaved(fns, repeats=s.repeats, rss=env.rss)
    tokens = len(xs) * n
    med = {k: median(v) for k, v in times.items()}
    note = f"{len(xs)} prompts × {n} new tokens, greedy, guidance_scale={g}"
    return [
        row("steering", "2 prompts vs transformers CFG", ours="Eq. 7 composition (1 batched forward/step)",
            baseline="model.generate(guidance_scale, negative_prompt_ids)", unit="tokens/s",
            ours_value=tokens / med["ours 2-prompt"], base_value=tokens / med["hf cfg"],
            ratio=med["hf cfg"] / med["ours 2-prompt"], note=note, rss_ours=env.rss.mb("ours 2-prompt"),
            rss_base=env.rss.mb("hf cfg")),
        row("steering", "plain decoding vs transformers generate", ours="π0.generate", baseline="model.generate",
            unit="tokens/s", ours_value=tokens / med["ours plain"], base_value=tokens / med["hf plain"],
            ratio=med["hf plain"] / med["ours plain"], note=f"{len(xs)} prompts × {n} new tokens, greedy",
            rss_ours=env.rss.mb("ours plain"), rss_base=env.rss.mb("hf plain")),
    ]


# -- 1b. the naive decoder without KV caches ---------------------------------------------------------------------
@torch.inference_mode()
def naive_step(policy: Composition, prompts: list[list[int]], generated: list[int]) -> int:
    """One step without a KV cache: a full forward over prompt + everything generated so far."""
    comps, weights = zip(*policy.components, strict=True)
    bb = policy.backbone
    ids, mask = left_pad([p + generated for p in prompts], bb.pad_id)
    logits, _ = bb.forward(ids, mask, adapters=[c.adapter for c in comps])
    logps = list(torch.log_softmax(logits[:, -1], dim=-1))
    return int(weighted_sum(logps, weights).argmax())


def naive_decode(policy: Composition, x: str, n: int) -> list[int]:
    """Eq. 7 greedy decoding the naive way: every step recomputes every component from scratch."""
    prompts = [prompt_ids(policy.backbone.tokenizer, c.prompt, x) for c, _ in policy.components]
    out: list[int] = []
    for _ in range(n):
        out.append(naive_step(policy, prompts, out))
    return out


def naive(env: Env) -> list[Row]:
    """Growth of the cost with length: KV-cached Eq. 7 vs recomputing everything every step (1 prompt)."""
    s = env.sizes
    pi0 = env.load()
    policy = Composition(((pi0.with_prompt(POSITIVE), 1.5), (pi0.with_prompt(NEGATIVE), -0.5)))
    x, longest = PROMPTS[0], max(s.naive_lengths)
    prompts = [prompt_ids(pi0.backbone.tokenizer, c.prompt, x) for c, _ in policy.components]
    grid = [round(i * (longest - 1) / (s.naive_grid - 1)) for i in range(s.naive_grid)]
    with env.rss.phase("naive"):
        step_times = {t: _time_step(policy, prompts, t) for t in grid}
        direct = _timed(lambda: naive_decode(policy, x, s.naive_direct))
    rows = []
    with no_stop(pi0.backbone):
        for n in s.naive_lengths:
            times = interleaved({f"ours {n}": lambda n=n: policy.generate_ids([x], max_new_tokens=n)},
                                repeats=s.repeats, warmup=1 if n == s.naive_lengths[0] else 0, rss=env.rss)
            t_ours = median(times[f"ours {n}"])
            estimate = _integrate(step_times, n)
            t_naive = direct if n == s.naive_direct else estimate
            how = ("measured end to end" + f"; the step-time model predicts {estimate:.1f} s"
                   if n == s.naive_direct else "sum of timed full-recompute steps over the sequence")
            rows.append(row("steering", f"2 prompts, {n} new tokens vs no KV cache", ours="Eq. 7, KV-cached",
                            baseline="Eq. 7, full recompute per step", unit="tokens/s", ours_value=n / t_ours,
                            base_value=n / t_naive, ratio=t_naive / t_ours, note=f"1 prompt; naive {how}",
                            rss_ours=env.rss.mb(f"ours {n}"), rss_base=env.rss.mb("naive")))
    return rows


def _time_step(policy: Composition, prompts: list[list[int]], t: int) -> float:
    generated = [300] * t  # any t tokens: the cost depends on the length only
    return min(_timed(lambda: naive_step(policy, prompts, generated)) for _ in range(2))


def _integrate(step_times: dict[int, float], n: int) -> float:
    """Σ_{t<n} step(t), with step(t) linear between the timed lengths."""
    pts = sorted(step_times.items())
    total = 0.0
    for t in range(n):
        for (t0, y0), (t1, y1) in zip(pts, pts[1:], strict=False):
            if t0 <= t <= t1:
                total += y0 + (y1 - y0) * (t - t0) / max(t1 - t0, 1)
                break
    return total


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- 2. logprobs ------------------------------------------------------------------------------------------------------
def mixed_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n (x, y) pairs with responses from 2 to 40 words (mixed lengths)."""
    rng = random.Random(seed)
    xs = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    ys = []
    for _ in range(n):
        start, length = rng.randrange(len(PARAGRAPH)), rng.choice([2, 5, 10, 20, 40])
        ys.append(" ".join((PARAGRAPH * 2)[start : start + length]))
    return xs, ys


def shared_pairs(prompts: int, per_prompt: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`per_prompt` responses (2 to 40 words, as `mixed_pairs`) to each of `prompts` inputs: n samples per input."""
    _, ys = mixed_pairs(prompts * per_prompt, seed)
    return [PROMPTS[i % len(PROMPTS)] for i in range(prompts) for _ in range(per_prompt)], ys


@torch.inference_mode()
def bare_forward(pi0: Policy, encoded: list[dict[str, torch.Tensor]]) -> None:
    """The floor: the model's forward over the same padded batches, no tokenising, no gathering."""
    for batch in encoded:
        pi0.backbone.model(**batch)


def logprobs(env: Env) -> list[Row]:
    s = env.sizes
    pi0 = env.load()
    rows = []
    for k, n in enumerate(s.logprob_pairs):
        xs, ys = mixed_pairs(n)
        dev = pi0.backbone.device
        encoded = [{"input_ids": b.input_ids.to(dev), "attention_mask": b.attention_mask.to(dev)}
                   for _, b in batches(encode_rows(pi0, xs, ys), 16, pi0.backbone.pad_id)]
        big = k > 0  # the big case: one round, no bare forward (the first case warmed everything up)
        fns = {f"batched {n}": lambda xs=xs, ys=ys: pi0.logprobs(xs, ys),
               f"loop {n}": lambda xs=xs, ys=ys: [pi0.logprobs([x], [y]) for x, y in zip(xs, ys, strict=True)]}
        if not big:
            fns[f"bare {n}"] = lambda e=encoded: bare_forward(pi0, e)
        times = interleaved(fns, repeats=1 if big else s.repeats, warmup=0 if big else 1, rss=env.rss)
        med = {name.split()[0]: median(v) for name, v in times.items()}
        tokens = sum(len(p) + len(r) for p, r in encode_rows(pi0, xs, ys))
        note = f"{n} pairs, {tokens} tokens, responses 2–40 words, batch_size=16" + (", 1 round" if big else "")
        rows.append(row("logprobs", f"{n} pairs: batched vs per-pair loop", ours="π0.logprobs(xs, ys)",
                        baseline="[π0.logprobs([x], [y]) for each pair]", unit="pairs/s", ours_value=n / med["batched"],
                        base_value=n / med["loop"], ratio=med["loop"] / med["batched"], target=3.0, note=note,
                        rss_ours=env.rss.mb(f"batched {n}"), rss_base=env.rss.mb(f"loop {n}")))
        if big:
            continue
        rows.append(row("logprobs", f"{n} pairs: vs bare batched forward", ours="π0.logprobs(xs, ys)",
                        baseline="model(**batch) on the same padded batches", unit="pairs/s",
                        ours_value=n / med["batched"], base_value=n / med["bare"], ratio=med["bare"] / med["batched"],
                        target=0.8, note=note + "; the baseline skips tokenising and log-softmax",
                        rss_ours=env.rss.mb(f"batched {n}"), rss_base=env.rss.mb(f"bare {n}")))
    return rows + [shared_prompts_row(env, pi0, prompts=s.logprob_pairs[0] // 4, per_prompt=4)]


def shared_prompts_row(env: Env, pi0: Policy, *, prompts: int, per_prompt: int) -> Row:
    """n responses per input (the common case): the batch encodes each prompt once, the loop once per pair."""
    xs, ys = shared_pairs(prompts, per_prompt)
    n, label = len(xs), f"{prompts}x{per_prompt}"
    fns = {f"batched {label}": lambda: pi0.logprobs(xs, ys),
           f"loop {label}": lambda: [pi0.logprobs([x], [y]) for x, y in zip(xs, ys, strict=True)]}
    times = interleaved(fns, repeats=env.sizes.repeats, warmup=0, rss=env.rss)  # warmed up by the rows before
    med = {name.split()[0]: median(v) for name, v in times.items()}
    tokens = sum(len(p) + len(r) for p, r in encode_rows(pi0, xs, ys))
    return row("logprobs", f"{prompts} prompts × {per_prompt} responses: batched vs per-pair loop",
               ours="π0.logprobs(xs, ys)", baseline="[π0.logprobs([x], [y]) for each pair]", unit="pairs/s",
               ours_value=n / med["batched"], base_value=n / med["loop"], ratio=med["loop"] / med["batched"],
               target=3.0, note=f"{n} pairs, {tokens} tokens, responses 2–40 words, batch_size=16",
               rss_ours=env.rss.mb(f"batched {label}"), rss_base=env.rss.mb(f"loop {label}"))


# -- 3. generate batched vs sequential -------------------------------------------------------------------------------
def generate(env: Env) -> list[Row]:
    s = env.sizes
    pi0, tok = env.load(), s.gen_tokens
    rows = []
    with no_stop(pi0.backbone):
        for k, n in enumerate(s.gen_prompts):
            xs = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            fns = {f"batched {n}": lambda xs=xs: pi0.generate_ids(xs, max_new_tokens=tok),
                   f"sequential {n}": lambda xs=xs: [pi0.generate_ids([x], max_new_tokens=tok) for x in xs]}
            times = interleaved(fns, repeats=max(1, s.repeats - k), warmup=1 if k == 0 else 0, rss=env.rss)
            t_b, t_s = median(times[f"batched {n}"]), median(times[f"sequential {n}"])
            rows.append(row("generate", f"{n} prompts: batched vs sequential", ours=f"π0.generate({n} prompts)",
                            baseline=f"{n} × π0.generate([x])", unit="tokens/s", ours_value=n * tok / t_b,
                            base_value=n * tok / t_s, ratio=t_s / t_b, target=2.0 if n == 4 else None,
                            note=f"{tok} new tokens each", rss_ours=env.rss.mb(f"batched {n}"),
                            rss_base=env.rss.mb(f"sequential {n}")))
    return rows


# -- 4. model load -----------------------------------------------------------------------------------------------------
LOAD_SNIPPET = """
import json, time
import triangle_nb as tnb
from benchmarks.timing import max_rss_mb
t0, c0 = time.perf_counter(), time.process_time()
tnb.load_policy(device="cpu")
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print("BENCH " + json.dumps({"seconds": dt, "cpu_seconds": cpu, "rss_mb": max_rss_mb()}))
"""


def run_child(code: str, env_vars: dict[str, str] | None = None, timeout: float = 900) -> dict[str, Any]:
    """Run Python code in a fresh interpreter; it prints one `BENCH {json}` line."""
    env = {**os.environ, **(env_vars or {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"benchmark child failed (rc={out.returncode}): {out.stderr[-2000:]}")


def load(env: Env) -> list[Row]:
    """First conversion (GGUF -> safetensors, empty cache) vs cached load, each in a fresh process."""
    if env.tiny or env.inprocess:
        return [row("load", "cached load vs first conversion", ours="cached load", baseline="first conversion",
                    unit="s", ours_value=float("nan"), base_value=float("nan"), ratio=float("nan"),
                    note="skipped: needs the real model in fresh processes (not in --tiny / --inprocess runs)")]
    with tempfile.TemporaryDirectory(prefix="tnb-bench-cache-") as tmp:
        first = run_child(LOAD_SNIPPET, {"TRIANGLE_NB_CACHE": tmp})
    cached = [run_child(LOAD_SNIPPET) for _ in range(env.sizes.cached_loads)]
    t_cached = median([c["seconds"] for c in cached])
    return [row("load", "cached load vs first conversion", ours="load_policy() from the safetensors cache",
                baseline="load_policy() converting the GGUF (TRIANGLE_NB_CACHE = empty temp dir)", unit="s",
                ours_value=t_cached, base_value=first["seconds"], ratio=first["seconds"] / t_cached,
                note=f"targets: cached < 2 s ({t_cached:.2f} s: {'met' if t_cached < 2 else 'MISSED'}), "
                     f"conversion < 25 s ({first['seconds']:.1f} s: {'met' if first['seconds'] < 25 else 'MISSED'}); "
                     f"median of {len(cached)} cached loads; each in a fresh process, imports excluded; CPU time "
                     f"(what an idle core would take): cached {median([c['cpu_seconds'] for c in cached]):.2f} s, "
                     f"conversion {first['cpu_seconds']:.1f} s",
                rss_ours=max(c["rss_mb"] for c in cached), rss_base=first["rss_mb"])]


# -- 6. memory: three adapters on one base vs three model copies -----------------------------------------------------
MEMORY_SNIPPET = """
import json, time
from benchmarks.cases import Env, FULL, QUICK, memory_part
from benchmarks.timing import max_rss_mb
imports_mb = max_rss_mb()
env = Env(sizes={sizes}, tiny={tiny}, inprocess=True)
seconds = memory_part(env, {copies})
print("BENCH " + json.dumps({{"seconds": seconds, "rss_mb": max_rss_mb(), "imports_mb": imports_mb}}))
"""


def memory_part(env: Env, copies: bool) -> float:
    """Steer with three components: three adapters on one base, or three separately loaded models."""
    s = env.sizes
    if copies:
        parts = [env.load(), env.load(), env.load()]
    else:
        base = env.load()
        parts = [add_lora(base, f"a{i}", i) for i in range(3)]
    policy = Composition(((parts[0], 1.0), (parts[1], 1.0), (parts[2], -1.0)))
    xs = PROMPTS[: s.steer_prompts]
    with no_stop(*{id(p.backbone): p.backbone for p in parts}.values()):
        return _timed(lambda: policy.generate_ids(xs, max_new_tokens=s.steer_tokens))


def memory(env: Env) -> list[Row]:
    if env.inprocess:
        with env.rss.phase("shared"):
            t_shared = memory_part(env, False)
        with env.rss.phase("copies"):
            t_copies = memory_part(env, True)
        shared, copies = {"seconds": t_shared, "rss_mb": env.rss.mb("shared")}, \
            {"seconds": t_copies, "rss_mb": env.rss.mb("copies")}
        how = "in one process (sampled RSS; the second phase inherits the first's memory)"
    else:
        sizes = "QUICK" if env.sizes == QUICK else "FULL"
        shared, copies = (run_child(MEMORY_SNIPPET.format(sizes=sizes, tiny=env.tiny, copies=c)) for c in (False, True))
        how = (f"each in a fresh process (ru_maxrss); Python + torch + transformers alone take "
               f"{shared['imports_mb']:.0f} MiB, so the models themselves take {shared['rss_mb'] - shared['imports_mb']:.0f} "
               f"vs {copies['rss_mb'] - copies['imports_mb']:.0f} MiB")
    note = f"Eq. 7 with 3 components, {env.sizes.steer_prompts} prompts × {env.sizes.steer_tokens} tokens, {how}"
    return [
        row("memory", "3 adapters on one base vs 3 model copies: peak RSS", ours="one backbone + 3 LoRA adapters",
            baseline="3 separately loaded models", unit="MiB", ours_value=shared["rss_mb"] or 0,
            base_value=copies["rss_mb"] or 0, ratio=(copies["rss_mb"] or 0) / max(shared["rss_mb"] or 1, 1), note=note,
            rss_ours=shared["rss_mb"], rss_base=copies["rss_mb"]),
        row("memory", "3 adapters on one base vs 3 model copies: time", ours="one batched forward per step",
            baseline="three forwards per step", unit="s", ours_value=shared["seconds"], base_value=copies["seconds"],
            ratio=copies["seconds"] / shared["seconds"], note=note + "; one run each, includes no loading"),
    ]


# -- 7. training memory: the allocator and activation checkpointing ----------------------------------------------------
TRAIN_SNIPPET = """
import json
from benchmarks.cases import Env, FULL, QUICK, training_part
env = Env(sizes={sizes}, tiny={tiny}, inprocess=True)
print("BENCH " + json.dumps(training_part(env, {checkpointing})))
"""
TRAIN_ANSWER = "It was a lovely time, and I enjoyed every moment of it. Thank you so much for asking me!"


def training_part(env: Env, checkpointing: bool) -> dict[str, float]:
    """LoRA SFT steps (batch 8, response_nll + AdamW): peak resident memory above the loaded model, s per step."""
    from triangle_nb.chat import pair_batch
    from triangle_nb.scoring import response_nll

    policy = env.load()
    bb = policy.backbone
    bb.activation_checkpointing = checkpointing
    name = bb.add_adapter("bench", default_lora_config())
    params = [p for n, p in bb.model.named_parameters() if f".{name}." in n]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = pair_batch(encode_rows(policy, PROMPTS[:8], [TRAIN_ANSWER] * 8), bb.pad_id).to(bb.device)
    with torch.no_grad(), env.rss.phase("loaded"):
        response_nll(bb, batch, name)  # pages the memory-mapped weights in: the training phase then adds only its own
    start = time.perf_counter()
    with env.rss.phase("training"), bb.training():
        for _ in range(env.sizes.train_steps):
            loss = response_nll(bb, batch, name)  # a fresh forward each step: the same work every step
            opt.zero_grad()
            loss.backward()
            opt.step()
    per_step = (time.perf_counter() - start) / env.sizes.train_steps
    with open("/proc/self/maps") as maps:
        malloc = "mimalloc" if "libmimalloc" in maps.read() else "glibc"
    return {"seconds": per_step, "above_mb": env.rss.mb("training") - env.rss.mb("loaded"),
            "tokens": list(batch.input_ids.shape), "malloc": malloc}


def mimalloc_path() -> str | None:
    """The mimalloc library of `pip install cmeel-mimalloc` (what binder/start preloads), if installed."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], "cmeel.prefix", "lib", "libmimalloc.so.3")
    return path if os.path.isfile(path) else None


def training(env: Env) -> list[Row]:
    """Each variant in a fresh process: glibc's malloc vs mimalloc (LD_PRELOAD), checkpointing off vs on."""
    lib = mimalloc_path()
    if env.inprocess or lib is None:
        why = "--inprocess (the allocator is chosen at process start)" if env.inprocess else "cmeel-mimalloc not installed"
        return [row("training", "LoRA step memory: mimalloc + checkpointing vs glibc", ours="", baseline="", unit="MiB",
                    ours_value=float("nan"), base_value=float("nan"), ratio=float("nan"), note=f"skipped: {why}")]
    sizes = "QUICK" if env.sizes == QUICK else "FULL"
    runs = {(alloc, ckpt): run_child(TRAIN_SNIPPET.format(sizes=sizes, tiny=env.tiny, checkpointing=ckpt),
                                     {"LD_PRELOAD": lib if alloc == "mimalloc" else ""})  # "": not inherited either
            for alloc in ("glibc", "mimalloc") for ckpt in (False, True)}
    ours, base = runs["mimalloc", True], runs["glibc", False]
    every = "; ".join(f"{r['malloc']}{' + checkpointing' if c else ''}: +{r['above_mb']:.0f} MiB, {r['seconds']:.2f} s/step"
                      for (_, c), r in runs.items())  # the allocator each child reports from its own memory map
    note = (f"LoRA SFT, batch {ours['tokens'][0]} × {ours['tokens'][1]} tokens, {env.sizes.train_steps} steps, each "
            f"variant in a fresh process; peak RSS above the loaded model. {every}")
    return [
        row("training", "LoRA step: peak memory above the model", ours="mimalloc + activation checkpointing (binder/start)",
            baseline="glibc malloc, no checkpointing", unit="MiB", ours_value=ours["above_mb"], base_value=base["above_mb"],
            ratio=base["above_mb"] / max(ours["above_mb"], 1.0), note=note),
        row("training", "LoRA step: time", ours="mimalloc + activation checkpointing", baseline="glibc, no checkpointing",
            unit="s", ours_value=ours["seconds"], base_value=base["seconds"], ratio=base["seconds"] / ours["seconds"],
            note="s per step; checkpointing recomputes each layer in the backward (~25% more compute)"),
    ]


# -- 8. the training engine: transformers.Trainer vs the hand-written loop it replaced ---------------------------------
ENGINE_SNIPPET = """
import json
from benchmarks.cases import Env, FULL, QUICK, engine_part
env = Env(sizes={sizes}, tiny={tiny}, inprocess=True)
print("BENCH " + json.dumps(engine_part(env, {engine})))
"""


def engine_part(env: Env, engine: bool) -> dict[str, float]:
    """LoRA SFT steps on one fixed batch of 8: the Trainer engine (`training.train`) or the loop the arrows had
    (AdamW, clip at 1, zero_grad / backward / step by hand). Per-step time of the steady state (step 1 excluded)."""
    from triangle_nb import training
    from triangle_nb.chat import pair_batch
    from triangle_nb.scoring import response_nll

    policy = env.load()
    bb = policy.backbone
    name = training.new_adapter(bb, "bench", default_lora_config(), seed=0)
    rows = encode_rows(policy, PROMPTS[:8], [TRAIN_ANSWER] * 8)
    steps, times = env.sizes.train_steps + 1, []
    if engine:
        clock = _StepClock(times)
        job = training.Trainable(name="bench_sft", loss=training.sft_loss(bb, name, rows), n_items=8, backbone=bb,
                                 adapter=name)
        training.train(job, training.TrainConfig(steps=steps, batch_size=8, learning_rate=1e-4, callbacks=[clock]))
    else:
        params = [p for n, p in bb.model.named_parameters() if f".{name}." in n]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        batch = pair_batch(rows, bb.pad_id).to(bb.device)
        for _ in range(steps):
            t0 = time.perf_counter()
            with bb.training():
                loss = response_nll(bb, batch, name)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            times.append(time.perf_counter() - t0)
    return {"seconds": median(times[1:]), "steps": len(times) - 1}


class _StepClock(TrainerCallback):
    """Wall time of each optimiser step, from on_step_begin to on_step_end (the Trainer's own bookkeeping in it)."""

    def __init__(self, times: list[float]) -> None:
        self.times, self.t0 = times, 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self.t0)


def engine(env: Env) -> list[Row]:
    """Trainer engine vs the hand loop, each in a fresh process, alternating (median of the per-step medians)."""
    sizes = "QUICK" if env.sizes == QUICK else "FULL"
    if env.inprocess:
        runs = {e: [engine_part(env, e) for _ in range(env.sizes.repeats)] for e in (True, False)}
    else:
        runs = {True: [], False: []}
        for _ in range(max(2, env.sizes.repeats)):
            for e in (False, True):
                runs[e].append(run_child(ENGINE_SNIPPET.format(sizes=sizes, tiny=env.tiny, engine=e)))
    ours, base = (median([r["seconds"] for r in runs[e]]) for e in (True, False))
    note = (f"LoRA SFT step, batch 8, {runs[True][0]['steps']} timed steps per run, {len(runs[True])} runs each "
            "(fresh processes, alternating); the engine's step includes the Trainer's callbacks, logging and "
            "gradient clipping; target: within 1.15x of the hand loop's step time")
    return [row("engine", "training step: transformers.Trainer engine vs hand-written loop", ours="training.train",
                baseline="AdamW loop by hand (the arrows' loop before the engine)", unit="s", ours_value=ours,
                base_value=base, ratio=base / ours, target=round(1 / 1.15, 3), note=note)]


CASES: dict[str, Callable[[Env], list[Row]]] = {
    "steering": steering, "cfg": cfg, "naive": naive, "logprobs": logprobs, "generate": generate, "load": load,
    "memory": memory, "training": training, "engine": engine,
}
