"""GPU check: the identities the CPU test suite asserts, re-checked on CUDA, in fp32 and bf16.

    python -m benchmarks.gpu_check --device cuda --json gpu_check.json

Prints one line per check (PASS/FAIL with the measured number) and exits 1 if any fails. The CPU tests
cannot see GPU-only problems (padding changing kernel choice, bf16 drift, adapters created in the wrong
dtype or on the wrong device, weights leaving the GPU), so a practitioner runs this once on a new machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import triangle_nb as tnb
from triangle_nb.policy import Policy
from triangle_nb.testing import perturbed_adapter

XS = ["Tell me about rain.", "What is a prime number? Answer in one sentence.", "Hi!",
      "Write a haiku about the sea and the wind at night."]
YS = ["Rain is water falling from clouds.", "A number with exactly two divisors.", "Hello! How can I help?",
      "Waves whisper softly / the night wind carries salt home / stars drown in the foam"]


def batched_vs_alone(pi: Policy) -> float:
    """max |batched log π(y|x) − one pair at a time| (padding must not change the numbers)."""
    batched = pi.logprobs(XS, YS).sum
    alone = np.array([pi.logprobs([x], [y]).sum[0] for x, y in zip(XS, YS, strict=True)])
    return float(np.abs(batched - alone).max())


def greedy_agreement(pi: Policy, tokens: int = 16) -> float:
    """Share of prompts whose greedy continuation is the same batched (left-padded) and alone."""
    batched = pi.generate(XS, max_new_tokens=tokens, temperature=0)
    alone = [pi.generate([x], max_new_tokens=tokens, temperature=0)[0] for x in XS]
    return float(np.mean([a == b for a, b in zip(batched, alone, strict=True)]))


def zero_adapter_is_base(pi: Policy) -> float:
    name = pi.backbone.unique_adapter_name("zero")
    pi.backbone.add_adapter(name, tnb.backbone.default_lora_config())
    return float(np.abs(pi.with_adapter(name).logprobs(XS, YS).sum - pi.logprobs(XS, YS).sum).max())


def steer_identity(pi: Policy) -> float:
    """Eq. 7 with expert = anti is the base policy: its log-probs must equal π0's."""
    star = perturbed_adapter(pi, pi.backbone.unique_adapter_name("pert"))
    comp = tnb.steer(base=pi, expert=star, anti=star, beta=0.5)
    return float(np.abs(comp.logprobs(XS, YS).sum - pi.logprobs(XS, YS).sum).max())


def weights_stay(pi: Policy, fn: Callable[[], Any]) -> tuple[bool, Any]:
    """Run `fn` (a training arrow) and report whether the base weights are bit-identical after it."""
    def base() -> dict[str, torch.Tensor]:
        return {n.replace(".base_layer", ""): p for n, p in pi.backbone.base_model.named_parameters() if "lora_" not in n}

    before = {n: p.detach().clone() for n, p in base().items()}
    out = fn()
    after = base()
    return after.keys() == before.keys() and all(torch.equal(after[n], v) for n, v in before.items()), out


def dpo_on(pi: Policy) -> dict[str, float]:
    inputs = ["How was your weekend?", "Tell me about your commute.", "How do you feel about Mondays?",
              "How was the concert?", "What do you think of winter?", "How was your flight?",
              "Describe your kitchen.", "How is school going?"]
    res = tnb.reward_to_update(pi, tnb.rewards.Sentiment(), inputs, method="dpo", steps=10)
    return {k: float(v) for k, v in res.metrics.items() if k.startswith("reward_heldout")}


def arrow_smoke(pi: Policy) -> dict[str, Callable[[], Any]]:
    """Every arrow once, with the smallest settings that still go through each code path."""
    xs, cheer = XS[:3], tnb.Prompt(system="You are a cheerful assistant.")
    gloom, sent = tnb.Prompt(system="You are a gloomy assistant."), tnb.rewards.Sentiment()
    small = {"steps": 2, "samples": 2, "batch_size": 2, "max_new_tokens": 8, "eval_samples": 1}
    star = perturbed_adapter(pi, pi.backbone.unique_adapter_name("star"), scale=0.05)
    return {
        **{f"reward_to_update {m}": (lambda m=m: tnb.reward_to_update(pi, sent, xs, method=m, **small))
           for m in ("rejection_sft", "kto", "grpo", "rloo")},
        "update_to_reward + steer (Eq. 4, 7)": lambda: tnb.steer(base=pi, expert=star, anti=pi, beta=1.0).generate(
            xs, max_new_tokens=8),
        "presets: dola, cd": lambda: (tnb.presets.dola(pi).generate(xs[:1], max_new_tokens=4),
                                      tnb.presets.cd(pi.with_prompt(cheer), pi).generate(xs[:1], max_new_tokens=4)),
        "prompt_to_update kl": lambda: tnb.prompt_to_update(pi, cheer, xs, steps=2, max_new_tokens=8),
        "update_to_prompt soft": lambda: tnb.update_to_prompt(star, pi, xs, method="soft", steps=2, max_new_tokens=8),
        "prompt_to_reward contrastive + judge": lambda: (tnb.prompt_to_reward(pi, cheer, gloom)(xs, XS[:3]),
                                                        tnb.prompt_to_reward(pi, "Rate how cheerful the answer is, from 1 to 5.",
                                                                             method="judge")(xs, XS[:3])),
        "reward_to_prompt conditioned": lambda: tnb.reward_to_prompt(pi, sent, xs, method="conditioned", samples=2,
                                                                     steps=2, max_new_tokens=8, eval_samples=1),
    }


def run(device: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def check(name: str, value: float | bool, ok: bool, note: str = "") -> None:
        rows.append({"check": name, "value": value, "ok": bool(ok), "note": note})
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value} {note}", flush=True)

    for dtype, tol in (("float32", 2e-3), ("bfloat16", 0.25)):
        t0 = time.perf_counter()
        pi = tnb.load_policy(device=device, dtype=dtype)
        p = next(pi.backbone.model.parameters())
        check(f"{dtype}: weights on {device}", f"{p.device} {p.dtype}", p.device.type == torch.device(device).type
              and str(p.dtype) == f"torch.{dtype}", f"(load {time.perf_counter() - t0:.1f} s)")
        gap = batched_vs_alone(pi)
        check(f"{dtype}: batched logprobs == one at a time (max nats)", gap, gap < tol)
        agree = greedy_agreement(pi)
        check(f"{dtype}: greedy batched == alone (share of prompts)", agree, agree >= (1.0 if dtype == "float32" else 0.5))
        z = zero_adapter_is_base(pi)
        check(f"{dtype}: zero adapter == base (max nats)", z, z < tol)
        s = steer_identity(pi)
        check(f"{dtype}: steer(expert=anti) == base (max nats)", s, s < tol)
        if dtype == "bfloat16":
            t0 = time.perf_counter()
            same, m = weights_stay(pi, lambda pi=pi: dpo_on(pi))
            check("bfloat16: DPO (10 steps) leaves the base bit-identical", same, same,
                  f"held-out sentiment {m} ({time.perf_counter() - t0:.0f} s)")
            for name, fn in arrow_smoke(pi).items():
                t0 = time.perf_counter()
                try:
                    fn()
                    check(f"bfloat16: {name}", "ran", True, f"({time.perf_counter() - t0:.1f} s)")
                except Exception as exc:  # report every arrow, not only the first failure
                    check(f"bfloat16: {name}", f"{type(exc).__name__}: {str(exc)[:200]}", False)
            lora = [q for n, q in pi.backbone.model.named_parameters() if "lora_A" in n]
            check("bfloat16: LoRA weights on the GPU", str(lora[0].device), lora[0].device.type == "cuda"
                  if device.startswith("cuda") else True, f"dtype {lora[0].dtype}")
        del pi
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(json.dumps(info), flush=True)
    rows = run(args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1, default=str)
    failed = [r["check"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
