"""Fused multi-LoRA batches give PEFT's mixed-adapter numbers: any row layout, padding, KV cache, adapters that change
(training in place, added, removed), and PEFT's own path wherever fusing does not apply."""

from __future__ import annotations

import contextlib
import gc
import re
import threading
import weakref
from collections.abc import Iterator, Sequence

import pytest
import torch
from peft import LoraConfig
from transformers import DynamicCache

import triangle_nb as tnb
from triangle_nb import fused_lora
from triangle_nb.backbone import Backbone
from triangle_nb.policy import Composition
from triangle_nb.testing import perturbed_adapter

pytestmark = pytest.mark.usefixtures("one_thread")
XS = ["Describe your morning.", "Tell me about rain."]
ATOL = 1e-5
LAYOUTS = {  # rows' adapters (None: the base)
    "DExperts step: base, expert, anti blocks": [None, None, "e", "e", "n", "n"],
    "two adapters, no base": ["e", "e", "n", "n", "e", "e"],
    "base rows between adapter rows": ["e", None, "n", "n", None, "e"],
    "blocks out of first-seen order": [None, "e", "n", "n", "e", None],
    "one adapter, base at the ends": [None, "e", "e", None, None, None],
    "one adapter, base rows between": ["e", None, None, "e", "e", None],
    "one adapter on every row": ["e"] * 6,
    "every row on the base": [None] * 6,
    "three adapters of other ranks and scalings": ["c", "e", None, "n", "c", "n"],
}


@contextlib.contextmanager
def peft_path() -> Iterator[None]:
    """PEFT's own mixed-adapter batch (`adapter_names=`): the numbers before fusing."""
    saved, fused_lora.ENABLED = fused_lora.ENABLED, False
    try:
        yield
    finally:
        fused_lora.ENABLED = saved


def lora_b(bb: Backbone, name: str) -> list[torch.Tensor]:
    return [p for n, p in bb.model.named_parameters() if f"lora_B.{name}." in n]


def with_adapters(policy: tnb.Policy) -> Backbone:
    """Adapters e and n (the default config), and c (rank 4, scaling 13/4, attention only)."""
    perturbed_adapter(policy, "e", seed=1)
    perturbed_adapter(policy, "n", seed=2)
    policy.backbone.add_adapter("c", LoraConfig(r=4, lora_alpha=13, target_modules=["q_proj", "v_proj", "o_proj"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in lora_b(policy.backbone, "c"):
            p.normal_(0.0, 0.3, generator=gen)
    return policy.backbone


def padded_batch(rows: int, length: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids, left-padded: row i has i % 3 pad positions."""
    ids = torch.randint(0, 2000, (rows, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for i in range(rows):
        mask[i, : i % 3] = 0
    return ids, mask


@torch.inference_mode()
def logits(bb: Backbone, adapters: Sequence[str | None], seed: int = 0) -> torch.Tensor:
    ids, mask = padded_batch(len(adapters), seed=seed)
    return bb.forward(ids, mask, adapters=adapters)[0]


@torch.inference_mode()
def fuses(bb: Backbone, adapters: Sequence[str | None]) -> bool:
    """An inference forward with these rows takes the fused path."""
    return fused_lora.rows(bb.model, adapters) is not None


def assert_peft(bb: Backbone, adapters: Sequence[str | None]) -> torch.Tensor:
    """The fused forward's logits equal PEFT's mixed batch (and the fused path did run)."""
    assert fuses(bb, adapters)
    ours = logits(bb, adapters)
    with peft_path():
        theirs = logits(bb, adapters)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-5)
    assert not any("forward" in m.__dict__ for m in bb.model.modules())  # the layers' own forwards are back
    return ours


@pytest.mark.parametrize("adapters", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_fused_rows_equal_peft_mixed_batch(tiny: tnb.Policy, adapters: list[str | None]) -> None:
    bb = with_adapters(tiny)
    ours = assert_peft(bb, adapters)
    base = logits(bb, [None] * len(adapters))
    on_base = torch.tensor([a is None for a in adapters])
    torch.testing.assert_close(ours[on_base], base[on_base], atol=ATOL, rtol=1e-5)
    assert bool(on_base.all()) or bool((ours[~on_base] - base[~on_base]).abs().amax() > 1e-2)  # the adapters act


def test_bf16_base_with_float32_adapters_equals_peft(tiny: tnb.Policy) -> None:
    """A bf16 base (GPU loads) gets float32 adapters from PEFT (autocast_adapter_dtype): cast as PEFT casts."""
    tiny.backbone.model.to(torch.bfloat16)
    bb = with_adapters(tiny)
    assert {p.dtype for n, p in bb.model.named_parameters() if "lora_" in n} == {torch.float32}
    for adapters in (LAYOUTS["DExperts step: base, expert, anti blocks"], LAYOUTS["base rows between adapter rows"]):
        assert_peft(bb, adapters)


def test_kv_cached_decoding_steps_equal_peft(tiny: tnb.Policy) -> None:
    bb = with_adapters(tiny)
    adapters = [None, None, "e", "e", "n", "n"]
    ids, mask = padded_batch(6)
    steps = {}
    for name, path in (("fused", contextlib.nullcontext), ("peft", peft_path)):
        with path(), torch.inference_mode():
            m, cache, pos = mask, DynamicCache(), mask.sum(-1, keepdim=True)
            out, cache = bb.forward(ids, m, adapters=adapters, past_key_values=cache, use_cache=True, logits_to_keep=1)
            seen = [out[:, -1]]
            for step in range(4):
                nxt = seen[-1].argmax(-1, keepdim=True)
                m = torch.cat([m, torch.ones_like(nxt)], dim=-1)
                out, cache = bb.forward(nxt, m, adapters=adapters, position_ids=pos + step, past_key_values=cache,
                                        use_cache=True, logits_to_keep=1)
                seen.append(out[:, -1])
        steps[name] = torch.stack(seen)
    torch.testing.assert_close(steps["fused"], steps["peft"], atol=ATOL, rtol=1e-5)


def test_weights_changed_in_place_are_reflected(tiny: tnb.Policy) -> None:
    bb = with_adapters(tiny)
    adapters = LAYOUTS["DExperts step: base, expert, anti blocks"]
    before = assert_peft(bb, adapters)  # the stacks are cached now
    with torch.no_grad():
        for p in lora_b(bb, "e"):
            p.mul_(-2.0)  # in place: a new _version, the same tensor
    after = assert_peft(bb, adapters)
    assert bool((after[2:4] - before[2:4]).abs().amax() > 1e-2)
    torch.testing.assert_close(after[4:], before[4:], atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("change", ["data swap", "new parameter", "scaling"])
def test_weights_replaced_or_rescaled_are_reflected(tiny: tnb.Policy, change: str) -> None:
    bb = with_adapters(tiny)
    adapters = LAYOUTS["base rows between adapter rows"]
    before = assert_peft(bb, adapters)
    for module in bb.model.modules():
        if "n" in getattr(module, "lora_B", {}):
            lin = module.lora_B["n"]
            if change == "data swap":
                lin.weight.data = lin.weight.data * 3.0
            elif change == "new parameter":
                lin.weight = torch.nn.Parameter(lin.weight.detach() * 3.0)
            else:
                module.set_scale("n", 3.0)
    after = assert_peft(bb, adapters)
    assert bool((after[2:4] - before[2:4]).abs().amax() > 1e-2)


def test_a_training_step_is_reflected(tiny: tnb.Policy) -> None:
    bb = with_adapters(tiny)
    adapters = LAYOUTS["DExperts step: base, expert, anti blocks"]
    before = assert_peft(bb, adapters)
    params = [p for n, p in bb.model.named_parameters() if ".e." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=1.0)
    ids, mask = padded_batch(2, seed=5)
    with bb.training():
        bb.forward(ids, mask, adapters=["e", "e"])[0].logsumexp(-1).mean().backward()
    opt.step()
    after = assert_peft(bb, adapters)
    assert bool((after[2:4] - before[2:4]).abs().amax() > 1e-3)


def test_adding_and_removing_adapters_is_reflected(tiny: tnb.Policy) -> None:
    bb = with_adapters(tiny)
    assert_peft(bb, [None, "e", "n"])
    perturbed_adapter(tiny, "d", seed=4)
    assert_peft(bb, [None, "e", "d"])
    probe = weakref.ref(lora_b(bb, "e")[0])
    bb.remove_adapter("e")
    gc.collect()
    assert probe() is None  # the cache keeps no removed adapter alive
    assert_peft(bb, [None, "n", "d"])
    first = assert_peft(bb, ["d", "n", "d"])
    bb.remove_adapter("d")
    perturbed_adapter(tiny, "d", seed=9)  # the same name, other weights
    second = assert_peft(bb, ["d", "n", "d"])
    assert bool((second[0] - first[0]).abs().amax() > 1e-2)


def test_training_gradients_equal_peft(tiny: tnb.Policy) -> None:
    """A `training()` forward/backward goes through PEFT as before: the gradients of PEFT's model called directly."""
    bb = with_adapters(tiny)
    assert_peft(bb, LAYOUTS["DExperts step: base, expert, anti blocks"])  # fused eval forwards ran before
    params = [p for n, p in bb.model.named_parameters() if ".e." in n and "lora_" in n]
    ids, mask = padded_batch(3, seed=7)
    grads = []
    for direct in (False, True):
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with bb.training():
            if direct:
                with bb.lock:
                    bb.model.set_adapter("e")
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    out = bb.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
            else:
                out = bb.forward(ids, mask, adapters=["e"] * 3)[0]
            out.logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in params])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert any(bool(g.abs().amax() > 0) for g in grads[0])


@pytest.mark.parametrize("adapters", [["e"] * 3, [None, "e", "n"]], ids=["one adapter", "mixed"])
def test_eval_mode_gradients_equal_peft(tiny: tnb.Policy, adapters: list[str | None]) -> None:
    """With gradients on in eval mode, the adapters still receive PEFT's gradients (mixed batches: PEFT's path)."""
    bb = with_adapters(tiny)
    params = [p for n, p in bb.model.named_parameters() if ".e." in n and "lora_" in n]
    ids, mask = padded_batch(3, seed=8)
    grads = []
    for path in (contextlib.nullcontext, peft_path):
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with path():
            bb.forward(ids, mask, adapters=adapters)[0].logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in params])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_gradients_into_a_soft_prompt_through_fused_rows_equal_peft(tiny: tnb.Policy) -> None:
    """Frozen adapters, trainable input vectors (a soft prompt) in eval mode: the stacks built under inference mode
    before carry the gradient to the vectors as PEFT does."""
    bb = with_adapters(tiny)
    adapters = [None, "e", "n"]
    assert_peft(bb, adapters)  # stacks built under inference_mode
    for p in bb.model.parameters():
        p.requires_grad_(False)
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    virtual = torch.tensor(bb.register_soft_tokens(vectors))
    ids, mask = padded_batch(3, seed=9)
    ids[:, -3:-1] = virtual
    assert fused_lora.rows(bb.model, adapters) is not None  # gradients on, but none into the adapters
    grads = []
    for path in (contextlib.nullcontext, peft_path):
        vectors.grad = None
        with path():
            bb.forward(ids, mask, adapters=adapters)[0].logsumexp(-1).mean().backward()
        grads.append(vectors.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert bool(grads[0].abs().amax() > 0)


FALLBACKS = {  # an adapter that is not plain LoRA on nn.Linear; whether the plain ones beside it still fuse
    "DoRA": (LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True), True),
    "lora_bias": (LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_bias=True), True),
    "embedding LoRA": (LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]), False),  # a non-Linear layer
}


@pytest.mark.parametrize(("config", "others_fuse"), FALLBACKS.values(), ids=FALLBACKS.keys())
def test_other_adapters_fall_back_to_peft(tiny: tnb.Policy, config: LoraConfig, others_fuse: bool) -> None:
    bb = with_adapters(tiny)
    bb.add_adapter("x", config)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if ".x" in n and ("lora_B" in n or "lora_embedding_B" in n):
                p.normal_(0.0, 0.2, generator=gen)
    adapters = [None, "e", "x"]
    assert not fuses(bb, adapters)
    with peft_path():
        try:
            theirs = logits(bb, adapters)
        except ValueError as exc:  # PEFT refuses DoRA in a mixed batch: so do we, with its message
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                logits(bb, adapters)
            theirs = None
    if theirs is not None:
        torch.testing.assert_close(logits(bb, adapters), theirs, atol=0.0, rtol=0.0)
    if others_fuse:
        assert_peft(bb, [None, "e", "n"])
    else:
        assert not fuses(bb, [None, "e", "n"])


def test_compositions_generate_the_same_greedy_tokens(tiny: tnb.Policy) -> None:
    expert, anti = perturbed_adapter(tiny, "expert", seed=1), perturbed_adapter(tiny, "anti", seed=2)
    policies = {"dexperts": tnb.presets.dexperts(tiny, expert, anti),
                "composition": Composition(parts=((tiny, 1.0), (expert, 1.0), (anti, -1.0))),
                "two adapters": Composition(parts=((expert, 1.5), (anti, -0.5)))}
    for policy in policies.values():
        ours = policy.generate_ids(XS, max_new_tokens=6)
        with peft_path():
            theirs = policy.generate_ids(XS, max_new_tokens=6)
        assert ours == theirs


def test_threads_each_get_their_rows(tiny: tnb.Policy) -> None:
    """Forwards of other layouts from other threads (one at a time under the lock) each get their own numbers."""
    bb = with_adapters(tiny)
    layouts = list(LAYOUTS.values())[:4]
    expected = [logits(bb, a) for a in layouts]
    got: dict[int, list[torch.Tensor]] = {}

    def work(k: int) -> None:
        got[k] = [logits(bb, layouts[(k + j) % len(layouts)]) for j in range(len(layouts))]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
    for k, outs in got.items():
        for j, out in enumerate(outs):
            torch.testing.assert_close(out, expected[(k + j) % len(layouts)], atol=0.0, rtol=0.0)
    assert len(got) == 3


def test_plan_splits_rows_into_blocks() -> None:
    p = fused_lora.plan([None, None, "e", "e", "n", "n"])
    assert (p.names, p.lo, p.hi, p.blocks, p.slots, p.zero) == (("e", "n"), 2, 6, 2, None, False)
    p = fused_lora.plan(["e", None, "n", "n"])
    assert (p.names, p.blocks, p.slots, p.zero) == (("e", "n"), 4, (0, 2, 1, 1), True)
    assert fused_lora.plan([None, None]).names == ()
