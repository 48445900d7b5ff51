"""Baked runs: a training or search run done once by `python -m triangle_nb.bake`, shipped inside the package,
and returned at once when a call matches it exactly (DESIGN.md, "Time to result").

A bake is keyed by everything that determines its result: the function, every argument (inputs, prompts, the
method's whole config, the seed), the identity of every policy (base model name, shapes, dtype and a digest of
its embedding and final-norm weights; the digest of every adapter's weights; prompts and soft-prompt vectors),
of every reward (its class and config, or the policies and prompts it is built from) and `CODE_VERSION` of the
training code. The key is the SHA-256 of that description as canonical JSON: a call that differs in anything
runs live — never a near match. A baked result is a full result (loaded by `tnb.load` from safetensors, JSON and
parquet: `.policy` generates and scores, `.plot()`, `.samples`, `.history`, `save`); its `info["provenance"]`
and its repr say where it came from: "baked 2026-12-02 · 612 s on 1 CPU thread · LIVE=True reruns it".

Switches: `tnb.set_live(True)` (a notebook's `LIVE = True`) or the environment variable `TRIANGLE_NB_LIVE=1`
run everything live; `TRIANGLE_NB_BAKE=record` (set by the bake command) runs live and stores each run.
Calls with side effects or user callbacks (`output_dir`, `resume_from_checkpoint`, `callbacks`) always run live.

`tests/test_bakes.py` reruns the first two optimiser steps of every baked training run (the first scored candidate
of every search) live and compares them with the bake's history: a change to the training code that changes its
numbers fails there until the bakes are made again (`python -m triangle_nb.bake`) and `CODE_VERSION` is raised.

No library does this: joblib.Memory and similar caches pickle results (refused here: safetensors/JSON only) and
key by argument hashes that cannot see a model's weights or a shared backbone's adapters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import inspect
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from . import _io
from ._keys import Unkeyable, identity, key_of
from .errors import ModelLoadError

CODE_VERSION = 1  # raise when training or search code changes its numbers (tests/test_bakes.py tells you)
BAKED_DIR = Path(__file__).parent / "baked"
LIVE_ONLY = ("output_dir", "resume_from_checkpoint")  # side effects: always live
NOT_KEYED = ("callback", "callbacks")  # observers (rows replayed from the bake) and stop buttons: not in the key
REBUILD = "TRIANGLE_NB_BAKE"

_state = threading.local()  # .depth: nested bakeable calls run live inside an outer one
_live: list[bool] = [False]  # the process-wide switch (tnb.set_live)


# -- the switch ------------------------------------------------------------------------------------------


def set_live(live: bool = True) -> None:
    """Run every training and search live (True) or use matching bakes (False, the default).

    >>> tnb.set_live(LIVE)  # doctest: +SKIP
    """
    if not isinstance(live, bool):
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"live must be True or False, got {live!r}.")
    _live[0] = live


def is_live() -> bool:
    """True when bakes are not used (set_live(True) or TRIANGLE_NB_LIVE=1)."""
    return _live[0] or os.environ.get("TRIANGLE_NB_LIVE", "").strip().lower() in ("1", "true", "yes")


def recording() -> bool:
    """True under the bake command: bakeable calls run live and are stored ("record": all of them; "missing":
    those without an intact bake, the others are served and kept)."""
    return os.environ.get(REBUILD, "") in ("record", "missing")


def _note_used(key: str) -> None:
    """Tell the bake command that this run made or used bake `key` (it drops the notebook's other bakes)."""
    path = os.environ.get("TRIANGLE_NB_BAKE_USED")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(key + "\n")


@contextlib.contextmanager
def forced_live() -> Iterator[None]:
    """Run the calls in this block live without storing them (used by the provenance tests)."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1




# -- the store -------------------------------------------------------------------------------------------


@functools.cache
def _index() -> dict[str, Path]:
    """key -> folder of every shipped bake (each folder holds bake.json and the saved result)."""
    out: dict[str, Path] = {}
    if BAKED_DIR.is_dir():
        for meta in sorted(BAKED_DIR.glob("*/bake.json")):
            try:
                out[_io.read_json(meta)["key"]] = meta.parent
            except (ModelLoadError, KeyError, TypeError):
                warnings.warn(f"{meta} is damaged; its run will be done live. Rebake it with "
                              "`python -m triangle_nb.bake`.", UserWarning, stacklevel=2)
    return out


def entries() -> list[dict[str, Any]]:
    """Every shipped bake's record (key, function, call, provenance), for tests and the bake command."""
    return [_io.read_json(folder / "bake.json") | {"folder": str(folder)} for folder in _index().values()]


def provenance(meta: Mapping[str, Any]) -> str:
    threads = meta.get("threads", 1)
    where = f"{threads} CPU thread{'s' if threads != 1 else ''}" if meta.get("device", "cpu") == "cpu" else meta["device"]
    return f"baked {meta['created'][:10]} · {meta['seconds']:.0f} s on {where} · LIVE=True reruns it"


def _store(name: str, key: str, material: Any, result: Any, seconds: float, rows: list[dict[str, Any]]) -> Path:
    folder = BAKED_DIR / f"{name}-{key[:12]}"
    if hasattr(result, "metrics"):
        result.save(folder)
    else:  # a policy with a new adapter, and the history of its training
        import pandas as pd

        with _io.atomic_dir(folder) as tmp:
            result.backbone.save_adapter(result.adapter, tmp / "adapter")
            pd.DataFrame(rows).to_parquet(tmp / "history.parquet")
    meta = {"key": key, "function": name, "call": material, "seconds": seconds, "code_version": CODE_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "device": "cpu" if not torch.cuda.is_available() else "cuda",
            "source": os.environ.get("TRIANGLE_NB_BAKE_SOURCE", ""),
            "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                         "peft": _version("peft")}}
    _io.write_json(folder / "bake.json", meta | {"files": _digests(folder)})
    _index.cache_clear()
    return folder


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a bake (bake.json aside), so a file edited or cut short after baking is noticed."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != "bake.json" and not f.name.startswith(".")}  # the wheel skips dotfiles


def _intact(folder: Path) -> bool:
    """True when the bake's files are exactly those baked; otherwise warn that the call runs live."""
    recorded = _io.read_json(folder / "bake.json").get("files")
    if recorded is not None and _digests(folder) == recorded:
        return True
    warnings.warn(f"the baked run in {str(folder)!r} was changed or damaged after baking (its files no longer match "
                  "bake.json): running it live instead. Make it again with `python -m triangle_nb.bake`.",
                  UserWarning, stacklevel=3)
    return False


def seal(folder: Path) -> None:
    """Record the digests of a bake's files in its bake.json (done by the bake command after each store)."""
    meta = _io.read_json(folder / "bake.json")
    _io.write_json(folder / "bake.json", meta | {"files": _digests(folder)})


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _load(folder: Path, base: Any, result_type: str) -> Any:
    meta = _io.read_json(folder / "bake.json")
    try:
        if result_type == "policy":
            out = base.with_adapter(folder / "adapter", name=base.backbone.unique_adapter_name(meta["function"]))
            print(f"{meta['function']}: {provenance(meta)}")
            return out
        from .results import load_result

        result = load_result(folder, base=base)
    except (ModelLoadError, OSError, ValueError) as exc:
        raise ModelLoadError(f"the baked run in {str(folder)!r} is damaged ({exc}); run `python -m triangle_nb.bake` "
                             "to make it again, or set TRIANGLE_NB_LIVE=1 to run live.") from exc
    result.info["provenance"] = provenance(meta)
    result.info["baked"] = {k: meta[k] for k in ("key", "created", "seconds", "threads", "device", "source")}
    return result


# -- the decorator ---------------------------------------------------------------------------------------


def bakeable(name: str, *, configs: tuple[str, ...] = (), returns: str = "result", base_arg: str = "policy",
             restore: Callable[[Any, dict[str, Any]], None] | None = None,
             live_if: Callable[[dict[str, Any]], bool] | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Serve `fn`'s calls from matching bakes; record them under the bake command.

    Args:
        name: the function's public name (the bake folder's stem).
        configs: names (in fn's module) of the config classes whose defaults fill what the call leaves out: their
            default values are part of the key, so a changed default never serves an old bake.
        returns: "result" (an ArrowResult) or "policy" (a Policy with a new adapter).
        base_arg: the argument whose backbone (and prompt) a baked adapter is loaded onto.
        restore: rebuilds what a save does not keep (e.g. best-of-N's wrapper) from the call's arguments.
        live_if: calls for which it returns True always run live and are never stored (e.g. a one-forward method).
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        defaults = functools.cache(lambda: _defaults([fn.__globals__[c] for c in configs]))

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if getattr(_state, "depth", 0) or (is_live() and not recording()):
                return _run(fn, args, kwargs)
            args_ = _arguments(sig, args, kwargs)
            material = None if live_if is not None and live_if(args_) else _material(name, args_, defaults())
            if material is None:
                return _run(fn, args, kwargs)
            key = key_of(material)
            folder = _index().get(key)
            reuse = not recording() or os.environ.get(REBUILD) == "missing"
            if folder is not None and reuse and _intact(folder):
                _note_used(key)
                result = _load(folder, args_[base_arg], returns)
                if restore is not None:
                    restore(result, args_)
                observers = [args_.get("callback"), *(getattr(cb, "row_fn", None) for cb in args_.get("callbacks") or ())]
                for observer in observers:
                    _replay(result, observer)
                return result
            rows: list[dict[str, Any]] = []
            if recording() and returns == "policy":  # its history is kept for the provenance test
                from .training import on_row

                kwargs = kwargs | {"callbacks": [*(kwargs.get("callbacks") or ()), on_row(rows.append)]}
            start = time.perf_counter()
            result = _run(fn, args, kwargs)
            if recording():
                _store(name, key, material, result, time.perf_counter() - start, rows)
                _note_used(key)
            return result

        call.__wrapped_bakeable__ = name  # type: ignore[attr-defined]
        call.__bake__ = {"name": name, "sig": sig, "defaults": defaults, "returns": returns,  # type: ignore[attr-defined]
                         "base_arg": base_arg}
        return call

    return wrap


def _key(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, Any, dict[str, Any]]:
    """(key or None, material, bound arguments) of the call fn(*args, **kwargs) of a bakeable `fn`."""
    spec = fn.__bake__  # type: ignore[attr-defined]
    args_ = _arguments(spec["sig"], args, kwargs)
    material = _material(spec["name"], args_, spec["defaults"]())
    return (None if material is None else key_of(material)), material, args_


def lookup(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The intact bake of the call fn(*args, **kwargs), loaded whatever the live switch says, or None (a shipped
    artifact such as the hypernetwork, whose training LIVE=True does not redo)."""
    key, _, args_ = _key(fn, args, kwargs)
    folder = None if key is None else _index().get(key)
    if folder is None or not _intact(folder):
        return None
    _note_used(key)  # type: ignore[arg-type]
    return _load(folder, args_[fn.__bake__["base_arg"]], fn.__bake__["returns"])  # type: ignore[attr-defined]


def store_as(fn: Callable[..., Any], result: Any, seconds: float, *args: Any, **kwargs: Any) -> Path:
    """Store `result` as the bake of fn(*args, **kwargs): a long run made with checkpoints (`output_dir` always runs
    live) and stored under the key of the same call without them, which the provenance test reruns."""
    key, material, _ = _key(fn, args, kwargs)
    if key is None:
        raise Unkeyable("the call cannot be keyed: pass only keyable arguments (policies, prompts, configs, texts).")
    return _store(fn.__bake__["name"], key, material, result, seconds, [])  # type: ignore[attr-defined]


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with forced_live():
        return fn(*args, **kwargs)


def _arguments(sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    out = dict(bound.arguments)
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            out |= out.pop(p.name)
    return out


def _material(name: str, args: dict[str, Any], defaults: Any) -> Any:
    """What the bake's key is made of, or None when the call must run live."""
    if any(args.get(k) for k in LIVE_ONLY):
        return None
    if not all(getattr(cb, "observer", False) for cb in args.get("callbacks") or ()):
        return None  # a callback that may change the run (e.g. stop_at): live
    try:
        return {"function": name, "code_version": CODE_VERSION, "defaults": defaults,
                "arguments": identity({k: v for k, v in args.items() if k not in NOT_KEYED})}
    except Exception:  # noqa: BLE001 — Unkeyable, or an argument the arrow itself will reject with a typed error
        return None


def _defaults(configs: list[type]) -> Any:
    """The default of every config field the call may leave out, and the default LoRA (rank, alpha, targets)."""
    from .backbone import default_lora_config
    from .training import TrainConfig

    lora = default_lora_config()
    return identity({"lora": {"r": lora.r, "alpha": lora.lora_alpha, "targets": sorted(lora.target_modules)},
                     **{c.__name__: c() for c in (TrainConfig, *configs)}})


def _replay(result: Any, callback: Callable[[dict[str, Any]], None] | None) -> None:
    """Hand the bake's history rows to a row observer, as a live run would have."""
    history = getattr(result, "history", None)
    if callback is None or history is None:
        return
    for row in history.to_dict("records"):
        callback(row)
