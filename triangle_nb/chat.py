"""Token-exact chat encoding: z in the system turn, x in the user turn, y in the assistant turn.

The prompt part (everything up to the start of the assistant turn) and the response part are
tokenised separately and concatenated as ids, so the boundary between x and y is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from .prompt import Prompt


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, x: str) -> list[int]:
    """Ids of the chat up to and including the assistant header, for input x under prompt z."""
    virtual = tuple(getattr(prompt, "virtual_ids", ()))  # a soft prompt (triangle_nb.soft_prompt)
    if virtual:
        return _with_virtual(tokenizer, prompt, x, virtual)
    if tokenizer.chat_template is None:  # a base model: z and x as plain text
        return tokenizer(_plain_text(prompt, x), add_special_tokens=True)["input_ids"]
    msgs = prompt.to_messages(x)
    if msgs[0]["role"] == "system" and not supports_system(tokenizer):
        msgs = _system_as_prefix(msgs)
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


_SLOT = "\ue000"  # a private-use character marking where a soft prompt's virtual tokens go


def _with_virtual(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, x: str, virtual: tuple[int, ...]) -> list[int]:
    """The chat with the soft prompt's virtual ids at the start of the system turn (before any text z)."""
    if tokenizer.chat_template is None:
        return list(virtual) + tokenizer(_plain_text(prompt, x), add_special_tokens=True)["input_ids"]
    msgs = prompt.to_messages(x)
    if msgs[0]["role"] == "system":
        msgs[0] = {"role": "system", "content": _SLOT + msgs[0]["content"]}
    else:
        msgs.insert(0, {"role": "system", "content": _SLOT})
    if not supports_system(tokenizer):
        msgs = _system_as_prefix(msgs)
    before, after = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False).split(_SLOT, 1)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(before) + list(virtual) + encode(after)


def response_ids(tokenizer: PreTrainedTokenizerBase, y: str, end_ids: tuple[int, ...], end_of_turn: bool) -> list[int]:
    """Ids of the assistant turn y, optionally closed by the end-of-turn token."""
    ids = tokenizer(y, add_special_tokens=False)["input_ids"]
    return ids + [end_ids[0]] if end_of_turn else ids


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, stop_ids: tuple[int, ...]) -> tuple[int, ...]:
    """The id that closes an assistant turn first (e.g. <|im_end|>), then the other stop ids."""
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if tok in tokenizer.get_vocab():
            tid = tokenizer.convert_tokens_to_ids(tok)
            return (tid, *[i for i in stop_ids if i != tid])
    return stop_ids


@lru_cache(maxsize=16)
def supports_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders a system turn (Gemma-style templates do not)."""
    try:
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
