"""Equations for the panels' headers: a small LaTeX subset turned into MathML in Python.

Browsers render MathML natively (no JavaScript), so the equations are maths in JupyterLab, in Voilà and in an
exported page, offline: Voilà's own typesetting loads MathJax from a CDN, which offline classrooms and CI cannot
reach. The subset is what the survey's equations need: letters, digits, operators, `_` / `^`, `{…}` groups, Greek
letters, `\\log \\max \\min \\exp`, `\\mathrm{…}`, `\\mathbb{…}`, `\\text{…}`, `\\frac` / `\\tfrac`, `\\big` delimiters,
`\\| \\cdot \\propto \\approx \\sim`, and the spaces `\\, \\; \\quad`. Anything else is an error (not silent).

>>> tex(r"\\pi_0(y|x)")[:38]
'<math><mrow><msub><mi>π</mi><mn>0</mn>'
"""

from __future__ import annotations

import html
import re

from ..errors import InvalidArgumentError

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\s+|.")
GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "theta": "θ", "lambda": "λ",
         "mu": "μ", "pi": "π", "sigma": "σ", "tau": "τ", "phi": "φ", "psi": "ψ", "omega": "ω", "Delta": "Δ",
         "Pi": "Π", "Sigma": "Σ"}
SYMBOLS = {"|": "‖", "cdot": "·", "propto": "∝", "approx": "≈", "sim": "∼", "to": "→", "leq": "≤", "geq": "≥",
           "in": "∈", "times": "×", "Rightarrow": "⇒", "infty": "∞", "{": "{", "}": "}"}
DOUBLE_STRUCK = {"E": "𝔼", "R": "ℝ", "N": "ℕ", "Z": "ℤ", "P": "ℙ", "Q": "ℚ", "C": "ℂ"}
SPACES = {",": "0.17em", ";": "0.28em", ":": "0.22em", "quad": "1em", " ": "0.25em"}
FUNCTIONS = ("log", "max", "min", "exp", "arg")


def render(text: str) -> str:
    """`text` with every `$…$` formula replaced by its MathML (the rest is HTML, left as it is)."""
    return re.sub(r"\$(.+?)\$", lambda m: tex(m.group(1)), text)


def tex(source: str) -> str:
    """MathML (inline) for a LaTeX formula in the subset above; an unknown command raises InvalidArgumentError."""
    tokens = [t for t in _TOKEN.findall(source) if not t.isspace()]
    nodes, rest = _group(tokens, 0, source)
    if rest != len(tokens):
        raise InvalidArgumentError(f"unbalanced '}}' in the formula {source!r}.")
    return f"<math><mrow>{''.join(nodes)}</mrow></math>"


def _group(tokens: list[str], i: int, source: str) -> tuple[list[str], int]:
    """Nodes up to a closing '}' (or the end); returns them and the index after the group."""
    out: list[str] = []
    while i < len(tokens) and tokens[i] != "}":
        start = i
        node, i = _atom(tokens, i, source)
        sub = sup = None
        while i < len(tokens) and tokens[i] in ("_", "^"):
            mark = tokens[i]
            script, i = _atom(tokens, i + 1, source)
            sub, sup = (script, sup) if mark == "_" else (sub, script)
        out.append(_scripts(node, sub, sup))
        if tokens[start][1:] in FUNCTIONS and tokens[start].startswith("\\"):
            out.append("<mspace width='0.17em'/>")
    return out, i


def _scripts(node: str, sub: str | None, sup: str | None) -> str:
    if sub is not None and sup is not None:
        return f"<msubsup>{node}{sub}{sup}</msubsup>"
    if sub is not None:
        return f"<msub>{node}{sub}</msub>"
    if sup is not None:
        return f"<msup>{node}{sup}</msup>"
    return node


def _atom(tokens: list[str], i: int, source: str) -> tuple[str, int]:
    if i >= len(tokens):
        raise InvalidArgumentError(f"the formula {source!r} ends where a symbol was expected.")
    t = tokens[i]
    if t == "{":
        nodes, j = _group(tokens, i + 1, source)
        if j >= len(tokens):
            raise InvalidArgumentError(f"unbalanced '{{' in the formula {source!r}.")
        return f"<mrow>{''.join(nodes)}</mrow>", j + 1
    if t.startswith("\\"):
        return _command(t[1:], tokens, i + 1, source)
    if t.isalpha():
        return f"<mi>{html.escape(t)}</mi>", i + 1
    if t.isdigit():
        return f"<mn>{t}</mn>", i + 1
    op = {"-": "−", "*": "∗", "'": "′"}.get(t, t)
    stretch = " stretchy='false'" if t in "()[]|" else ""
    return f"<mo{stretch}>{html.escape(op)}</mo>", i + 1


def _text_arg(tokens: list[str], i: int, source: str) -> tuple[str, int]:
    """The raw text of a {…} argument (for \\mathrm, \\text, \\mathbb)."""
    if i >= len(tokens) or tokens[i] != "{":
        raise InvalidArgumentError(f"a command in {source!r} needs a {{…}} argument.")
    j = tokens.index("}", i)
    return "".join(tokens[i + 1 : j]), j + 1


def _command(name: str, tokens: list[str], i: int, source: str) -> tuple[str, int]:
    if name in GREEK:
        return f"<mi>{GREEK[name]}</mi>", i
    if name in SYMBOLS:
        return f"<mo>{SYMBOLS[name]}</mo>", i
    if name in SPACES:
        return f"<mspace width='{SPACES[name]}'/>", i
    if name in FUNCTIONS:  # upright, a thin space after it (and after its subscript) is added by _group
        return f"<mi>{name}</mi>", i
    if name in ("mathrm", "text", "mathbb"):
        text, j = _text_arg(tokens, i, source)
        if name == "text":
            return f"<mtext>{html.escape(text)}</mtext>", j
        if name == "mathbb":  # the letters themselves: browsers draw mathvariant only on single letters, if at all
            return f"<mi>{''.join(DOUBLE_STRUCK.get(c, c) for c in text)}</mi>", j
        return f"<mi mathvariant='normal'>{html.escape(text)}</mi>", j
    if name in ("frac", "tfrac"):
        num, j = _atom(tokens, i, source)
        den, j = _atom(tokens, j, source)
        return f"<mfrac>{num}{den}</mfrac>", j
    if name in ("big", "Big", "bigg", "left", "right"):
        t = tokens[i]
        op = "‖" if t == "\\|" else t
        return f"<mo stretchy='true' minsize='1.2em'>{html.escape(op)}</mo>", i + 1
    raise InvalidArgumentError(f"\\{name} is not in the panels' LaTeX subset (formula {source!r}).")
