"""The Backbone's soft prompts: vectors given virtual token ids past the vocabulary, which the input embedding's hooks
replace by the vectors in every forward (so scoring, generation and KV caching need no other change).

`SoftTokens` is a mixin of `backbone.Backbone`: the state it uses (`self._soft`, `self._next_virtual`, `self._virtual`,
`self.lock`, `self._runs`) is set by `Backbone.__init__` and declared at the top of the class; `__init__` also hooks
`_mask_virtual` and `_fill_virtual` onto the input embedding. This module never imports backbone.py.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

import torch

from ._threads import _Run, _serialised
from .errors import AdapterMismatchError, BackboneBusyError, InvalidArgumentError


class SoftTokens:
    """Mixin of Backbone: its soft prompts. Calls `_recorders` (`_threads.ThreadModel`) and Backbone's `base_model`
    (each marked where it is called)."""

    # set by Backbone.__init__ (see it for what each holds)
    name: str
    lock: threading.RLock
    _runs: list[_Run]
    _soft: dict[int, torch.Tensor]
    _next_virtual: int
    _virtual: torch.Tensor | None

    @_serialised
    def register_soft_tokens(self, vectors: torch.Tensor) -> tuple[int, ...]:
        """Give soft-prompt vectors [n, d] virtual token ids (V, V+1, ... past the vocabulary).

        Prompt ids may then contain these ids; the input embedding returns `vectors` at their
        positions (by reference: a trainable Parameter receives gradients), so scoring, generation
        and KV caching need no other change.
        """
        emb = self.base_model.get_input_embeddings()  # Backbone.base_model
        if vectors.ndim != 2 or vectors.shape[1] != emb.weight.shape[1]:
            raise AdapterMismatchError(
                f"soft prompt vectors must be [n, {emb.weight.shape[1]}], got {list(vectors.shape)}.")
        start = max(emb.weight.shape[0], self._next_virtual)
        self._next_virtual = start + len(vectors)
        self._soft[start] = vectors
        ids = tuple(range(start, start + len(vectors)))
        for made in self._recorders():  # ThreadModel._recorders
            made.soft_prompts.append(ids)
        return ids

    @_serialised
    def unregister_soft_tokens(self, ids: Sequence[int]) -> None:
        """Forget the soft prompt behind virtual `ids` (a SoftPrompt's `virtual_ids`): forwards no longer read its
        vectors, and a prompt still holding these ids is an error. The other soft prompts keep their ids.

        Raises:
            BackboneBusyError: a live training run trains these vectors.
            InvalidArgumentError: `ids` are not the ids of one live soft prompt.
        """
        ids = tuple(int(i) for i in ids)
        vectors = self._soft.get(ids[0]) if ids else None
        if vectors is None or ids != tuple(range(ids[0], ids[0] + len(vectors))):
            raise InvalidArgumentError(f"unregister_soft_tokens: {list(ids)[:4]} are not the virtual ids of a soft prompt "
                                       f"registered on {self.name!r}: pass a SoftPrompt's virtual_ids.")
        if any(r.trains(vectors) for r in self._runs):
            raise BackboneBusyError("unregister_soft_tokens: a running job is training this soft prompt: wait for the "
                                    "panel's job or press Stop, then unregister it.")
        del self._soft[ids[0]]

    def _mask_virtual(self, module: torch.nn.Embedding,
                      args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        ids = args[0]
        virtual = ids >= module.weight.shape[0]
        self._virtual = ids if bool(virtual.any()) else None
        return (ids.masked_fill(virtual, 0), *args[1:]) if self._virtual is not None else None

    def _fill_virtual(self, module: torch.nn.Embedding, args: object, out: torch.Tensor) -> torch.Tensor | None:
        if self._virtual is None:
            return None
        ids, self._virtual = self._virtual, None
        out = out.clone()
        for start, vectors in self._soft_blocks(ids[ids >= module.weight.shape[0]]):
            rows = (ids >= start) & (ids < start + len(vectors))
            out[rows] = vectors.to(out.device, out.dtype)[ids[rows] - start]
        return out

    def _soft_blocks(self, virtual: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """The live soft prompts (first id, vectors) that a forward's virtual ids use: only these are read."""
        starts, used = list(self._soft), {}  # ids only grow, so the starts are sorted
        for vid in virtual.unique().tolist():
            i = bisect.bisect_right(starts, vid) - 1
            if i < 0 or vid >= starts[i] + len(self._soft[starts[i]]):
                raise AdapterMismatchError("a prompt holds virtual token ids this backbone never registered (or has "
                                           "unregistered): build the SoftPrompt on the same policy's backbone "
                                           "(SoftPrompt.load(path, policy)).")
            used[starts[i]] = self._soft[starts[i]]
        me = threading.get_ident()
        if any(r.thread != me and r.trains(v) for r in self._runs for v in used.values()):
            raise BackboneBusyError("a forward through a soft prompt that a running job is training (its vectors change "
                                    "with every step): wait for the panel's job or press Stop, then use it.")
        return list(used.items())
