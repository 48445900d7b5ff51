"""The notebooks as a reader opens them, before running anything (issue 26, point 2): no object repr where a widget
cannot render without its kernel, no progress bar frozen at 0 %, tokens written as the text they stand for.

The readable fallbacks themselves (Triangle, TokenHeatmap, a panel) and the output cleaner are checked on objects
made here; the shipped notebooks are checked as saved (`python -m triangle_nb.bake --execute` writes them).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import nbformat
import pytest

from triangle_nb import bake

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")
BYTE_PIECES = re.compile(r"'Ġ\w|'Ċ|\bĠ[A-Za-z]")  # byte-level BPE pieces ("ĠThe") in a token label or table


def _texts(output: dict) -> list[str]:
    if output.get("output_type") == "stream":
        return ["".join(output.get("text", ""))]
    return ["".join(v) if isinstance(v, list) else v for k, v in output.get("data", {}).items()
            if k.startswith("text/") or k == "application/vnd.plotly.v1+json" and isinstance(v, str)]


def _outputs(path: Path) -> list[tuple[int, dict]]:
    nb = json.loads(path.read_text())
    return [(i, o) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_saved_notebook_opens_clean(path):
    outputs = _outputs(path)
    assert any(o.get("output_type") in ("execute_result", "display_data") for _, o in outputs), \
        f"{path.name} is saved without outputs: python -m triangle_nb.bake --execute {path.relative_to(ROOT)}"
    for i, o in outputs:
        for text in _texts(o):
            assert not OBJECT_REPR.search(text), (path.name, i, text[:120])
            assert not bake._progress_bar(o), (path.name, i, text[:120])
        plotly = json.dumps(o.get("data", {}).get("application/vnd.plotly.v1+json", {}), ensure_ascii=False)
        assert not BYTE_PIECES.search(" ".join(_texts(o)) + plotly), (path.name, i)


def test_clean_outputs_drops_only_progress_bars():
    nb = nbformat.v4.new_notebook()
    bar = nbformat.v4.new_output("display_data", data={
        "text/plain": "Loading weights:   0%|          | 0/272 [00:00<?, ?it/s]",
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0}})
    stderr = nbformat.v4.new_output("stream", name="stderr", text="steps:  50%|█████     | 1/2 [00:01<00:01]\r")
    kept = [nbformat.v4.new_output("stream", name="stdout", text="accuracy 50%|ok| 1/2 pairs\n"),  # stdout: kept
            nbformat.v4.new_output("execute_result", data={"text/plain": "0.5"}, execution_count=1)]
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[bar, kept[0], stderr, kept[1]])]
    assert bake.clean_outputs(nb).cells[0].outputs == kept


def test_widgets_read_as_text_without_their_kernel():
    from triangle_nb.panels import ARROWS, TokenHeatmap, Triangle

    text = repr(Triangle())
    assert "object at" not in text and all(a["title"] in text for a in ARROWS)
    heat = repr(TokenHeatmap([" The", " room"], [0.5, -2.0], label="Eq. 15"))
    assert heat == "token heatmap (Eq. 15): ' The':+0.50 ' room':-2.00"


def test_tokens_read_as_text(tiny):
    from triangle_nb.chat import readable_tokens

    tok = tiny.tokenizer  # the embedded model's real tokenizer
    ids = tok("The room was\nclean", add_special_tokens=False)["input_ids"]
    assert "".join(readable_tokens(tok, ids)) == "The room was\nclean"
    assert not any("Ġ" in t or "Ċ" in t for t in readable_tokens(tok, ids))
    assert tiny.logprobs(["Hi"], ["The room was\nclean"]).tokens[0][:-1] == readable_tokens(tok, ids)


@pytest.mark.parametrize(("text", "cut", "whole"), [
    ("Hello there. I think", "Hello there. I think …", "Hello there. …"),
    ("Hello there!", "Hello there!", "Hello there!"),
    ('He said "yes."', 'He said "yes."', 'He said "yes."'),
    ("no end at all", "no end at all …", "no end at all …"),
    ("Great day 😊", "Great day 😊", "Great day 😊"),
    ("It costs 3.5 dollars and", "It costs 3.5 dollars and …", "It costs 3.5 dollars and …"),  # not "3. …"
    ("Wow!! So **great.** And then", "Wow!! So **great.** And then …", "Wow!! So **great.** …"),
    ("", "", ""),
])
def test_cut_answers_say_so(text, cut, whole):
    from triangle_nb.chat import marked_cut, whole_sentences
    from triangle_nb.panels._base import CURSOR, samples_table

    assert marked_cut(text) == cut and whole_sentences(text) == whole
    assert html.escape(cut) in samples_table({"π0": [text]})
    assert samples_table({"π0": [text + CURSOR]}).count("…") == text.count("…")  # streaming: the cursor, no "…"
