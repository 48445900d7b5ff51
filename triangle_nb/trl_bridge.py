"""TRL as a partner: triangle_nb rewards as TRL reward functions, preference pairs in TRL's chat format.

TRL's GRPOTrainer (and RLOOTrainer) calls every custom reward function as
`f(prompts=..., completions=..., completion_ids=..., trainer_state=..., **dataset_columns) -> list[float]`
and logs its rewards under `f.__name__`. Its datasets come in two formats:

- standard: a prompt is a str, a completion is the generated str;
- conversational: a prompt is a list of {"role", "content"} messages and a completion is a list of assistant
  messages (more than one after tool calls).

A triangle_nb reward scores r(x, y): x is the prompt string, or the content of a conversation's last user message;
y is the completion string, or the text of its assistant messages. Earlier turns and the system turn are not
seen (they are context the policy had, not the input the reward judges).

`conversational_preferences` turns prompt / chosen / rejected strings (`contrastive_pairs`) into TRL's
conversational preference format, so DPOTrainer renders them with the chat template.

>>> f = tnb.rewards.Length().as_trl()
>>> f(prompts=[[{"role": "user", "content": "Hi"}]], completions=[[{"role": "assistant", "content": "a b"}]])
[2.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import _validate as check
from .errors import InvalidArgumentError
from .prompt import Prompt

Messages = Sequence[Mapping[str, Any]]


class TRLRewardFunction:
    """A triangle_nb reward as a TRL reward function: `f(prompts, completions, **kwargs) -> list[float]`.

    A class rather than a closure so that it pickles (TRL may ship reward functions to other processes) and TRL
    reads its name from `__name__`. Extra keyword arguments (completion_ids, trainer_state, dataset columns) are
    accepted and ignored.

    Args:
        reward: any `triangle_nb.rewards.Reward`.
        name: the name TRL logs the reward under (`rewards/<name>/mean`); default: the reward's own name.

    >>> TRLRewardFunction(Length(), name="words")(prompts=["Hi"], completions=["one two"])
    [2.0]
    """

    def __init__(self, reward: Any, name: str | None = None) -> None:
        # a Reward by what it does (rewards.py makes these in Reward.as_trl; importing it here would be a circle)
        if not (callable(getattr(reward, "score", None)) and isinstance(getattr(reward, "name", None), str)):
            raise InvalidArgumentError(f"reward must be a triangle_nb Reward, got {type(reward).__name__}: wrap a "
                                       "function with tnb.rewards.FunctionReward(fn) first.")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidArgumentError(f"name must be a non-empty str (TRL logs the reward under it), got {name!r}.")
        self.reward = reward
        self.__name__ = name or reward.name

    def __call__(self, prompts: Sequence[str | Messages], completions: Sequence[str | Messages],
                 **kwargs: Any) -> list[float]:
        xs, ys = trl_pairs(prompts, completions)
        return [float(v) for v in self.reward(xs, ys)]

    def __repr__(self) -> str:
        return f"TRLRewardFunction({self.reward!r}, name={self.__name__!r})"


def trl_pairs(prompts: Sequence[str | Messages], completions: Sequence[str | Messages]) -> tuple[list[str], list[str]]:
    """(xs, ys) from TRL's prompts and completions, in the standard or the conversational format.

    >>> trl_pairs([[{"role": "user", "content": "Hi"}]], [[{"role": "assistant", "content": "Hello"}]])
    (['Hi'], ['Hello'])
    """
    ps, cs = _items(prompts, "prompts"), _items(completions, "completions")
    if len(ps) != len(cs):
        raise InvalidArgumentError(f"prompts and completions must have the same length (got {len(ps)} and "
                                   f"{len(cs)}): pass one completion per prompt, as TRL does.")
    xs = [_prompt_text(p, f"prompts[{i}]") for i, p in enumerate(ps)]
    ys = [_completion_text(c, f"completions[{i}]") for i, c in enumerate(cs)]
    return xs, ys


def _items(values: object, name: str) -> list[Any]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidArgumentError(f"{name} must be a list (one entry per sample, as TRL passes it), got "
                                   f"{type(values).__name__}: wrap a single one as [{name[:-1]}].")
    return list(values)


def _prompt_text(prompt: str | Messages, where: str) -> str:
    """x: the prompt string, or the content of the conversation's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [_content(m, f"{where}[{j}]") for j, m in enumerate(_messages(prompt, where)) if m["role"] == "user"]
    if not users:
        raise InvalidArgumentError(f"{where} is a conversation without a user message: x is the last user turn, so "
                                   "add {'role': 'user', 'content': ...} (or pass the prompt as a string).")
    return users[-1]


def _completion_text(completion: str | Messages, where: str) -> str:
    """y: the completion string, or the text of its assistant messages (joined by newlines after tool calls)."""
    if isinstance(completion, str):
        return completion
    msgs = [(j, m) for j, m in enumerate(_messages(completion, where)) if m["role"] == "assistant"]
    if not msgs:
        raise InvalidArgumentError(f"{where} holds no assistant message: y is the assistant's content, so pass "
                                   "[{'role': 'assistant', 'content': ...}] (or the completion as a string).")
    texts = [_content(m, f"{where}[{j}]") for j, m in msgs]
    return "\n".join(t for t in texts if t)


def _messages(value: object, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or not value:
        raise InvalidArgumentError(f"{where} must be a string or a non-empty list of {{'role', 'content'}} messages, "
                                   f"got {type(value).__name__} {value!r:.60}.")
    for j, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m:
            raise InvalidArgumentError(f"{where}[{j}] must be a message {{'role': ..., 'content': ...}}, got "
                                       f"{m!r:.60}: use TRL's conversational format.")
    return list(value)


def _content(message: Mapping[str, Any], where: str) -> str:
    """A message's text: a str, or the text parts of a multimodal content list; None (tool calls only) is ''."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, Sequence) and all(isinstance(p, Mapping) for p in content):
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    raise InvalidArgumentError(f"{where}['content'] must be a str or a list of {{'type': 'text', 'text': ...}} parts, "
                               f"got {type(content).__name__}.")


def conversational_preferences(pairs: Any, z: Prompt | str | None = None) -> Any:
    """Preference pairs (prompt / chosen / rejected strings, e.g. `contrastive_pairs`) in TRL's conversational format.

    TRL's DPOTrainer reads string columns as raw text (no chat template); a chat model learns from pairs rendered
    the way triangle_nb scores and generates them: x in the user turn, y in the assistant turn. `z` (optional) goes
    in the system turn and its examples before x — as `Prompt.to_messages` writes them. Other columns are kept.

    Args:
        pairs: a `datasets.Dataset` or a mapping of columns with prompt, chosen and rejected.
        z: the prompt the trained policy will run under (None: the chat template's default).

    Returns:
        A `datasets.Dataset`: prompt = messages up to the user turn, chosen / rejected = one assistant message each.

    >>> conversational_preferences({"prompt": ["Hi"], "chosen": ["Hello!"], "rejected": ["Go away."]})[0]["chosen"]
    [{'role': 'assistant', 'content': 'Hello!'}]
    """
    from datasets import Dataset

    zp = _as_prompt(z)
    cols = _columns(pairs)
    out = dict(cols)
    out["prompt"] = [zp.to_messages(x) for x in cols["prompt"]]
    for key in ("chosen", "rejected"):
        out[key] = [[{"role": "assistant", "content": y}] for y in cols[key]]
    return Dataset.from_dict(out)


def _columns(pairs: Any) -> dict[str, list[Any]]:
    names = getattr(pairs, "column_names", None) or (list(pairs) if isinstance(pairs, Mapping) else None)
    if names is None:
        raise InvalidArgumentError(f"pairs must be a datasets.Dataset or a dict of columns, got "
                                   f"{type(pairs).__name__}.")
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in names]
    if missing:
        raise InvalidArgumentError(f"pairs lacks the column(s) {missing}: it needs prompt / chosen / rejected strings "
                                   "(e.g. from tnb.contrastive_pairs).")
    cols = {c: list(pairs[c]) for c in names}
    for c in ("prompt", "chosen", "rejected"):
        check.texts(cols[c], c)
    if not len(cols["prompt"]) == len(cols["chosen"]) == len(cols["rejected"]):
        raise InvalidArgumentError("pairs' prompt, chosen and rejected columns must have the same length.")
    return cols


def _as_prompt(z: Prompt | str | None) -> Prompt:
    if z is None:
        return Prompt()
    if isinstance(z, str):
        return Prompt(system=z)
    if isinstance(z, Prompt):
        return z
    raise InvalidArgumentError(f"z must be a Prompt, a str (the system turn) or None, got {type(z).__name__}.")
