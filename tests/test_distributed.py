"""`triangle_nb.distributed.sweep`: a settings grid split across `accelerate launch` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import triangle_nb as tnb
from triangle_nb.distributed import device, is_main, sweep
from triangle_nb.errors import InvalidArgumentError

SCRIPT = """
import json, os, sys
import triangle_nb as tnb
from triangle_nb.distributed import sweep, is_main
from triangle_nb.testing import tiny_policy

pi0 = tiny_policy()
def run(x):  # a real (tiny) model call in every process
    return {"x": x, "logp": float(pi0.logprobs([x], ["a b c"]).sum[0]), "pid": os.getpid()}

table = sweep(run, ["one", "two", "three"])
if is_main():
    json.dump(table.to_dict("records"), open(sys.argv[1], "w"))
"""


def test_without_a_launcher_every_setting_runs_here_in_order():
    table = sweep(lambda s: {"s": s, "square": s * s}, [3, 1, 2])
    assert table["s"].tolist() == [3, 1, 2] and table["square"].tolist() == [9, 1, 4]
    assert set(table["process"]) == {0} and is_main() and device() in {"cpu", "cuda", "cuda:0", "mps"}
    assert tnb.distributed.sweep is sweep


def test_bad_settings_and_rows_are_named():
    with pytest.raises(InvalidArgumentError, match="settings is empty"):
        sweep(lambda s: {}, [])
    with pytest.raises(InvalidArgumentError, match="return a dict"):
        sweep(lambda s: s, [1])


@pytest.mark.slow
def test_torchrun_splits_the_grid_over_two_processes(tmp_path, tiny):
    """Two CPU processes under torchrun (the launcher `accelerate launch --num_processes N` uses on GPUs)."""
    script, out = tmp_path / "grid.py", tmp_path / "rows.json"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["x"] for r in rows] == ["one", "two", "three"]
    assert {r["process"] for r in rows} == {0, 1} and len({r["pid"] for r in rows}) == 2  # two processes worked
    expected = [float(tiny.logprobs([r["x"]], ["a b c"]).sum[0]) for r in rows]
    assert [r["logp"] for r in rows] == pytest.approx(expected, abs=1e-4)  # the same numbers as in one process
