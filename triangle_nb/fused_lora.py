"""Fused multi-LoRA batches: one forward whose rows use different LoRA adapters (or none), one op pair per layer.

An Eq. 7 decoding step with LoRA components (DExperts: π0 + expert − anti) is one batched forward whose rows use
different adapters. PEFT runs such a batch with `adapter_names=`: it registers a hook on every LoRA layer on each
call, and each of those layers (210 on SmolLM2-135M: 7 projections × 30 layers), for each adapter in the batch,
gathers that adapter's rows, runs lora_A, lora_B and the scaling, and scatters the sum back. At r = 16 that is
dispatch overhead, not arithmetic: on CPU, DExperts generated at ~0.55× plain `generate`. punica's and S-LoRA's
batched multi-LoRA kernels (BGMV) are CUDA-only, and no library offers one for CPU torch, so we write the small
part we need in plain torch, the same idea:

    out = base_layer(x) + (x @ A[slot]) @ B[slot]      # per row; B has the scaling folded in

Per LoRA layer the batch's adapters are stacked once (A: [S, in, r], B: [S, r, out], zero-padded to the largest
rank) and cached (a copy of those adapters' LoRA weights, for the last few adapter orders). The cache is rebuilt
when adapters are added or removed (the model's PEFT configs) and, layer by layer, when a weight changes: training
updates them in place, so each weight's identity (a weak reference), `_version` and storage are the key. The rows
of a decoding batch come in equal contiguous blocks, one per component, so x is viewed as [blocks, rows, in] and
each layer does one bmm and one in-place baddbmm, with no gather: base rows before and after the adapter rows are
sliced off, and a batch on one adapter uses that adapter's own weights (no copy, and gradients reach them).

`rows(model, adapters)` puts this forward on every LoRA layer for the length of one model call (the caller holds
`Backbone.lock`: the layers and this cache are shared) and returns None where fusing does not apply, so the caller
takes PEFT's own path: train mode, gradients into several adapters (the stacks are copies), a merged or non-LoRA
PEFT model, modules_to_save, or an adapter that is not plain LoRA on `nn.Linear` (DoRA and the other variants,
lora_bias, fan_in_fan_out, embedding or conv layers, quantised layers). Dropout is the identity in eval mode.
`ENABLED = False` (or TRIANGLE_NB_FUSED_LORA=0 in the environment) always takes PEFT's path: benchmarks time both.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper

ENABLED = os.environ.get("TRIANGLE_NB_FUSED_LORA", "1") != "0"  # False: always PEFT's adapter_names path
_CACHED_PLANS = 4  # adapter orders whose stacks are kept (a decode uses one; each holds a copy of its adapters)
_ATTR = "_triangle_nb_fused_lora"  # the cache lives on the PeftModel it describes, and dies with it
BASE = "__base__"  # PEFT's adapter name for the base rows


@dataclass(frozen=True)
class _Plan:
    """How one batch maps onto the stacks: rows [lo, hi) are `blocks` equal blocks, block j on slot slots[j].

    `names` are the stacked adapters in slot order (a last all-zero slot when `zero`: base blocks between adapter
    blocks); `slots` is None when block j is slot j. No names: every row is on the base.
    """

    names: tuple[str, ...]
    zero: bool
    lo: int
    hi: int
    blocks: int
    slots: tuple[int, ...] | None
    batch: int


def plan(adapters: Sequence[str | None]) -> _Plan:
    """Split a batch's per-row adapters (None: the base) into equal contiguous blocks, each on one adapter.

    >>> plan([None, None, "e", "e", "a", "a"])  # a DExperts step: base rows first, then expert, then anti
    _Plan(names=('e', 'a'), zero=False, lo=2, hi=6, blocks=2, slots=None, batch=6)
    """
    size = math.gcd(*(len(list(run)) for _, run in itertools.groupby(adapters)))
    per_block = list(adapters[::size]) if adapters else []
    used = [j for j, a in enumerate(per_block) if a is not None]
    if not used:
        return _Plan((), False, 0, 0, 0, None, len(adapters))
    lo, hi = used[0] * size, (used[-1] + 1) * size  # base rows before and after the adapter rows are left out
    span = per_block[used[0] : used[-1] + 1]
    names = tuple(dict.fromkeys(a for a in span if a is not None))
    zero = None in span
    if len(names) == 1 and not zero:
        return _Plan(names, False, lo, hi, 1, None, len(adapters))
    slots = tuple(len(names) if a is None else names.index(a) for a in span)
    return _Plan(names, zero, lo, hi, len(span), None if slots == tuple(range(len(span))) else slots, len(adapters))


class _Stack:
    """One LoRA layer's adapters for one plan: A [S, in, r] and B [S, r, out] (scaling folded in)."""

    def __init__(self, layer: LoraLinear, names: tuple[str, ...], zero: bool) -> None:
        weights = _weights(layer, names)
        self.key = _key(layer, names, weights)
        r = max(a.shape[0] for a, _ in weights if a is not None)
        ref = next(a for a, _ in weights if a is not None)
        with torch.inference_mode(False), torch.no_grad():  # plain tensors: a later forward may need gradients
            self.A = ref.new_zeros(len(names) + zero, layer.in_features, r)
            self.B = ref.new_zeros(len(names) + zero, r, layer.out_features)
            for s, (a, b) in enumerate(weights):
                if a is not None:
                    self.A[s, :, : a.shape[0]] = a.t()
                    self.B[s, : a.shape[0]] = b.t() * layer.scaling[names[s]]

    def fresh(self, layer: LoraLinear, names: tuple[str, ...]) -> bool:
        return _key(layer, names, _weights(layer, names)) == self.key


Weights = list[tuple[torch.Tensor, torch.Tensor] | tuple[None, None]]


def _weights(layer: LoraLinear, names: tuple[str, ...]) -> Weights:
    """(lora_A, lora_B) weight per name; (None, None) where the layer does not have that adapter."""
    mods_a, mods_b = layer.lora_A._modules, layer.lora_B._modules
    return [(mods_a[n]._parameters["weight"], mods_b[n]._parameters["weight"]) if n in mods_a else (None, None)
            for n in names]


def _key(layer: LoraLinear, names: tuple[str, ...], weights: Weights) -> tuple[object, ...]:
    """What a stack depends on: each weight (by weak reference: a removed adapter is freed), its in-place version
    (training steps) and storage (`.data` swaps, device moves), and each adapter's scaling."""
    return tuple(None if a is None else (_Id(a), a._version, a.data_ptr(), _Id(b), b._version, b.data_ptr(),
                                         layer.scaling[n]) for n, (a, b) in zip(names, weights, strict=True))


class _Id:
    """A tensor by weak reference, equal to another only for the same live tensor."""

    __slots__ = ("ref",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.ref = weakref.ref(tensor)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Id) and self.ref() is not None and self.ref() is other.ref()

    __hash__ = None  # type: ignore[assignment]


class FusedLora:
    """The LoRA layers of one PeftModel and their cached stacks (`rows` finds or makes it on the model)."""

    def __init__(self, model: PeftModel) -> None:
        self.configs = tuple(model.peft_config.items())  # what the layers below were found for
        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        fusable = all(isinstance(c, LoraConfig) for _, c in self.configs) and all(
            type(m) is LoraLinear and isinstance(m.base_layer, torch.nn.Linear) and not m.fan_in_fan_out
            for m in self.layers) and not any(isinstance(m, AuxiliaryTrainingWrapper) for m in model.modules())
        self.plain = {n for n, _ in self.configs if fusable and all(_plain(m, n) for m in self.layers)}
        self.stacks: OrderedDict[tuple[tuple[str, ...], bool], list[_Stack | None]] = OrderedDict()
        self.forwards = [_Forward(self, m) for m in self.layers]
        self.current: _Plan | None = None  # the plan of the model call under way
        self.names: list[str] = []  # and its rows' adapters as PEFT names them
        self.index: torch.Tensor | None = None  # and its slots as a tensor, unless block j is slot j

    def current_for(self, model: PeftModel) -> bool:
        return len(self.configs) == len(model.peft_config) and all(
            model.peft_config.get(n) is c for n, c in self.configs)

    def stacks_for(self, p: _Plan) -> list[_Stack | None]:
        """The stacks of plan `p`, rebuilt for the layers whose adapter weights changed since."""
        key = (p.names, p.zero)
        stacks = self.stacks.pop(key, None) or [None] * len(self.layers)
        for i, layer in enumerate(self.layers):
            has = any(n in layer.lora_A for n in p.names)
            if not has:
                stacks[i] = None
            elif stacks[i] is None or not stacks[i].fresh(layer, p.names):
                stacks[i] = _Stack(layer, p.names, p.zero)
        self.stacks[key] = stacks
        while len(self.stacks) > _CACHED_PLANS:
            self.stacks.popitem(last=False)
        return stacks


def _plain(layer: LoraLinear, name: str) -> bool:
    """Adapter `name` on `layer` is plain LoRA: two bias-free linears and a scaling (or absent from the layer)."""
    if name not in layer.lora_A:
        return name not in layer.lora_variant and name not in layer.lora_embedding_A
    a, b = layer.lora_A[name], layer.lora_B[name]
    return (name not in layer.lora_variant and not layer.lora_bias.get(name, False) and type(a) is torch.nn.Linear
            and type(b) is torch.nn.Linear and a.bias is None and b.bias is None)


Lora = tuple[torch.Tensor, torch.Tensor, float]  # one layer's A [S, in, r], B [S, r, out] and a scaling for B


class _Forward:
    """The forward put on layer i for one call: base_layer(x) plus the current plan's LoRA rows."""

    def __init__(self, fused: FusedLora, layer: LoraLinear) -> None:
        self.fused, self.layer = fused, layer
        self.lora: Lora | None = None  # this call's; None: the layer has none of the batch's adapters

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer, p = self.layer, self.fused.current
        if kwargs:
            kwargs.pop("adapter_names", None)  # from a hook PEFT left behind when one of its forwards raised: stale
        if p is None or x.shape[0] != p.batch:  # rows not on dim 0 (no model we know): PEFT's result or error
            return type(layer).forward(layer, x, *args, adapter_names=self.fused.names, **kwargs)
        out = layer.base_layer(x, *args, **kwargs)
        if self.lora is None or layer.disable_adapters:
            return out
        a, b, alpha = self.lora
        if self.fused.index is not None:  # blocks out of slot order: gather their slots
            a, b = a[self.fused.index], b[self.fused.index]
        out = out.contiguous()
        xs, ys = x, out
        if p.hi - p.lo != p.batch:  # base rows before and after the adapter rows: left out
            xs, ys = x.narrow(0, p.lo, p.hi - p.lo), out.narrow(0, p.lo, p.hi - p.lo)
        xs = xs.reshape(p.blocks, -1, x.shape[-1])  # rows, T, in -> blocks, rows · T, in
        ys = ys.view(p.blocks, -1, out.shape[-1])  # the same rows of out, written in place
        if xs.dtype != a.dtype:  # LoRA weights in another dtype than the base (autocast_adapter_dtype): as PEFT
            ys += (torch.bmm(torch.bmm(xs.to(a.dtype), a), b) * alpha).to(ys.dtype)
        else:
            ys.baddbmm_(torch.bmm(xs, a), b, alpha=alpha)
        return out


def rows(model: torch.nn.Module, adapters: Sequence[str | None]) -> contextlib.AbstractContextManager[None] | None:
    """A context in which one call of `model` (without `adapter_names`) runs row i through adapter `adapters[i]`
    (None: the base) with the fused forward, or None where fusing does not apply (then use PEFT's path).

    Call it with the model's lock held (`Backbone.lock`) and keep it held until the context exits.
    """
    if not ENABLED or not isinstance(model, PeftModel) or model.training:
        return None
    fused = model.__dict__.get(_ATTR)
    if fused is None or not fused.current_for(model):
        fused = FusedLora(model)
        model.__dict__[_ATTR] = fused
    p = plan(adapters)
    if not set(p.names) <= fused.plain or any(m.merged_adapters or "forward" in m.__dict__ for m in fused.layers):
        return None
    if len(p.names) == 1 and not p.zero:  # one block: the adapter's own weights
        loras = [_own(m, p.names[0]) for m in fused.layers]
    elif p.names:
        if torch.is_grad_enabled() and _any_grad(fused.layers, p.names):
            return None  # the stacks are copies: gradients into the adapters go through PEFT
        loras = [None if st is None else (st.A, st.B, 1.0) for st in fused.stacks_for(p)]
    else:
        loras = [None] * len(fused.layers)
    return _patched(fused, p, [a or BASE for a in adapters], loras)


def _own(layer: LoraLinear, name: str) -> Lora | None:
    """Adapter `name` on `layer` as one slot, by reference: lora_A [1, in, r], lora_B [1, r, out], its scaling."""
    if name not in layer.lora_A:
        return None
    return layer.lora_A[name].weight.t()[None], layer.lora_B[name].weight.t()[None], layer.scaling[name]


def _any_grad(layers: list[LoraLayer], names: tuple[str, ...]) -> bool:
    return any(w.requires_grad for m in layers for n in names if n in m.lora_A
               for w in (m.lora_A[n].weight, m.lora_B[n].weight))


@contextlib.contextmanager
def _patched(fused: FusedLora, p: _Plan, names: list[str], loras: list[Lora | None]) -> Iterator[None]:
    """Every LoRA layer's forward replaced by its fused forward (an instance attribute) until the block exits."""
    fused.current, fused.names = p, names
    fused.index = None if p.slots is None else torch.tensor(p.slots)
    for layer, fwd, lora in zip(fused.layers, fused.forwards, loras, strict=True):
        fwd.lora = lora
        layer.__dict__["forward"] = fwd
    try:
        yield
    finally:
        for layer, fwd in zip(fused.layers, fused.forwards, strict=True):
            layer.__dict__.pop("forward", None)
            fwd.lora = None
        fused.current, fused.names, fused.index = None, [], None
