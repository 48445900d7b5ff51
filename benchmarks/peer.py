"""Side by side with eth-sri/language-model-arithmetic (LMA, "model arithmetic", ICLR 2024).

The same formula, model, inputs and token count in both engines, greedy, stop tokens off:

    Eq. 7 with three prompt terms:  π0(·|x) + π(·|z+, x) − π(·|z−, x)
    Eq. 7 with three LoRA terms:    π0 + expert − anti   (LMA: one merged model folder per term)

Ours runs in this process; LMA runs in its own venv as a long-lived child (the DRIVER script below,
not LMA's code), which loads once and then answers "generate" requests, so ours and theirs alternate
round-robin and only generation is timed (1 torch thread each). Rows: tokens/s ours / theirs, and how
far the greedy outputs agree (characters and tokens in common).

Set-up of the peer (once, outside this repo; `python -m benchmarks.run --only peer` then finds it in
/work/peers/lma-venv, or point TNB_PEER_PYTHON at another venv's python; without it the case reports a
"peer not installed" skip row):

    fetch github:eth-sri/language-model-arithmetic (HEAD 6779b40, 2024-09-15); git archive HEAD | tar -x -C /work/peers/lma-src
    python3.11 -m venv /work/peers/lma-venv && cd /work/peers
    lma-venv/bin/pip install torch==2.13.0                      # the CPU build on local disk, not a CUDA one
    grep -E '^[A-Za-z0-9_.-]+==' lma-src/requirements.txt | grep -viE '^(nvidia-|triton|torch|sympy|sacrebleu)' > pins.txt
    lma-venv/bin/pip install --prefer-binary -c pins.txt torch==2.13.0 sacrebleu==2.4.1 proto-plus==1.22.3 -e lma-src

i.e. its pyproject dependencies at its requirements.txt versions (transformers 4.33.1, tokenizers 0.13.3,
safetensors 0.3.3, huggingface-hub 0.16.4, accelerate 0.22.0, peft 0.5.0, trl 0.7.1, numpy 1.24.3,
datasets 2.14.5, pyarrow 13.0.0, ...), their dependencies too (today's pyarrow needs numpy 2; today's httplib2
needs a newer pyparsing; google-api-core 2.11 needs protobuf 4, hence proto-plus 1.22.3); dropped: its CUDA
torch/triton/nvidia wheels (torch 2.13 CPU instead), sympy 1.12 (torch 2.13 needs >= 1.13.3) and sacrebleu 1.5.0
(its own pyproject asks >= 2.4.1). auto-gptq is not installed (LMA logs "Failed to import auto_gptq" and goes on).

LMA's transformers 4.33 cannot read our converted folder as it is: `peer_model` writes a copy with
the weights linked, `rope_theta` lifted out of transformers 5's `rope_parameters` (4.33 would silently
use 10,000 instead of the model's 100,000: a different model), tokenizer.json's merges written as
"a b" strings (tokenizers 0.13 reads no other form) and `tokenizer_class` GPT2TokenizerFast.

Same token ids in both: LMA puts the BOS id in front of `prompt_template(system_prompt, x)` itself, and
SmolLM2's BOS is `<|im_start|>`, so each term gets the exact text our chat template renders for (z, x)
minus that leading `<|im_start|>` (`lma_prompt`); the driver reports the ids LMA will feed and the case
checks them against ours. LMA is run with dtype=float32 (its default is bfloat16) and
calculate_statistics=False (per-step KL/entropy bookkeeping that generation does not need).

With all of that, both engines give the same 64 greedy tokens for both inputs (the top-2 margins of the
combined score agree to 4e-5 at every step; the closest call is 0.006 nats). Each shortcut alone breaks it
(first differing token, input 1 / input 2): rope_theta 10,000 → 0 / 10; LMA's default bfloat16 → 13 / 39
(exactly where fp32 margins are 0.12 and 0.006; bf16 log-probs tie there); the rendered chat text passed with
its `<|im_start|>` (LMA then feeds BOS twice) → 13 / 10; LMA's own `system + "\n" + x` prompts → 0 / 0.
LMA's greedy is `generate_text(temperature=0)` (argmax of the renormalised sum, divided by Σ weights = 1
here); its defaults (temperature 1, top_k 0, top_p 1) sample.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import triangle_nb as tnb
from triangle_nb.chat import prompt_ids
from triangle_nb.loading import converted_gguf, default_gguf_path
from triangle_nb.policy import Composition, Policy
from triangle_nb.testing import perturbed_adapter

from .cases import NEGATIVE, POSITIVE, PROMPTS, QUICK, Env, Row, no_stop, row
from .timing import median

PEER_ENV = "TNB_PEER_PYTHON"
DEFAULT_PEER = Path("/work/peers/lma-venv/bin/python")
INPUTS = PROMPTS[:2]
LORA_SCALE = 0.02  # lora_B ~ N(0, 0.02²): the text stays fluent, the three terms differ
TARGETS = {"prompt": 3.0, "lora": 2.0}

# The child: loads the terms once, then answers one JSON request per stdin line with one "BENCH {json}" line.
DRIVER = r'''
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
from model_arithmetic import ModelArithmetic, PromptedLLM

spec = json.load(open(sys.argv[1]))
formula = None
for t in spec["terms"]:  # system_prompt = the label (LMA tells terms apart by it); the template looks the text up
    table = t["prompts"]
    llm = PromptedLLM(t["label"], model=t["model"], prompt_template=lambda s, x, table=table: table.get(x, ""))
    term = llm if t["weight"] == 1 else t["weight"] * llm
    formula = term if formula is None else formula + term
t0 = time.perf_counter()
ma = ModelArithmetic(formula, dtype=getattr(torch, spec["dtype"]), calculate_statistics=False)
load_s = time.perf_counter() - t0
state = {"ids": [], "top2": []}

def decoded(batch):  # observe LMA's token ids; text without special tokens, so the end-of-turn never stops it
    state["ids"] = [list(b) for b in batch]
    return [ma.tokenizer.decode(b, skip_special_tokens=not spec["stop"]) for b in batch]

def sample_probs(logprobs, temperature, top_k, top_p, inner=ma.create_sample_logprobs):
    v, i = torch.topk(logprobs.float(), 2)  # the combined score's top two at every step (near ties)
    state["top2"].append([v.tolist(), i.tolist()])
    return inner(logprobs, temperature, top_k, top_p)

ma.get_decoded_tokens = decoded
ma.create_sample_logprobs = sample_probs
fed = {}
for op in ma.runnable_operators:
    tin = ma.model_input_tokens[op.id()]
    tin.set_inputs(spec["inputs"])
    fed[op.system_prompt] = [list(map(int, ids)) for ids in tin.input_tokens]
print("BENCH " + json.dumps({"load_s": load_s, "fed": fed, "transformers": __import__("transformers").__version__,
                             "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req.get("quit"):
        break
    state["top2"] = []
    t0 = time.perf_counter()
    ma.generate_text(req["xs"], max_new_tokens=req["n"], temperature=0.0)
    dt = time.perf_counter() - t0
    print("BENCH " + json.dumps({"seconds": dt, "ids": state["ids"], "top2": state["top2"]}), flush=True)
'''


def peer_python() -> Path | None:
    """The LMA venv's python: $TNB_PEER_PYTHON, else /work/peers/lma-venv; None when it is not there."""
    path = Path(os.environ.get(PEER_ENV) or DEFAULT_PEER)
    return path if path.is_file() else None


def peer_model(src: Path, dst: Path) -> Path:
    """A copy of converted model folder `src` that transformers 4.33 loads as the same model (weights linked)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.safetensors"):
        (dst / f.name).symlink_to(f.resolve())
    config = json.loads((src / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    config["rope_theta"] = rope.get("rope_theta", config.get("rope_theta", 10000.0))  # 4.33 reads only this key
    config["torch_dtype"] = config.get("dtype", "float32")
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    tok["model"].pop("ignore_merges", None)
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    tconf = json.loads((src / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**tconf, "tokenizer_class": "GPT2TokenizerFast"}))
    return dst


def merged_model(policy: Policy, base: Path, dst: Path) -> Path:
    """`policy`'s LoRA adapter merged into a full model folder (PEFT merge_and_unload), made loadable by LMA."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    saved, raw = dst / "adapter", dst / "raw"
    policy.backbone.save_adapter(policy.adapter, saved)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), saved)
    model.merge_and_unload().save_pretrained(raw, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, raw / name)
    return peer_model(raw, dst / "peer")


def lma_prompt(policy: Policy, x: str) -> str:
    """The exact text our chat template renders for (z, x), minus the leading BOS text LMA adds as an id itself.

    LMA tokenises this text with special tokens on, so it gives our ids only when z and x hold no special-token
    look-alikes (`<|im_end|>` as text), which our encoder keeps as plain text; the case checks the ids it fed.
    """
    tok = policy.tokenizer
    text = tok.decode(prompt_ids(tok, policy.prompt, x), skip_special_tokens=False)
    bos = tok.bos_token or ""
    return text[len(bos):] if bos and text.startswith(bos) and tok.bos_token_id is not None else text


class Peer:
    """LMA in its own venv: a child that loads the formula once and times each `generate` request."""

    def __init__(self, python: Path, spec: dict[str, Any], folder: Path) -> None:
        (folder / "spec.json").write_text(json.dumps(spec))
        (folder / "driver.py").write_text(DRIVER)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": ""}
        self.log = folder / "stderr"
        self._err = self.log.open("w")
        self.proc = subprocess.Popen([str(python), str(folder / "driver.py"), str(folder / "spec.json")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=env, cwd=folder)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith("BENCH "):
                return json.loads(line[6:])
        raise RuntimeError(f"LMA driver exited (rc={self.proc.wait()}): {self.log.read_text()[-1500:]}")

    def generate(self, xs: list[str], n: int) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"xs": xs, "n": n}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=60)
        self._err.close()


def agreement(policy: Policy, ours: list[int], theirs: list[int]) -> dict[str, int]:
    """How far two greedy outputs agree: tokens and characters in their common prefix, and the lengths."""
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    a, b = (policy.tokenizer.decode(t, skip_special_tokens=False) for t in (ours, theirs))
    chars = next((i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), min(len(a), len(b)))
    return {"tokens": k, "of_tokens": len(ours), "chars": chars, "of_chars": len(a)}


def _terms(kind: str, pi0: Policy, base: Path, tmp: Path, xs: list[str]) -> tuple[Composition, dict[str, Any]]:
    """Our composition and the peer's spec for the same three terms (label, model folder, weight, prompt texts);
    `base` is our converted folder, `tmp / "base"` its copy for LMA."""
    folder = tmp / "base"
    if kind == "prompt":
        parts = [("pi0", pi0, 1.0), ("z+", pi0.with_prompt(POSITIVE), 1.0), ("z-", pi0.with_prompt(NEGATIVE), -1.0)]
        models = dict.fromkeys(("pi0", "z+", "z-"), folder)
    else:
        torch.manual_seed(0)  # PEFT draws lora_A from the global generator: the same adapters in every run
        expert = perturbed_adapter(pi0, "expert", scale=LORA_SCALE, seed=1)
        anti = perturbed_adapter(pi0, "anti", scale=LORA_SCALE, seed=2)
        parts = [("pi0", pi0, 1.0), ("expert", expert, 1.0), ("anti", anti, -1.0)]
        models = {"pi0": folder, "expert": merged_model(expert, base, tmp / "expert"),
                  "anti": merged_model(anti, base, tmp / "anti")}
    ours = tnb.steer(base=parts[0][1], expert=parts[1][1], anti=parts[2][1], beta=1.0)
    terms = [{"label": label, "model": str(models[label]), "weight": w, "prompts": {x: lma_prompt(p, x) for x in xs}}
             for label, p, w in parts]
    return ours, {"terms": terms, "dtype": "float32", "stop": False, "inputs": xs, "ours_fed":
                  {label: [prompt_ids(p.tokenizer, p.prompt, x) for x in xs] for label, p, _ in parts}}


def _skip(why: str) -> list[Row]:
    return [row("peer", "LMA side by side", ours="Eq. 7 composition", baseline="language-model-arithmetic",
                unit="tokens/s", ours_value=float("nan"), base_value=float("nan"), ratio=float("nan"),
                note=f"skipped: {why}")]


def peer(env: Env) -> list[Row]:
    """tokens/s ours / LMA's for the same three-term formula (prompt terms, LoRA terms), greedy, same tokens."""
    python = peer_python()
    if python is None:
        return _skip(f"peer not installed (no {DEFAULT_PEER}, {PEER_ENV} unset); see benchmarks/peer.py")
    if env.tiny:
        return _skip("needs the real model (LMA loads a model folder), not the --tiny one")
    lengths, repeats = ((4,), 1) if env.sizes == QUICK else ((32, 64), 2)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tnb-peer-") as tmp:
        base = Path(converted_gguf(default_gguf_path()))
        peer_model(base, Path(tmp) / "base")
        for kind in ("prompt", "lora"):
            ours, spec = _terms(kind, env.load(), base, Path(tmp), INPUTS)
            rows += _side_by_side(kind, ours, spec, python, Path(tmp) / kind, lengths, repeats)
    return rows


def _side_by_side(kind: str, ours: Composition, spec: dict[str, Any], python: Path, folder: Path,
                  lengths: tuple[int, ...], repeats: int) -> list[Row]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, load0 = list(spec["inputs"]), os.getloadavg()[0]
    them = Peer(python, {k: v for k, v in spec.items() if k != "ours_fed"}, folder)
    try:
        same_ids = them.ready["fed"] == spec["ours_fed"]
        rows = []
        for n in lengths:
            times: dict[str, list[float]] = {"ours": [], "lma": []}
            with no_stop(ours.backbone):
                for k in range(repeats + 1):  # round 0 warms both up; then ours, theirs, ours, theirs ...
                    t = _timed(lambda n=n: ours.generate_ids(xs, max_new_tokens=n))
                    ours_ids, out = t[1], them.generate(xs, n)
                    if k:
                        times["ours"].append(t[0])
                        times["lma"].append(out["seconds"])
            agree = [agreement(ours, a, b) for a, b in zip(ours_ids, out["ids"], strict=True)]
            assert all(len(a) == len(b) == n for a, b in zip(ours_ids, out["ids"], strict=True)), "token counts differ"
            t_ours, t_lma = median(times["ours"]), median(times["lma"])
            rows.append({**_row(kind, n, xs, t_ours, t_lma, agree, same_ids, load0), "seconds": times})
        return rows
    finally:
        them.close()


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _row(kind: str, n: int, xs: list[str], t_ours: float, t_lma: float, agree: list[dict[str, int]], same_ids: bool,
         load0: float) -> Row:
    tokens = len(xs) * n
    what = "3 prompts: π0 + π(·|z+) − π(·|z−)" if kind == "prompt" else "3 LoRA: π0 + expert − anti (merged folders for LMA)"
    agreed = "; ".join(f"input {i + 1}: " + ("identical" if a["tokens"] == a["of_tokens"] else
                                             f"first {a['tokens']} tokens / {a['chars']} chars equal")
                       + f" ({a['of_chars']} chars)" for i, a in enumerate(agree))
    note = (f"{len(xs)} inputs × {n} new tokens, greedy, stop off, fp32, 1 thread each, alternating, generation "
            f"only; prompt ids fed {'identical' if same_ids else 'DIFFERENT'}; greedy outputs: {agreed}; load avg "
            f"{load0:.2f} → {os.getloadavg()[0]:.2f}")
    r = row("peer", f"{what}, {n} tokens", ours="tnb.steer(...).generate_ids", baseline="LMA ModelArithmetic.generate_text",
            unit="tokens/s", ours_value=tokens / t_ours, base_value=tokens / t_lma, ratio=t_lma / t_ours,
            target=TARGETS[kind], note=note)
    return {**r, "agreement": agree, "same_prompt_ids": same_ids}
