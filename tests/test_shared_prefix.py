"""Shared-prefix scoring (issue 16): pairs that share a prompt encode it once, and score exactly as if each pair
ran alone — with several responses per prompt, prompts of other lengths, one-token responses, adapters, exit
layers, prompts z and soft prompts, in every way the batches can be cut."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb import scoring
from triangle_nb.chat import end_of_turn_ids, prompt_ids, response_ids
from triangle_nb.errors import ContextLengthError, InvalidArgumentError
from triangle_nb.soft_prompt import SoftPrompt
from triangle_nb.testing import perturbed_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

XS = ["Hi", "Tell me about rain, please, in a few words.", "What is 2+2?"]
YS = ["Hello there!", "", "4", "Rain is water falling from clouds, and then it runs into the rivers."]  # "": 1 token
PAIRS = [(x, y) for x in XS for y in YS] + [("A prompt of its own, asked once.", "Once.")]

# The forward cost the batching trades against padding: 0 takes every saving (a stem whenever one exists, one
# forward per response length), a huge one none (no stem: left-padded prompts from scratch, one run per batch).
COSTS = {"default": None, "every saving": 0, "no saving": 10**9}


@pytest.fixture(params=list(COSTS))
def cost(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if COSTS[request.param] is not None:
        monkeypatch.setattr(scoring, "_forward_cost", lambda device: COSTS[request.param])


def variants(tiny: tnb.Policy) -> dict[str, tnb.Policy]:
    soft = SoftPrompt.create(tiny, torch.randn(3, 64, generator=torch.Generator().manual_seed(1)), system="Be brief.")
    return {"base": tiny, "adapter": perturbed_adapter(tiny), "exit layer": tiny.at_layer(1),
            "prompt z": tiny.with_prompt("You are a terse assistant."), "soft prompt": tiny.with_prompt(soft)}


def alone(policy: tnb.Policy, x: str, y: str, *, end_of_turn: bool = True, extra: int = 0) -> torch.Tensor:
    """Independent computation: one unpadded forward of the pair's whole sequence, no cache, no batching.

    Returns the log-distributions [len(y tokens) + extra, V] that predict each response token (and the next)."""
    bb = policy.backbone
    p = prompt_ids(bb.tokenizer, policy.prompt, x)
    r = response_ids(bb.tokenizer, y, end_of_turn_ids(bb.tokenizer, bb.stop_ids), end_of_turn)
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logits, _ = bb.forward(ids, torch.ones_like(ids), adapters=[policy.adapter], exit_layers=[policy.exit_layer])
    return torch.log_softmax(logits[0, len(p) - 1 : len(p) - 1 + len(r) + extra], dim=-1)


def alone_logprob(policy: tnb.Policy, x: str, y: str, **kw: bool) -> float:
    bb = policy.backbone
    r = response_ids(bb.tokenizer, y, end_of_turn_ids(bb.tokenizer, bb.stop_ids), kw.get("end_of_turn", True))
    return float(alone(policy, x, y, **kw).gather(-1, torch.tensor(r)[:, None]).sum())


@pytest.mark.parametrize("batch_size", [16, 2])
@pytest.mark.parametrize("variant", ["base", "adapter", "exit layer", "prompt z", "soft prompt"])
def test_shared_prompts_score_like_each_pair_alone(tiny: tnb.Policy, cost: None, variant: str, batch_size: int) -> None:
    policy = variants(tiny)[variant]
    xs, ys = map(list, zip(*PAIRS, strict=True))
    lp = policy.logprobs(xs, ys, batch_size=batch_size)
    expected = [alone_logprob(policy, x, y) for x, y in PAIRS]
    np.testing.assert_allclose(lp.sum, expected, rtol=1e-5, atol=1e-4)
    assert [len(p) for p in lp.per_token] == [len(t) for t in lp.token_ids]
    assert min(len(t) for t in lp.token_ids) == 1  # y = "": the end-of-turn token alone


@pytest.mark.parametrize("with_next", [False, True])
def test_distributions_of_shared_prompts_are_each_pair_alone(tiny: tnb.Policy, cost: None, with_next: bool) -> None:
    pa, pz = perturbed_adapter(tiny), tiny.with_prompt("You are a terse assistant.")
    xs, ys = map(list, zip(*PAIRS, strict=True))
    dists, _ = scoring.distributions([pa, pz, tiny.at_layer(1)], xs, ys, batch_size=4, end_of_turn=False,
                                     with_next=with_next)
    for comp, got in zip([pa, pz, tiny.at_layer(1)], dists, strict=True):
        for (x, y), block in zip(PAIRS, got, strict=True):
            torch.testing.assert_close(block, alone(comp, x, y, end_of_turn=False, extra=int(with_next)),
                                       rtol=1e-4, atol=1e-4)


def test_a_composition_scores_shared_prompts_like_its_next_token_distributions(tiny: tnb.Policy) -> None:
    pol = tnb.steer(base=tiny, expert=perturbed_adapter(tiny), anti=tiny.with_prompt("Be gloomy."))
    xs, ys = ["Hi"] * 3, ["Hello", "Hello there", "Hi!"]
    per_token = pol.logprobs(xs, ys, end_of_turn=False).per_token
    for y, lp in zip(ys, per_token, strict=True):
        ids = response_ids(tiny.tokenizer, y, (), False)
        prefixes = [tiny.tokenizer.decode(ids[:t]) for t in range(len(ids))]
        nxt = pol.next_token_logprobs(["Hi"] * len(ids), prefixes)
        np.testing.assert_allclose(lp, nxt[torch.arange(len(ids)), torch.tensor(ids)].double().numpy(), atol=1e-4)


def forwards(policy: tnb.Policy, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (rows, real new tokens) of each forward the backbone runs."""
    seen: list[tuple[int, int]] = []
    inner: Callable[..., object] = policy.backbone.forward

    def spy(ids: torch.Tensor, mask: torch.Tensor, **kw: object) -> object:
        new = mask[:, -ids.shape[1] :]
        seen.append((len(ids), int(new.sum())))
        return inner(ids, mask, **kw)

    monkeypatch.setattr(policy.backbone, "forward", spy)
    return seen


def test_each_prompt_is_encoded_once_and_forwards_keep_to_batch_size(tiny: tnb.Policy,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    xs, ys = ["Tell me about rain."] * 6 + ["Hi"] * 6, [f"Answer number {k}." for k in range(12)]
    rows = scoring.encode_rows(tiny, xs, ys)
    seen = forwards(tiny, monkeypatch)
    tiny.logprobs(xs, ys, batch_size=4)
    prompts = {tuple(p) for p, _ in rows}
    fed = sum(len(p) for p in prompts) + sum(len(r) - 1 for _, r in rows)  # a response's last token predicts nothing
    assert sum(t for _, t in seen) <= fed
    assert max(n for n, _ in seen) <= 4


def test_distinct_prompts_with_nothing_to_share_keep_one_forward_per_batch(tiny: tnb.Policy,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "_forward_cost", lambda device: 10**9)  # no stem is worth a forward
    seen = forwards(tiny, monkeypatch)
    tiny.logprobs(XS, ["Yes."] * 3, batch_size=2)
    assert [n for n, _ in seen] == [2, 1]


def test_context_length_is_checked_and_truncation_scores_the_kept_tokens(tiny: tnb.Policy, cost: None) -> None:
    long = " ".join(["rain"] * 600)  # past the tiny model's 512 positions
    xs, ys = [long, long, "Hi"], ["Wet.", "Very wet indeed.", "Hello!"]
    with pytest.raises(ContextLengthError):
        tiny.logprobs(xs, ys)
    got = tiny.logprobs(xs, ys, truncate=True).sum
    bb = tiny.backbone
    for (p, r), value in zip(scoring.encode_rows(tiny, xs, ys, truncate=True), got, strict=True):
        assert len(p) + len(r) <= bb.context_length
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits, _ = bb.forward(ids, torch.ones_like(ids), adapters=[None])
        lp = torch.log_softmax(logits[0, len(p) - 1 : -1], dim=-1)
        np.testing.assert_allclose(value, float(lp.gather(-1, torch.tensor(r)[:, None]).sum()), rtol=1e-5, atol=1e-4)


def test_runs_trade_padding_against_forwards() -> None:
    assert [list(r) for r in scoring._runs([1, 1, 2, 9, 9], limit=16, cost=4)] == [[0, 1, 2], [3, 4]]
    assert [list(r) for r in scoring._runs([1, 1, 2, 9, 9], limit=2, cost=100)] == [[0, 1], [2], [3, 4]]


def test_stem_is_the_common_prefix_when_worth_a_forward() -> None:
    assert scoring._stem([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3)], cost=0) == (1, 2)
    assert scoring._stem([(1, 2, 3), (1, 2, 3)], cost=0) == (1, 2)  # each prompt keeps a token of its own
    assert scoring._stem([(1, 2, 3, 4), (1, 2, 5)], cost=2) == ()  # 2 tokens saved once: not worth a forward
    assert scoring._stem([(7, 8)], cost=0) == ()


# -- decoding: `generate(..., shared_prefix=True)` encodes the common prompt prefix once ------------------------------
HISTORY = tnb.Prompt(system="You are a helpful assistant. Earlier the user said: my cat is called Biscotti, I live in "
                            "Lyon, and my favourite colour is teal. " * 3)
QUESTIONS = ["What is my cat called?", "Where do I live?", "What is my favourite colour? Answer in one word."]


@pytest.mark.parametrize("variant", ["base", "adapter", "exit layer", "soft prompt"])
def test_decoding_with_a_shared_prefix_equals_the_row_by_row_prefill(tiny: tnb.Policy, variant: str) -> None:
    """Every step's log-probs of the shared-prefix prefill equal the row-by-row one to float rounding, so greedy
    decoding gives the same tokens (on a random tiny model: no near-ties at 1e-4)."""
    from triangle_nb.decoding import decode

    base = variants(tiny)[variant]
    policy = base.with_prompt(HISTORY) if variant != "soft prompt" else base
    xs = QUESTIONS if variant != "soft prompt" else [HISTORY.system + q for q in QUESTIONS]
    runs = [decode([policy], [1.0], xs, max_new_tokens=6, record=True, shared_prefix=s) for s in (False, True)]
    assert runs[0].token_ids == runs[1].token_ids
    for a, b in zip(runs[0].combined_logprobs, runs[1].combined_logprobs, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-4)


def test_decoding_encodes_the_shared_prefix_once(tiny: tnb.Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tiny.with_prompt(HISTORY)
    rows = [prompt_ids(tiny.tokenizer, HISTORY, q) for q in QUESTIONS]
    stem = scoring._stem([tuple(r) for r in rows], 0)
    assert len(stem) > 50
    seen = forwards(tiny, monkeypatch)
    policy.generate(QUESTIONS, max_new_tokens=1, shared_prefix=True)
    assert seen[0] == (1, len(stem))  # the stem: one row
    assert seen[1] == (3, sum(len(r) - len(stem) for r in rows))  # then only the tails
    seen.clear()
    policy.generate(QUESTIONS, max_new_tokens=1)  # the default: the rows left-padded, prefilled together
    assert seen == [(3, sum(len(r) for r in rows))]
    with pytest.raises(InvalidArgumentError, match="shared_prefix"):
        policy.generate(QUESTIONS, max_new_tokens=1, shared_prefix="yes")
