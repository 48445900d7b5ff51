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
import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import inspect
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _io
from .errors import ModelLoadError

CODE_VERSION = 1  # raise when training or search code changes its numbers (tests/test_bakes.py tells you)
BAKED_DIR = Path(__file__).parent / "baked"
LIVE_ONLY = ("output_dir", "resume_from_checkpoint")  # side effects: always live
NOT_KEYED = ("callback", "callbacks")  # observers (rows replayed from the bake) and stop buttons: not in the key
REBUILD = "TRIANGLE_NB_BAKE"

_state = threading.local()  # .depth: nested bakeable calls run live inside an outer one
_live: list[bool] = [False]  # the process-wide switch (tnb.set_live)


class Unkeyable(Exception):
    """An argument whose identity cannot be written down exactly (a plain function, an unknown object)."""


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


# -- identities ------------------------------------------------------------------------------------------


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
        from .results import load

        result = load(folder, base=base)
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


# -- the bake command: python -m triangle_nb.bake [NOTEBOOK ...] ------------------------------------------


def bake_notebook(path: Path, *, timeout: int = 3600, missing: bool = False) -> float:
    """Run a notebook top to bottom with every bakeable call live and stored (one torch thread; `missing`: only
    calls without an intact bake), drop the notebook's bakes it no longer uses, then execute it again from its
    bakes and save it in place."""
    import tempfile

    import nbformat
    from nbclient import NotebookClient

    used = Path(tempfile.mkstemp(prefix="triangle_nb-bake-used-")[1])
    env = {REBUILD: "missing" if missing else "record", "TRIANGLE_NB_BAKE_SOURCE": path.name,
           "TRIANGLE_NB_BAKE_USED": str(used), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with _environ(env):
        NotebookClient(nbformat.read(path, as_version=4), timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    _drop_unused(path.name, set(used.read_text().split()))
    used.unlink()
    execute_notebook(path, timeout=timeout)
    return seconds


def execute_notebook(path: Path, *, timeout: int = 3600) -> float:
    """Execute a notebook top to bottom from its bakes (one torch thread, per-cell timing recorded) and save it in
    place with clean outputs (`clean_outputs`); returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    t0 = time.perf_counter()
    with _environ({"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(clean_outputs(nb), path)
    return time.perf_counter() - t0


PROGRESS_BAR = re.compile(r"\d+%\|[^|]*\|\s*\d+/\d+")  # tqdm's "Loading weights:   0%|          | 0/272 [...]"


def clean_outputs(nb: Any) -> Any:
    """Drop progress bars from a notebook's outputs: a saved bar is frozen at what it showed when it was drawn
    ("0%| 0/272"), which a reader opening the notebook takes for a stuck run."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _progress_bar(o)]
    return nb


def _progress_bar(output: Mapping[str, Any]) -> bool:
    if output.get("output_type") == "stream":
        text = output.get("text", "") if output.get("name") == "stderr" else ""
    else:
        text = output.get("data", {}).get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    return bool(PROGRESS_BAR.search(text)) and (output.get("output_type") == "stream"
                                                or len(text.splitlines()) == 1)


PANELS = ("RewardToUpdatePanel", "PromptToUpdatePanel", "UpdateToPromptPanel", "RewardToPromptPanel")


def bake_panels(names: tuple[str, ...] = PANELS, *, missing: bool = False) -> float:
    """Bake what each training / search panel runs at its default settings (pressing its button then answers at
    once), on the embedded model with one torch thread."""
    import tempfile

    import triangle_nb as tnb

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pi0 = tnb.load_policy()
    used = Path(tempfile.mkstemp(prefix="triangle_nb-bake-used-")[1])
    with _environ({REBUILD: "missing" if missing else "record", "TRIANGLE_NB_BAKE_SOURCE": "panels",
                   "TRIANGLE_NB_BAKE_USED": str(used)}):
        for name in names:
            getattr(tnb.panels, name)(pi0)._work()
    _drop_unused("panels", set(used.read_text().split()))
    used.unlink()
    return time.perf_counter() - t0


def _drop_unused(source: str, used: set[str]) -> None:
    """Remove the bakes a notebook (or the panels) made before and no longer uses."""
    import shutil

    _index.cache_clear()
    for meta in entries():
        if meta.get("source") == source and meta["key"] not in used:
            shutil.rmtree(meta["folder"])
    _index.cache_clear()


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m triangle_nb.bake",
                                     description="Bake every training and search run of the notebooks (live, one "
                                                 "thread), then save the notebooks executed from their bakes.")
    parser.add_argument("targets", nargs="*", help="notebooks to bake, and/or `panels` (the panels' default runs); "
                                                   "default: notebooks/*.ipynb and panels")
    parser.add_argument("--missing", action="store_true",
                        help="run live only the calls without an intact bake (the others are kept as they are)")
    parser.add_argument("--execute", action="store_true",
                        help="bake nothing: execute the notebooks from their bakes and save them (clean outputs)")
    args = parser.parse_args(argv)
    if args.execute:
        for target in args.targets or map(str, sorted(Path("notebooks").glob("*.ipynb"))):
            print(f"  {target}: executed from its bakes in {execute_notebook(Path(target)):.0f} s", flush=True)
        return
    for target in args.targets or [*map(str, sorted(Path("notebooks").glob("[0-9]*.ipynb"))), "panels"]:
        print(f"baking {target} ...", flush=True)
        if target == "panels":
            print(f"  panels: {bake_panels(missing=args.missing):.0f} s", flush=True)
        else:
            seconds = bake_notebook(Path(target), missing=args.missing)
            print(f"  {target}: {seconds:.0f} s to bake; saved executed from its bakes", flush=True)


if __name__ == "__main__":
    main()


# -- provenance: rebuild a bake's call from its record ---------------------------------------------------


def rebuild(value: Any, pi0: Any, adapters: Mapping[str, Path]) -> Any:
    """The arguments a bake was made with, from its recorded identities: policies on `pi0`'s backbone (an adapter
    is found among the bakes by its digest: `adapters` maps digest -> adapter folder), prompts, rewards, datasets."""
    if isinstance(value, list):
        return [rebuild(v, pi0, adapters) for v in value]
    if not isinstance(value, dict):
        return value
    if {"base", "prompt", "adapter"} <= value.keys():
        return _rebuild_policy(value, pi0, adapters)
    if value.get("kind") == "prompt":
        from .prompt import Prompt

        return Prompt.from_dict(value)
    if isinstance(value.get("reward"), str):  # a reward's identity (an argument named reward holds a dict)
        return _rebuild_reward(value, pi0, adapters)
    if value.keys() == {"dataset"}:
        import datasets

        return datasets.Dataset.from_dict(value["dataset"])
    return {k: rebuild(v, pi0, adapters) for k, v in value.items()}


def _rebuild_policy(value: dict[str, Any], pi0: Any, adapters: Mapping[str, Path]) -> Any:
    if value["base"] != base_identity(pi0.backbone):
        raise ModelLoadError(f"this bake was made on another base model ({value['base']['name']}).")
    policy = pi0.with_prompt(rebuild(value["prompt"], pi0, adapters)).at_layer(value["exit_layer"])
    if value["adapter"] is None:
        return policy
    if value["adapter"] not in adapters:
        raise ModelLoadError("this bake starts from an adapter that no shipped bake holds: bake its notebook again.")
    folder = adapters[value["adapter"]]
    return policy.with_adapter(folder, name=pi0.backbone.unique_adapter_name("provenance"))


def _rebuild_reward(value: dict[str, Any], pi0: Any, adapters: Mapping[str, Path]) -> Any:
    from . import rewards

    kind = value["reward"]
    if kind == "ContrastiveReward":
        from .arrows.prompt_to_reward import ContrastiveConfig, ContrastiveReward

        options = {k: v for k, v in value["config"].items() if k != "dataclass"}
        return ContrastiveReward(rebuild(value["policy"], pi0, adapters), rebuild(value["z_pos"], pi0, adapters),
                                 rebuild(value["z_neg"], pi0, adapters), ContrastiveConfig(**options))
    if kind == "LogRatioReward":
        from .arrows.update_to_reward import LogRatioReward

        return LogRatioReward(rebuild(value["pi_star"], pi0, adapters), rebuild(value["pi0"], pi0, adapters),
                              beta=value["beta"], end_of_turn=value["end_of_turn"])
    return rewards._SAVABLE[kind](**value["config"])


def adapter_folders(pi0: Any) -> dict[str, Path]:
    """digest -> folder of every adapter a shipped bake holds (each loaded once onto pi0's backbone to digest it)."""
    out = {}
    for folder in sorted(BAKED_DIR.glob("*/adapter")):
        name = pi0.backbone.unique_adapter_name("digest")
        policy = pi0.with_adapter(folder, name=name)
        out[adapter_digest(pi0.backbone, policy.adapter)] = folder
        pi0.backbone.remove_adapter(name)
    return out


def public_function(name: str) -> Callable[..., Any]:
    """The bakeable function a bake records (`tnb.<name>`, or `tnb.presets.<name>`)."""
    import triangle_nb as tnb

    return getattr(tnb.presets, name) if name == "hallucination_adapter" else getattr(tnb, name)
