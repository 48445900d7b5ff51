"""The identity of a baked call's arguments: canonical JSON for policies, prompts, rewards, tensors, configs and
datasets, and its SHA-256 (the key). Low in the house: policies, rewards and the sample store use it to describe
themselves; `_bakery` keys runs by it. Only hashlib, json, numpy and torch.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Unkeyable(Exception):
    """An argument whose identity cannot be written down exactly (a plain function, an unknown object)."""


def identity(value: Any) -> Any:
    """The canonical JSON description of an argument; raises `Unkeyable` where none is exact."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # JSON writes a float's shortest exact repr
    if isinstance(value, enum.Enum):
        return identity(value.value)
    if isinstance(value, (np.integer, np.floating)):
        return identity(value.item())
    if isinstance(value, Path):
        raise Unkeyable("a path")
    if hasattr(value, "bake_identity"):  # policies, prompts, rewards
        return identity(value.bake_identity())
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value), "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, Mapping):
        return {str(k): identity(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [identity(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"dataclass": type(value).__name__, **identity(fields)}
    if type(value).__name__ == "Dataset" and hasattr(value, "to_dict"):  # datasets.Dataset: its rows
        return {"dataset": identity(value.to_dict())}
    raise Unkeyable(type(value).__name__)


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (dtype and shape included by the caller)."""
    data = t.detach().to("cpu").contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


def base_identity(backbone: Any) -> dict[str, Any]:
    """The base model: name, shapes, dtype, and a digest of its embedding and final-norm weights (cached)."""
    cached = getattr(backbone, "_bake_identity", None)
    if cached is None:
        base = backbone.base_model
        emb = base.get_input_embeddings().weight
        norm = [p for n, p in base.named_parameters() if n.endswith("norm.weight")][-1]
        cached = {"name": backbone.name, **backbone.fingerprint(), "dtype": str(emb.dtype),
                  "weights": hashlib.sha256((tensor_digest(emb) + tensor_digest(norm)).encode()).hexdigest()}
        backbone._bake_identity = cached
    return cached


def adapter_digest(backbone: Any, name: str) -> str:
    """SHA-256 of a LoRA adapter: its config (rank, alpha, targets) and every weight, whatever its name."""
    cfg = backbone.model.peft_config[name]
    h = hashlib.sha256(json.dumps({"r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                                   "targets": sorted(cfg.target_modules or [])}, sort_keys=True).encode())
    tag = f".{name}."
    for pname, p in sorted(backbone.model.named_parameters()):
        if tag in pname:
            h.update(pname.replace(tag, ".").encode())
            h.update(tensor_digest(p).encode())
    return h.hexdigest()


def key_of(material: Any) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
