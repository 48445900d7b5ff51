"""Provenance of the shipped bakes (triangle_nb/baked/): for every bake, its first two optimiser steps (training) or
its first scored candidate (search) are rerun live on the real model from the recorded call, with the bake's thread
count (one), and must equal the bake's first history rows.

Tolerance: rtol 1e-4 — the same code on another x86 CPU may sum fp32 products in another order (relative
differences ~1e-6); a change to the data, the loss or the schedule moves the first losses by far more.
The log-ratio statistics of DPO/KTO (β·[log π(y|x) − log π_ref(y|x)] and their margin) are differences of two
sums of ~10² fp32 log-probs that start at 0: across CPUs they move by up to ~2e-5 absolute (seen between two
machines of this kind), so they are compared with atol 1e-4; `accuracy` (the share of pairs whose margin is > 0)
is a coin flip where the bake's margin is below that floor (step 1, π = π_ref) and is compared only above it.
Recorded samples (tests/provenance/<bake>.json, triangle_nb/_replay.py): the optimiser steps, the reference and
teacher log-probs, the rewards and the losses are all recomputed live; the training data's token ids are sampled live
for the rerun's first sampling call, which must give exactly the recorded tokens, and served from the record for the
calls after it. Each recorded call is keyed by everything that determines its tokens (the policy's exact weights and
prompt, the rows, the sampling settings, the seed): a call whose key is not recorded samples live. Sampling was
about half of each rerun: the 31 reruns took 806 CPU-s replayed against 1,365 recording, measured one after the other
on this 2-core machine (440 s against 722 s on two workers). After a bake is made again (or the sampler changes),
record its samples:

    TNB_PROVENANCE_RECORD=1 .venv/bin/python -m pytest tests/test_provenance.py -k NAME

The arrows measure "before" after training, so a rerun cut at step 2 skips it; the README's test command spreads the
reruns over two workers (`--dist worksteal`, long tests at the head of both halves: tests/conftest.py).
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from triangle_nb import _replay, bake, training

TIMING = ("second", "time", "flos")  # columns that measure the machine, not the run
LOG_RATIO = {"chosen_reward", "rejected_reward", "margin", "kl_estimate", "logratio_desirable", "logratio_undesirable"}
LOG_RATIO_ATOL = 1e-4  # fp32 noise of a difference of two sequence log-prob sums (see the module docstring)
# best-of-N trains nothing and searches nothing: its bake holds metrics and samples only (no history to rerun)
ENTRIES = [e for e in bake.entries() if not pd.read_parquet(Path(e["folder"]) / "history.parquet").empty]
SAMPLES = Path(__file__).parent / "provenance"  # each bake's recorded training samples (see the module docstring)
RECORD = os.environ.get("TNB_PROVENANCE_RECORD") == "1"


def _samples(entry) -> Path:
    return SAMPLES / f"{Path(entry['folder']).name}.json"


def test_only_best_of_n_bakes_have_no_history():
    empty = [e for e in bake.entries() if e not in ENTRIES]
    assert all(e["call"]["arguments"].get("method") == "best_of_n" for e in empty), [e["folder"] for e in empty]


class _Enough(Exception):
    """Raised by the row observer once the rows to compare have been seen: the rest of the run is not needed."""


@pytest.fixture(scope="module")
def adapters(pi0):
    return bake.adapter_folders(pi0)


def test_every_bake_has_its_samples_recorded_and_no_record_is_left_over():
    names = {Path(e["folder"]).name for e in ENTRIES}
    missing = sorted(n for n in names if not (SAMPLES / f"{n}.json").is_file())
    assert not missing, f"record them: TNB_PROVENANCE_RECORD=1 pytest tests/test_provenance.py -k '{missing[0]}'"
    assert not sorted(p.stem for p in SAMPLES.glob("*.json") if p.stem not in names)  # a dropped bake's record


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
    store = _replay.SampleStore(record=True) if RECORD else _replay.SampleStore.load(_samples(entry))
    with bake.forced_live(), _replay.using(store):
        try:
            fn(**args, **hook)
        except _Enough:
            pass
    if RECORD:
        store.save(_samples(entry))
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
    live, history = live[cols].head(k).reset_index(drop=True), history[cols].head(k).reset_index(drop=True)
    _assert_rows_equal(live, history, entry["folder"])


def _assert_rows_equal(live: pd.DataFrame, history: pd.DataFrame, folder: str) -> None:
    exact = [c for c in history.columns if c not in LOG_RATIO and c != "accuracy"]
    np.testing.assert_allclose(live[exact].to_numpy(float), history[exact].to_numpy(float), rtol=1e-4, atol=1e-6,
                               err_msg=f"{folder}: columns {exact}")
    ratios = [c for c in history.columns if c in LOG_RATIO]
    np.testing.assert_allclose(live[ratios].to_numpy(float), history[ratios].to_numpy(float), rtol=1e-4,
                               atol=LOG_RATIO_ATOL, err_msg=f"{folder}: columns {ratios}")
    if "accuracy" in history.columns:
        decided = history["margin"].abs() > LOG_RATIO_ATOL if "margin" in history.columns else history.index >= 0
        np.testing.assert_array_equal(live.loc[decided, "accuracy"], history.loc[decided, "accuracy"],
                                      err_msg=f"{folder}: accuracy where the margin is above the fp32 floor")


def test_log_ratio_columns_get_the_fp32_floor_and_nothing_else():
    """The looser comparison covers only the near-cancelling log-ratio columns: a moved loss still fails."""
    bake_rows = pd.DataFrame({"loss": [0.6931477, 0.69], "margin": [-7.6e-7, 0.0095787], "accuracy": [0.25, 1.0]})
    noisy = bake_rows.assign(margin=[-4.8e-7, 0.0095809], accuracy=[0.5, 1.0])
    _assert_rows_equal(noisy, bake_rows, "noise")
    with pytest.raises(AssertionError):
        _assert_rows_equal(noisy.assign(loss=[0.6931477, 0.6901]), bake_rows, "moved loss")
    with pytest.raises(AssertionError):
        _assert_rows_equal(noisy.assign(margin=[0.0, 0.0105]), bake_rows, "moved margin")
    with pytest.raises(AssertionError):
        _assert_rows_equal(noisy.assign(accuracy=[0.5, 0.5]), bake_rows, "moved accuracy")
