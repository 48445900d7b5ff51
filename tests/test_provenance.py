"""Provenance of the shipped bakes (triangle_nb/baked/): for every bake, its first two optimiser steps (training) or
its first scored candidate (search) are rerun live on the real model from the recorded call, with the bake's thread
count (one), and must equal the bake's first history rows.

Tolerance: rtol 1e-4 — the same code on another x86 CPU may sum fp32 products in another order (relative
differences ~1e-6); a change to the data, the loss or the schedule moves the first losses by far more.
This file runs beside the notebooks (the README's second pytest command, two workers): it needs minutes of CPU.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from triangle_nb import bake, training

TIMING = ("second", "time", "flos")  # columns that measure the machine, not the run
# best-of-N trains nothing and searches nothing: its bake holds metrics and samples only (no history to rerun)
ENTRIES = [e for e in bake.entries() if not pd.read_parquet(Path(e["folder"]) / "history.parquet").empty]


def test_only_best_of_n_bakes_have_no_history():
    empty = [e for e in bake.entries() if e not in ENTRIES]
    assert all(e["call"]["arguments"].get("method") == "best_of_n" for e in empty), [e["folder"] for e in empty]


class _Enough(Exception):
    """Raised by the row observer once the rows to compare have been seen: the rest of the run is not needed."""


@pytest.fixture(scope="module")
def adapters(pi0):
    return bake.adapter_folders(pi0)


def _first_rows(entry, pi0, adapters, k):
    before = pi0.backbone.adapters  # the rebuilt policies' adapters are removed afterwards too
    args = bake.rebuild(entry["call"]["arguments"], pi0, adapters)
    args.pop("callbacks", None)
    rows = []

    def collect(row):
        rows.append(dict(row))
        if len(rows) >= k:
            raise _Enough

    fn = bake.public_function(entry["function"])
    hook = {"callbacks": [training.on_row(collect)]} if k == 2 else {"callback": collect}
    with bake.forced_live():
        try:
            fn(**args, **hook)
        except _Enough:
            pass
    for name in set(pi0.backbone.adapters) - set(before):
        pi0.backbone.remove_adapter(name)
    return pd.DataFrame(rows)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=[Path(e["folder"]).name for e in ENTRIES])
def test_provenance_first_steps_rerun_live(entry, pi0, adapters):
    """The bake's first history rows equal a live rerun of the recorded call (training: 2 steps; search: 1 row)."""
    history = pd.read_parquet(Path(entry["folder"]) / "history.parquet")
    k = 2 if "loss" in history.columns else 1
    threads = torch.get_num_threads()
    torch.set_num_threads(entry.get("threads", 1))
    try:
        live = _first_rows(entry, pi0, adapters, k)
    finally:
        torch.set_num_threads(threads)
    assert len(live) >= k, f"the rerun logged {len(live)} rows"
    cols = [c for c in history.columns if c in live.columns and pd.api.types.is_numeric_dtype(history[c])
            and not any(t in c for t in TIMING)]
    assert ("loss" in cols) if k == 2 else cols, cols
    np.testing.assert_allclose(live[cols].head(k).to_numpy(float), history[cols].head(k).to_numpy(float),
                               rtol=1e-4, atol=1e-6, err_msg=f"{entry['folder']}: columns {cols}")
