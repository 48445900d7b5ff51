"""Candidate prompts a prompt search proposes itself, from samples — no user candidates needed.

Both prompt searches (arrow 4, update ⇒ prompt, Eq. 11–12; arrow 6, reward ⇒ prompt, Eq. 16) need candidates.
A 135M model asked to *write* an instruction mostly writes vague ones ("You are a helpful assistant..."), so the
searches also build candidates directly from what the target behaviour looks like:

- `demonstrations`: a few target samples (x, y) as few-shot turns — in-context learning of the behaviour
  (the "examples" kind of z in the survey's Table 2);
- `contrast_words` + `style_instruction`: instruction induction by contrast — the words the target answers
  (π*'s, or the high-reward ones) use far more often than the reference answers (π0's, or the low-reward ones),
  written into one instruction.

No library offers these (TRL has no prompt search; APE/OPRO are papers, not packages), hence this module.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .prompt import Prompt

WORD = re.compile(r"[a-z][a-z']{2,}")
STYLE = "Always answer in a style that uses words like {words}."


def contrast_words(texts: Sequence[str], reference: Sequence[str], n: int, *, min_count: int = 2) -> list[str]:
    """The n words whose document frequency in `texts` most exceeds that in `reference` (add-½ smoothed
    log-ratio, > 0); a word must occur in at least `min_count` of `texts`."""
    target, ref = _doc_freq(texts), _doc_freq(reference)
    score = {w: np.log((c + 0.5) / (len(texts) + 1)) - np.log((ref[w] + 0.5) / (len(reference) + 1))
             for w, c in target.items() if c >= min_count}
    ranked = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, v in ranked if v > 0][:n]


def _doc_freq(texts: Sequence[str]) -> Counter[str]:
    return Counter(w for t in texts for w in set(WORD.findall(t.lower())))


def style_instruction(words: Sequence[str]) -> list[Prompt]:
    """The candidate "Always answer in a style that uses words like 'a', 'b', …" (none without words)."""
    return [Prompt(system=STYLE.format(words=", ".join(f"'{w}'" for w in words)))] if words else []


def demonstrations(examples: Sequence[tuple[str, str]], n: int, *, shots: int = 2, seed: int = 0) -> list[Prompt]:
    """n distinct prompts, each `shots` of the (x, y) examples (distinct inputs, seeded draws) as few-shot turns."""
    by_x = list({x: (x, y.strip()) for x, y in examples if y.strip()}.values())
    rng = np.random.default_rng(seed)
    out: list[Prompt] = []
    for _ in range(n if by_x else 0):
        z = Prompt(examples=tuple(by_x[j] for j in sorted(rng.permutation(len(by_x))[:shots])))
        if z not in out:
            out.append(z)
    return out


def describe(z: Prompt) -> str:
    """One line for a candidate: its system text, then its few-shot turns, if any."""
    shots = " | ".join(f"{x} → {y[:60]}" for x, y in z.examples)
    parts = [z.system_text()] + ([f"[{len(z.examples)} examples] {shots}"] if z.examples else [])
    return " ".join(p for p in parts if p) or "(empty prompt)"
