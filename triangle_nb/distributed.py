"""Several GPUs through `accelerate launch`: one run across processes, or each process its share of a grid.

One run: every training arrow runs on `transformers.Trainer` (`triangle_nb.training`), so a script that calls
an arrow trains ONE data-parallel run under `accelerate launch --num_processes N script.py` or `torchrun
--nproc_per_node N script.py` (load the policy on `device()`; `result.metrics["world_size"]` is N).

A grid: the experiment grid around the arrows (β sweeps, seeds, prompts, reward levels). `sweep` hands
each process of an `accelerate launch` its share of the settings, runs them on that process's device
and gathers the rows back, in settings order, on every process:

    # sweep_beta.py — run with: accelerate launch --num_processes 4 sweep_beta.py   (one process per GPU)
    import triangle_nb as tnb
    from triangle_nb.distributed import device, sweep

    def run(beta):                                   # runs inside each process
        pi0 = tnb.load_policy(device=device())       # this process's GPU (or the CPU)
        res = tnb.reward_to_update(pi0, tnb.rewards.Sentiment(), INPUTS, method="dpo", beta=beta)
        res.save(f"runs/dpo-beta{beta}")             # adapters stay on disk; rows carry numbers
        return {"beta": beta, **res.metrics}

    table = sweep(run, [0.03, 0.1, 0.3, 1.0])        # a DataFrame on every process
    if tnb.distributed.is_main():
        print(table)

Without a launcher (a notebook, a plain `python`), `sweep` runs every setting here, in order. On CPUs,
`torchrun --nproc_per_node 2 sweep_beta.py` (what `accelerate launch` runs on GPUs) splits the grid too.
(Inside `sweep`, each run trains in its own process alone; do not combine the two in one launch.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from .errors import InvalidArgumentError


def _state() -> Any:
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # cpu=True lets torchrun-launched CPU processes form a gloo group (accelerate only does that when asked)
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def device() -> str:
    """This process's device: `cuda:<local rank>` under `accelerate launch` on GPUs, else cuda or cpu."""
    return str(_state().device)


def is_main() -> bool:
    """True in the process that should print and write shared files (rank 0; always True without a launcher)."""
    return bool(_state().is_main_process)


def sweep(run: Callable[[Any], dict[str, Any]], settings: Iterable[Any]) -> pd.DataFrame:
    """Run `run(setting)` for every setting, split across the launched processes; one row per setting.

    Args:
        run: a function of one setting returning a dict of plain values (numbers, strings): the row.
        settings: the grid (any picklable values), e.g. a list of β or of option dicts.

    Returns:
        A DataFrame with one row per setting, in the order given, plus `process` (the rank that ran it),
        identical on every process.
    """
    items = list(enumerate(settings))
    if not items:
        raise InvalidArgumentError("settings is empty: pass at least one setting to sweep over.")
    state = _state()
    rows = []
    with state.split_between_processes(items) as mine:
        for i, setting in mine:
            row = run(setting)
            if not isinstance(row, dict):
                raise InvalidArgumentError(f"run({setting!r}) returned {type(row).__name__}: return a dict (one row).")
            rows.append((i, {**row, "process": state.process_index}))
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    return pd.DataFrame([row for _, row in sorted(rows, key=lambda r: r[0])])
