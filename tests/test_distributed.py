"""`triangle_nb.distributed.sweep`: a settings grid split across `accelerate launch` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

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


def _torchrun(processes: int) -> list[str]:
    """`python -m torch.distributed.run` on a free port: two of these at once (pytest -n 2) must not meet on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
            "--master_port", str(port)]


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
    done = subprocess.run([sys.executable, *_torchrun(2), str(script), str(out)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["x"] for r in rows] == ["one", "two", "three"]
    assert {r["process"] for r in rows} == {0, 1} and len({r["pid"] for r in rows}) == 2  # two processes worked
    expected = [float(tiny.logprobs([r["x"]], ["a b c"]).sum[0]) for r in rows]
    assert [r["logp"] for r in rows] == pytest.approx(expected, abs=1e-4)  # the same numbers as in one process


# -- one training run across processes (DDP through the Trainer engine) -----------------------------------

TRAIN_SCRIPT = """
import json, os, sys
from safetensors.torch import save_file
import triangle_nb as tnb
from triangle_nb.testing import tiny_policy

XS = ["Tell me about rain.", "Describe a cat.", "What is tea?", "Name a colour.", "Say hi.", "Count to three.",
      "Describe a dog.", "What is coffee?", "Name a fruit.", "Tell me a joke."]
pi0 = tiny_policy()
res = tnb.reward_to_update(pi0, tnb.rewards.Length(), XS, method=sys.argv[2], steps=3, samples=2, batch_size=4,
                           max_new_tokens=4, eval_samples=1, learning_rate=0.05, eval_train=0)
rank, tag = int(os.environ.get("RANK", 0)), f".{res.policy.adapter}."
state = {k.replace(tag, "."): v.detach().contiguous() for k, v in pi0.backbone.model.named_parameters() if tag in k}
save_file(state, os.path.join(sys.argv[1], f"rank{rank}.safetensors"))
json.dump(res.metrics, open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
"""


def _train_in(folder, method: str, processes: int) -> list[tuple[dict, dict]]:
    from safetensors.torch import load_file

    folder.mkdir()
    script = folder / "train.py"
    script.write_text(TRAIN_SCRIPT)
    launcher = _torchrun(processes) if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, *launcher, str(script), str(folder), method], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [(load_file(str(folder / f"rank{r}.safetensors")), json.loads((folder / f"rank{r}.json").read_text()))
            for r in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_torchrun_trains_one_run_over_two_processes(tmp_path, method):
    """torchrun --nproc_per_node 2 (gloo on CPU; `accelerate launch` on GPUs): ONE data-parallel run, each process a
    share of every batch, gradients all-reduced. Both ranks end with the same adapter; for DPO (data fixed before
    training) it matches a one-process run on the same global batches."""
    (a, ma), (b, mb) = _train_in(tmp_path / "two", method, 2)
    assert ma["world_size"] == mb["world_size"] == 2 and ma["steps"] == 3
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # DDP kept the replicas identical
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-2  # it trained
    if method == "dpo":
        ((c, mc),) = _train_in(tmp_path / "one", method, 1)
        assert mc["world_size"] == 1
        for k in a:
            torch.testing.assert_close(a[k], c[k], atol=1e-3, rtol=1e-3)
