"""The bake command (`python -m triangle_nb.bake [NOTEBOOK ...]`): run notebooks with every bakeable call recorded,
save them executed from their bakes, bake the panels' default runs; and provenance, which rebuilds a bake's call from
its record (tests/test_provenance.py).

The baked runs themselves (the key, the store, the `bakeable` decorator that serves matching calls) are in
`_bakery`, and the arguments' identities in `_keys`: the arrows import those, and this top-level command imports
the arrows, the panels and the notebooks. Their public names are here too, so `tnb.bake.set_live`,
`bake.entries()` and `bake.CODE_VERSION` keep working.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ._bakery import (  # noqa: F401  (tests/test_bakes.py reads the index and checks the seals)
    BAKED_DIR,
    CODE_VERSION,
    LIVE_ONLY,
    NOT_KEYED,
    REBUILD,
    _index,
    _intact,
    bakeable,
    entries,
    forced_live,
    is_live,
    lookup,
    provenance,
    recording,
    seal,
    set_live,
    store_as,
)
from ._keys import Unkeyable, adapter_digest, base_identity, identity, key_of, tensor_digest
from .errors import ModelLoadError

__all__ = ["BAKED_DIR", "CODE_VERSION", "LIVE_ONLY", "NOT_KEYED", "REBUILD", "Unkeyable", "adapter_digest",
           "adapter_folders", "bake_notebook", "bake_panels", "bakeable", "base_identity", "clean_outputs", "entries",
           "execute_notebook", "forced_live", "identity", "is_live", "key_of", "lookup", "main", "provenance",
           "public_function", "rebuild", "recording", "seal", "set_live", "store_as", "tensor_digest"]


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
