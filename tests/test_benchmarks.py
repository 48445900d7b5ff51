"""The benchmark suite's smoke run: structure of the report, never timings."""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fidelity import CHECKS, run_checks  # noqa: E402
from benchmarks.report import SECTIONS, render  # noqa: E402
from benchmarks.run import machine, main  # noqa: E402

FIELDS = {"section", "case", "ours", "baseline", "unit", "ours_value", "base_value", "ratio", "target", "met", "note"}


def test_quick_run_writes_every_section(tmp_path):
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    result = main(["--quick", "--tiny", "--inprocess", "--out", str(out), "--json", str(raw)])
    text = out.read_text()
    for _, title, _ in SECTIONS:
        assert f"## {title}" in text
    assert "## 11. GPU" in text and "## Closing note" in text
    assert text.index("## 11. GPU") < text.index("## 12. Fidelity checks") < text.index("## Closing note")
    assert json.loads(raw.read_text())["cases"].keys() == result["cases"].keys()
    rows = [r for case in result["cases"].values() for r in case["rows"]]
    assert not [r for r in rows if "error" in r], rows
    fidelity = result["cases"].pop("fidelity")["rows"]  # a --tiny run lists the real-model checks as not run
    assert [r["case"] for r in fidelity] == list(CHECKS) and all(r["passed"] is None for r in fidelity)
    rows = [r for case in result["cases"].values() for r in case["rows"]]
    timed = [r for r in rows if r["section"] in {"steering", "logprobs", "generate", "memory"}]
    assert {r["section"] for r in timed} == {"steering", "logprobs", "generate", "memory"}
    for r in timed:
        assert FIELDS <= r.keys()
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["met"] is None or r["met"] == (r["ratio"] >= r["target"])
    targets = {r["case"]: r["target"] for r in rows if r["target"] is not None}
    assert 0.9 in targets.values() and 0.8 in targets.values() and 3.0 in targets.values()
    assert text.count("| ") > len(timed)  # every row is a table line


def test_fidelity_checks_run_each_on_its_own_and_a_failure_is_reported(monkeypatch, capsys):
    """A failing check neither hides the others nor passes silently: its row, the report and the exit status say so."""
    from benchmarks import fidelity

    loads = []

    def needs_model(pi0):
        assert pi0 == "model"
        return "checked the model"

    def broken():
        assert 1 + 1 == 3, "arithmetic"

    monkeypatch.setattr(fidelity, "CHECKS", {"needs_model": needs_model, "broken": broken, "again": needs_model})
    rows = run_checks(load=lambda: loads.append(1) or "model")
    assert [(r["case"], r["passed"]) for r in rows] == [("needs_model", True), ("broken", False), ("again", True)]
    assert loads == [1] and rows[0]["note"] == "checked the model"  # the model is loaded once, for both
    assert rows[1]["note"].startswith("FAILED: AssertionError: arithmetic")
    assert fidelity.main(["broken"]) == 1 and "0 of 1 passed; failed: ['broken']" in capsys.readouterr().out
    text = render({"started": "now", "machine": machine(1), "command": "c", "cases": {"fidelity": {"rows": rows}}})
    assert "| broken | **failed** ❌ |" in text and "Failed cases: broken (FAILED: AssertionError" in text


def test_ratio_rows_are_consistent():
    from benchmarks.cases import row

    r = row("logprobs", "c", ours="a", baseline="b", unit="s", ours_value=1.0, base_value=2.0, ratio=2.0, target=3.0)
    assert r["met"] is False and r["ratio"] == 2.0


def test_training_memory_case_runs_each_allocator_in_its_own_process():
    from benchmarks.cases import QUICK, Env, mimalloc_path, training

    assert mimalloc_path(), "cmeel-mimalloc is part of the test extra on Linux: pip install -e '.[test]'"
    rows = training(Env(sizes=QUICK, tiny=True))
    assert [r["section"] for r in rows] == ["training", "training"]
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows), rows
    variants = [v.split(":")[0] for v in rows[0]["note"].split(". ", 1)[1].split("; ")]
    assert variants == ["glibc", "glibc + checkpointing", "mimalloc", "mimalloc + checkpointing"], rows[0]["note"]


def test_peer_case_skips_cleanly_without_the_peer(tmp_path, monkeypatch):
    from benchmarks import peer
    from benchmarks.cases import QUICK, Env

    monkeypatch.delenv(peer.PEER_ENV, raising=False)
    monkeypatch.setattr(peer, "DEFAULT_PEER", tmp_path / "no-lma-venv" / "python")
    rows = peer.peer(Env(sizes=QUICK, tiny=True))
    assert len(rows) == 1 and "error" not in rows[0] and rows[0]["met"] is None
    assert rows[0]["note"].startswith("skipped: peer not installed")


def test_peer_gets_the_same_prompt_ids_and_a_folder_old_transformers_reads(tmp_path, tiny):
    """LMA puts the BOS id before each term's text itself: [BOS] + ids(lma_prompt) must be our prompt ids."""
    import triangle_nb as tnb
    from benchmarks.peer import lma_prompt, peer_model
    from triangle_nb.chat import prompt_ids
    from triangle_nb.loading import converted_gguf, default_gguf_path

    tok, x = tiny.tokenizer, "Describe the rain."
    for p in (tiny, tiny.with_prompt(tnb.Prompt(system="You are a gloomy assistant."))):
        fed = [tok.bos_token_id] + tok(lma_prompt(p, x), add_special_tokens=False)["input_ids"]
        assert fed == prompt_ids(tok, p.prompt, x)
    src = Path(converted_gguf(default_gguf_path()))
    out = peer_model(src, tmp_path / "peer")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]  # 4.33 reads only the flat key
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in merges[:100])
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2TokenizerFast"
    assert (out / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
