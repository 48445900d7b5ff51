"""Build notebooks/10_lifelong.ipynb (then bake it: python -m triangle_nb.bake notebooks/10_lifelong.ipynb)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("""# 10 · An open problem: lifelong internalisation of a conversation

The survey closes each arrow with future directions. This notebook runs one of them; notebook 09 runs another
(token-level rewards from sequence-level preferences, §3.2).

**Lifelong in-context learning** (§4.2: *"periodic transformation [of the interaction history into
parameters] acts as a vital link"*). A conversation keeps at most W tokens in its context; every k turns, the turns
that left the window are **internalised** (arrow 3, Eq. 9 with those turns as z) into one adapter that
accumulates, so the model keeps what it was told while the prompt stays short.

A scripted conversation (`triangle_nb.lifelong.SCRIPTS["test"]`, held out from every setting we chose): the user states
eight fictional facts in four turns, then talks about other things. `tnb.Conversation` keeps at most W prompt
tokens; every k turns, the turns that left the window are distilled into its one adapter (Eq. 9 on probe-like
questions it builds from the turns, plus a replay of earlier rounds' questions). The base weights never change.

The internalisation rounds are baked (shipped results, shown with their provenance); `LIVE = True` reruns them."""),
    code("""# parameters
LIVE = False            # True reruns every internalisation round live (minutes); False shows the shipped bakes
WINDOW, EVERY = 192, 4  # the conversation's context budget W (prompt tokens) and its internalisation period k""",
         metadata={"tags": ["parameters"]}),
    code("""import numpy as np
import triangle_nb as tnb

tnb.set_live(LIVE)  # a baked result says so: "baked <date> · <s> s on 1 CPU thread · LIVE=True reruns it"
pi0 = tnb.load_policy()"""),
    md("""## The conversation

The user's first four turns state the facts; the assistant answers each (live, on π0 with the window)."""),
    code("""from triangle_nb.lifelong import SCRIPTS

script = SCRIPTS["test"]
chat = tnb.Conversation(pi0, window=WINDOW, every=EVERY)
for text in script.facts:
    print(f"user: {text}\\n  assistant: {chat.say(text)[:100]}")"""),
    code("""for text in script.chat:
    chat.say(text)
print(chat)
for r in chat.rounds:
    print(f"round over turns {r['n_turns']}: {r['n_questions']} questions, KL {r['kl_train_before']:.3f} -> "
          f"{r['kl_train_after']:.3f}  [{r['provenance']}]")
print("prompt tokens per turn:", chat.prompt_tokens)
assert max(chat.prompt_tokens) <= WINDOW and chat.internalised >= len(script.facts)"""),
    md("""**The probes**, asked next (nothing is added to the conversation), phrased unlike the questions the
internalisation built: (a) the window only, (b) the same window with the adapter, (c) the whole history in
context — the ceiling, with an unbounded prompt."""),
    code("""out = tnb.recall(chat, script.probes, notes=False)  # notes=True adds (c'): the history as the teacher's note
print(f"recall of the 8 facts after they left the window: truncation {out['recall_truncation']:.3f} · "
      f"internalised {out['recall_internalised']:.3f} · full history {out['recall_full_history']:.3f}")
print(f"prompt tokens: window {out['prompt_tokens_window']} (≤ W = {WINDOW}) vs full history {out['prompt_tokens_full']}")
assert out["prompt_tokens_window"] <= WINDOW and out["recall_internalised"] >= out["recall_truncation"]"""),
    code("""# NBVAL_IGNORE_OUTPUT
out["answers"]"""),
    md("""A conversation is saved and loaded like every result (atomic folder; `tnb.load(folder, base=pi0)`), and
continues where it stopped; on another base model it refuses with an `AdapterMismatchError`."""),
    code("""import tempfile

with tempfile.TemporaryDirectory() as tmp:
    again = tnb.load(chat.save(f"{tmp}/chat"), base=pi0)
    print(again, "| same adapter output:", bool(np.allclose(
        again.policy.logprobs(["Hi"], ["Hello!"]).sum, chat.policy.logprobs(["Hi"], ["Hello!"]).sum)))"""),
    md("""## What the numbers say, and what would move them

What the adapter keeps is bounded by what the model can answer with the turns in context (the ceiling, c). On
135M parameters that ceiling is low: with the whole history in context the model answers few of the probes, and
the internalised adapter cannot do better than the teacher it is distilled from. More rounds of a larger transfer
set, an adapter of higher rank, or a larger model raise both (BENCHMARKS.md, "Open problems").

## Exercise

1. Shrink `WINDOW` until the facts leave the window earlier: does recall with internalisation follow?
2. `tnb.recall(chat, script.probes, notes=True)` adds (c'): the history as a note in the system turn — the view the
   internalisation's teacher had. Does the model answer better from a note than from chat turns?"""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
out = Path(__file__).resolve().parents[1] / "10_lifelong.ipynb"
nbf.write(nb, out)
print("wrote", out)
