"""Token-exact chat encoding: z in the system turn, x in the user turn, y in the assistant turn.

The prompt part (everything up to the start of the assistant turn) and the response part are
tokenised separately and concatenated as ids, so the boundary between x and y is exact.

Responses are data: text that looks like a special token (`<|im_end|>` inside x, y or z) is
tokenised as plain text; only the turn markers the chat template writes itself stay special.

Threads: a fast tokenizer keeps switches on the shared Rust object (`encode_special_tokens`, truncation,
padding) that every call sets and then reads while encoding with the GIL released, so two threads encoding at
once can swap each other's switches (typed `<|im_end|>` encoded as the real token). Every tokenizer call here
runs under `tokenizer_lock(tokenizer)`, one re-entrant lock per tokenizer object.
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import ParamSpec, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from .prompt import Prompt

P = ParamSpec("P")
R = TypeVar("R")
_LOCKS: weakref.WeakKeyDictionary[object, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer: object) -> threading.RLock:
    """The one re-entrant lock of `tokenizer` (see the module docstring): hold it around any call that encodes."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(tokenizer)
        if lock is None:
            lock = _LOCKS[tokenizer] = threading.RLock()
        return lock


def _locked(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn(tokenizer, ...)` with the tokenizer's lock held."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with tokenizer_lock(args[0]):
            return fn(*args, **kwargs)

    return run


@_locked
def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of user text as plain text: a special token's text (`<|im_end|>`) becomes ordinary tokens.

    >>> tok.all_special_ids[0] in text_ids(tok, "<|im_end|>")  # doctest: +SKIP
    False
    """
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@_locked
def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, x: str) -> list[int]:
    """Ids of the chat up to and including the assistant header, for input x under prompt z."""
    virtual = tuple(getattr(prompt, "virtual_ids", ()))  # a soft prompt (triangle_nb.soft_prompt)
    if virtual:
        return _with_virtual(tokenizer, prompt, x, virtual)
    if tokenizer.chat_template is None:  # a base model: z and x as plain text
        return _plain_ids(tokenizer, _plain_text(prompt, x))
    return _encode_rendered(tokenizer, _render(tokenizer, prompt.to_messages(x)))


_SLOT = "\ue000"  # a private-use character marking where a soft prompt's virtual tokens go


def _with_virtual(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, x: str, virtual: tuple[int, ...]) -> list[int]:
    """The chat with the soft prompt's virtual ids at the start of the system turn (before any text z)."""
    if tokenizer.chat_template is None:
        return list(virtual) + _plain_ids(tokenizer, _plain_text(prompt, x))
    msgs = prompt.to_messages(x)
    if msgs[0]["role"] == "system":
        msgs[0] = {"role": "system", "content": _SLOT + msgs[0]["content"]}
    else:
        msgs.insert(0, {"role": "system", "content": _SLOT})
    before, after = _render(tokenizer, msgs).split(_SLOT, 1)
    return _encode_rendered(tokenizer, before) + list(virtual) + _encode_rendered(tokenizer, after)


def _plain_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A base model's prompt: all of it user text, with the tokenizer's own BOS (if it adds one)."""
    return list(tokenizer(text, add_special_tokens=True, split_special_tokens=True)["input_ids"])


# -- the template's special tokens vs look-alikes in the messages ----------------------------------
_OPEN, _CLOSE = "\U000f0010", "\U000f0011"  # private-use marks around special-token text inside a message


def _render(tokenizer: PreTrainedTokenizerBase, msgs: list[dict[str, str]]) -> str:
    """The chat as text up to the assistant header, with special-token text inside the messages marked."""
    if msgs[0]["role"] == "system" and not supports_system(tokenizer):
        msgs = _system_as_prefix(msgs)
    pattern = _special_patterns(tokenizer, len(tokenizer))[0]
    marked = [{**m, "content": _mark(m["content"], pattern)} for m in msgs]
    return tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)


def _mark(text: str, pattern: re.Pattern[str]) -> str:
    """`text` with each special-token look-alike wrapped in the private marks (any marks already there dropped)."""
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    return pattern.sub(lambda m: f"{_OPEN}{m.group(0)}{_CLOSE}", text)


@lru_cache(maxsize=16)
def _special_patterns(tokenizer: PreTrainedTokenizerBase, size: int) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Regexes for any special token's text (longest first: a token wins over the tokens inside it), and for
    such a text either marked (group 1) or written by the template (group 2). `size` (the tokenizer's length)
    keys the cache: tokens added later are seen."""
    specials = sorted((t.content for t in tokenizer.added_tokens_decoder.values() if t.special), key=len, reverse=True)
    any_special = "|".join(map(re.escape, specials)) or "(?!)"  # (?!) never matches
    return re.compile(any_special), re.compile(f"{_OPEN}({any_special}){_CLOSE}|({any_special})")


def _encode_rendered(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of text from `_render`: the template's special tokens as tokens, the marked look-alikes as text.

    Without marks this is the tokenizer's own encoding of `text` (the ids `apply_chat_template` gives). With
    marks, each run of text between two of the template's special tokens is encoded as plain text, as the
    tokenizer itself encodes the text between special tokens.
    """
    if _OPEN not in text and _CLOSE not in text:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids: list[int] = []
    for piece, special in _absorb_spaces(tokenizer, _runs(text, _special_patterns(tokenizer, len(tokenizer))[1])):
        ids += [tokenizer.convert_tokens_to_ids(piece)] if special else text_ids(tokenizer, piece)
    return ids


def _runs(text: str, pattern: re.Pattern[str]) -> list[tuple[str, bool]]:
    """Split rendered text into (piece, is a special token the template wrote); marked look-alikes join the text."""
    out: list[tuple[str, bool]] = []
    run, start = "", 0
    for m in pattern.finditer(text):
        run += text[start : m.start()] + (m.group(1) or "")
        if m.group(2) is not None:
            out += [(run, False)] * bool(run) + [(m.group(2), True)]
            run = ""
        start = m.end()
    out += [(run + text[start:], False)] * bool(run + text[start:])
    return [(p.replace(_OPEN, "").replace(_CLOSE, ""), special) for p, special in out]  # lone marks: dropped


def _absorb_spaces(tokenizer: PreTrainedTokenizerBase, pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """A special token with lstrip/rstrip swallows the whitespace beside it, as the tokenizer does."""
    flags = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    texts = [p for p, _ in pieces]
    for k, (piece, special) in enumerate(pieces):
        if special and flags[piece].rstrip and k + 1 < len(pieces):
            texts[k + 1] = texts[k + 1].lstrip()
        if special and flags[piece].lstrip and k > 0:
            texts[k - 1] = texts[k - 1].rstrip()
    return [(t, special) for t, (_, special) in zip(texts, pieces, strict=True) if t]


def readable_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """Each token as the text a reader sees (" The", "\\n"), not the tokenizer's byte-level pieces ("ĠThe", "Ċ"): every
    token list a user reads (LogProbs, TokenScores, traces, heatmaps, plots) is made by this one helper."""
    return [tokenizer.decode([int(t)]) for t in ids]


# where a generated answer ends a sentence: . ! ? … (and closing quotes, brackets, asterisks) before a space or the
# end (so not the point in "3.5"), or an emoji
_SENTENCE_END = re.compile(r"""(?:[.!?…]+[)\]"'”’*]*|[\U0001F300-\U0001FAFF\u2600-\u27BF])(?=\s|$)""")


def ends_mid_sentence(text: str) -> bool:
    """True when `text` stops without ending a sentence: what a token limit does to an answer. A display test, not
    the decoder's verdict (an answer may end at the limit on a full stop, or finish without one)."""
    text = text.rstrip()
    return bool(text) and _last_end(text) < len(text)


def _last_end(text: str) -> int:
    """The index just after the last sentence end in `text` (0 when there is none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return ends[-1] if ends else 0


def marked_cut(text: str) -> str:
    """`text` with " …" after it when it stops mid-sentence: how tables show an answer the token limit cut."""
    return f"{text.rstrip()} …" if ends_mid_sentence(text) else text


def whole_sentences(text: str) -> str:
    """`text` up to its last whole sentence, " …" marking what was left off; unchanged when it ends a sentence, and
    `marked_cut(text)` when it has no sentence end at all. For printing answers: scores use the whole text."""
    end = _last_end(text.rstrip())
    return marked_cut(text) if end == 0 else (text[:end] + (" …" if ends_mid_sentence(text) else ""))


@_locked
def response_ids(tokenizer: PreTrainedTokenizerBase, y: str, end_ids: tuple[int, ...], end_of_turn: bool) -> list[int]:
    """Ids of the assistant turn y (plain text), optionally closed by the real end-of-turn token."""
    ids = text_ids(tokenizer, y)
    return ids + [end_ids[0]] if end_of_turn else ids


@_locked
def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, stop_ids: tuple[int, ...]) -> tuple[int, ...]:
    """The id that closes an assistant turn first (the chat template's, else eos), then the other stop ids."""
    first = template_end_of_turn(tokenizer)
    first = tokenizer.eos_token_id if first is None else first
    return stop_ids if first is None else (first, *[i for i in stop_ids if i != first])


_REPLY = "\U000f0012"  # a private-use character standing for an assistant message's text


@_locked
def template_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes after an assistant message (`<|im_end|>`), or None.

    Read from the template itself: render a user turn and a one-message assistant turn and take the first
    special token after the assistant's text. None without a template, or when none follows it.
    """
    return _template_end_of_turn(tokenizer, str(tokenizer.chat_template))  # a new template: read it again


@lru_cache(maxsize=16)
def _template_end_of_turn(tokenizer: PreTrainedTokenizerBase, template: str) -> int | None:
    if tokenizer.chat_template is None:
        return None
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _REPLY}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - templates raise their own exceptions (e.g. a conversation they refuse)
        return None
    if _REPLY not in text:
        return None
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    after = tokenizer(text.split(_REPLY, 1)[1], add_special_tokens=False)["input_ids"]
    return next((int(i) for i in after if i in specials), None)


@lru_cache(maxsize=16)
def supports_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders a system turn (Gemma-style templates do not)."""
    try:
        with tokenizer_lock(tokenizer):
            tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                          tokenize=False)
    except Exception:  # templates raise their own exceptions for unsupported roles
        return False
    return True


def _system_as_prefix(msgs: list[dict[str, str]]) -> list[dict[str, str]]:
    system, rest = msgs[0]["content"], [dict(m) for m in msgs[1:]]
    rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


def _plain_text(prompt: Prompt, x: str) -> str:
    shots = "".join(f"{ex_x}\n{ex_y}\n\n" for ex_x, ex_y in prompt.examples)
    head = f"{prompt.system_text()}\n\n" if prompt.system_text() else ""
    return f"{head}{shots}{x}\n"


@dataclass
class PairBatch:
    """Right-padded (x, y) pairs ready for one forward.

    input_ids / attention_mask: [B, T]; targets: [B, T] next-token ids (-100 outside y);
    the logits at position t predict targets[:, t].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    response_tokens: list[list[int]]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.targets != -100

    @property
    def window(self) -> int:
        """The trailing positions whose logits predict some target: a forward needs `logits_to_keep=window` only
        (the LM head over a 49k vocabulary at every prompt position is most of a scoring forward's memory)."""
        hit = self.response_mask.any(0).nonzero()
        return int(self.targets.shape[1] - hit[0, 0]) if len(hit) else 1

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(self.input_ids.to(device), self.attention_mask.to(device), self.targets.to(device),
                         self.response_tokens)


def pair_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> PairBatch:
    """Concatenate (prompt ids, response ids) rows and right-pad them."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        if r:  # logits at position t predict token t+1
            targets[i, len(p) - 1 : len(seq) - 1] = torch.tensor(r)
    return PairBatch(ids, mask, targets, [r for _, r in rows])


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists for generation: [B, T] ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask
