"""One result schema in fact (issue 25, point 4): every arrow's result — live on the tiny model, and every shipped
bake as it loads — has numbers only in `metrics`, every key `{objective}_{split}_{when}` or in the one exception
list, and its settings flat in `info`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import triangle_nb as tnb
from triangle_nb import _io
from triangle_nb.results import ArrowResult, current_schema, metric_key_ok, schema_problems
from triangle_nb.testing import tiny_policy

XS = ["Tell me about rain.", "Describe a cat.", "What is tea?", "Name a colour.", "Why is the sky blue?",
      "What is a dog?"]
PROBES = [("What is tea?", "leaves")]
PAIRS = {"prompt": ["Tell me about rain.", "Describe a cat.", "What is a dog?", "Describe the sea."],
         "chosen": ["Rain is lovely and fresh!", "Cats are wonderful.", "A loyal, happy friend.", "Calm and bright."],
         "rejected": ["Rain is awful.", "Cats are mean.", "A smelly animal.", "Cold and grim."]}
TRAIN = {"steps": 1, "batch_size": 2, "max_new_tokens": 4}
BAKED = Path(tnb.__file__).parent / "baked"


def n_words(x: str, y: str) -> float:
    return float(len(y.split()))


RUNS: dict[str, Callable[[Any], Any]] = {
    "reward_to_update dpo": lambda p: tnb.reward_to_update(p, tnb.rewards.Length(), XS, method="dpo", samples=2,
                                                           eval_samples=1, eval_train=1, **TRAIN),
    "reward_to_update best_of_n": lambda p: tnb.reward_to_update(p, tnb.rewards.Length(), XS, method="best_of_n",
                                                                 samples=2, eval_samples=1, max_new_tokens=4),
    "reward_to_update rejection_sft": lambda p: tnb.reward_to_update(p, tnb.rewards.Length(), XS,
                                                                     method="rejection_sft", samples=2,
                                                                     eval_samples=1, **TRAIN),
    "reward_to_update preferences": lambda p: tnb.reward_to_update(p, preferences=PAIRS, method="dpo", **TRAIN),
    "prompt_to_update kl + probes": lambda p: tnb.prompt_to_update(p, "Talk like a pirate.", XS, probes=PROBES,
                                                                   samples=1, **TRAIN),
    "prompt_to_update holdout=0": lambda p: tnb.prompt_to_update(p, "Talk like a pirate.", XS[:3], holdout=0,
                                                                 samples=1, **TRAIN),
    "update_to_prompt search": lambda p: tnb.update_to_prompt(p.with_prompt("Be brief."), p, XS, method="search",
                                                              rounds=1, proposals=1, edits=1, samples=1,
                                                              proposal_tokens=4, max_new_tokens=4),
    "update_to_prompt soft": lambda p: tnb.update_to_prompt(p.with_prompt("Be brief."), p, XS, method="soft",
                                                            steps=1, n_tokens=2, samples=1, max_new_tokens=4),
    "reward_to_prompt search": lambda p: tnb.reward_to_prompt(p, n_words, XS, rounds=0, candidates=["Be brief."],
                                                              samples=1, max_new_tokens=4),
    "reward_to_prompt conditioned": lambda p: tnb.reward_to_prompt(p, n_words, XS, method="conditioned", bins=2,
                                                                   samples=2, eval_samples=1, **TRAIN),
    "autoregressive reward": lambda p: tnb.train_reward_model(p, preferences=PAIRS, method="autoregressive",
                                                              steps=1, batch_size=2, holdout=0.25),
    "internalise": lambda p: tnb.internalise(p, [("My cat is called Biscotti.", "Nice.")], steps=1, samples=1,
                                             max_new_tokens=4, batch_size=2),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_every_arrow_result_follows_the_one_schema(run: str) -> None:
    result = RUNS[run](tiny_policy(seed=3))
    assert schema_problems(result) == [], run
    assert any(k.endswith(("_before", "_after")) for k in result.metrics), run  # an objective before / after


def test_the_reward_model_metrics_follow_it_too() -> None:
    bt = tnb.train_reward_model(PAIRS, steps=2)
    assert all(metric_key_ok(k) for k in bt.metrics) and all(isinstance(v, (int, float)) for v in bt.metrics.values())


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in BAKED.glob("*/result.json")))
def test_every_shipped_bake_loads_into_the_one_schema(folder: str) -> None:
    meta = _io.read_json(BAKED / folder / "result.json")
    metrics, info = current_schema(dict(meta["metrics"]), dict(meta["info"]))
    assert schema_problems(ArrowResult(metrics=metrics, info=info)) == []
    numbers = [v for k, v in meta["metrics"].items() if not isinstance(v, str) and k != "kl_is_upper_bound"]
    numbers += [v for k, v in meta["info"].items() if k in ("n_train", "n_heldout")]  # counts kept with the settings
    assert sorted(map(repr, numbers)) == sorted(map(repr, metrics.values()))  # values kept exactly


def test_an_old_save_loads_into_the_schema_and_a_current_one_unchanged() -> None:
    old_metrics = {"objective": "kl", "split": "heldout", "train_pairs": 12, "eval_pairs": 4, "eval_tokens": 40,
                   "kl_heldout_before": 0.5, "kl_heldout_after": 0.25, "nll_teacher_heldout": 2.0, "probes": 3,
                   "spearman_heldout_words": 0.5, "base_spearman_heldout": 0.1, "interrupted": False}
    old_info = {"method": "kl", "config": {"objective": "kl", "steps": 30, "lora_r": 8}, "prompts": []}
    metrics, info = current_schema(old_metrics, old_info)
    assert metrics == {"n_train_pairs": 12, "n_eval_pairs": 4, "n_eval_tokens": 40, "kl_heldout_before": 0.5,
                       "kl_heldout_after": 0.25, "nll_teacher_heldout_before": 2.0, "n_probes": 3,
                       "spearman_words_heldout_after": 0.5, "base_spearman_heldout_after": 0.1, "interrupted": False}
    assert info == {"method": "kl", "steps": 30, "lora_r": 8, "prompts": [], "split": "heldout"}
    assert current_schema(metrics, info) == (metrics, info)
    bad = ArrowResult(metrics={"split": "heldout", "kl_after": 0.1, "pairs": 3}, info={"config": {}})
    assert len(schema_problems(bad)) == 6  # a text metric, three keys off the grammar, nested info, no method
