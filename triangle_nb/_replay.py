"""Recorded sampling for the provenance test (tests/test_provenance.py): a bake's first steps rerun live on stored
training samples, the first sampling call re-sampled live and compared token for token.

A provenance rerun repeats a bake's first two optimiser steps live; half of its time went to sampling the run's
training data again (every chunk of it, before step 1). Inside `using(store)`, each sampling call — one seeded chunk
of `Policy.generate_ids`, one group of the hypernetwork's teacher samples — is keyed by the SHA-256 of everything
that determines its tokens: the policy's exact identity (base-weight digest, adapter weights, soft prompt, prompt
text, exit layer), the rows, the sampling settings, the seed and the token budget. A store that records keeps what
each call sampled. A store that replays samples its *first* call live and requires the stored tokens (a change to the
sampler fails there, naming the call), then serves every call whose key it holds; a key it does not hold (new inputs,
other weights, another seed) is sampled live. Outside `using(...)` nothing changes: sampling is always live.

Why our own: no library keys and replays a model's sampled token ids by what determined them; transformers'
generation has no record/replay hook, and a cache keyed by less (the inputs alone) would serve a near match.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Sampled = list[list[int]]


class ReplayMismatch(AssertionError):
    """The first sampling call of a replayed run did not give the stored tokens: the sampler changed."""


class SampleStore:
    """Sampled token ids by the key of what determined them; `record=True` fills it, else it replays."""

    def __init__(self, samples: dict[str, Sampled] | None = None, *, record: bool = False) -> None:
        self.samples: dict[str, Sampled] = dict(samples or {})
        self.record = record
        self.live = self.served = 0  # calls sampled live / served from the store

    @classmethod
    def load(cls, path: Path) -> SampleStore:
        return cls(json.loads(path.read_text()) if path.is_file() else {})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.samples, sort_keys=True, separators=(",", ":")))
        tmp.replace(path)

    def __call__(self, material: Callable[[], Any], sample: Callable[[], Sampled]) -> Sampled:
        from ._keys import identity, key_of

        key = key_of(identity(material()))
        if self.record or key not in self.samples:
            out = sample()
            self.live += 1
            if self.record:
                self.samples[key] = [list(map(int, row)) for row in out]
            return out
        if self.live + self.served == 0:  # the first call: sampled live, and it must equal the stored tokens
            out = sample()
            self.live += 1
            if [list(map(int, row)) for row in out] != self.samples[key]:
                raise ReplayMismatch(f"the first sampling call (key {key[:12]}) gave other tokens than the stored "
                                     "ones: the sampler changed. Record the samples again (see "
                                     "tests/test_provenance.py).")
            return out
        self.served += 1
        return [list(row) for row in self.samples[key]]


_ACTIVE: dict[int, SampleStore] = {}  # thread id -> store (the test's thread only: panels' threads stay live)


@contextlib.contextmanager
def using(store: SampleStore) -> Iterator[SampleStore]:
    """Sampling calls made by this thread inside the block go through `store`."""
    me = threading.get_ident()
    _ACTIVE[me] = store
    try:
        yield store
    finally:
        _ACTIVE.pop(me, None)


def sampled(material: Callable[[], Any], sample: Callable[[], Sampled]) -> Sampled:
    """`sample()`, or the active store's answer for the call `material()` describes (only inside `using`)."""
    store = _ACTIVE.get(threading.get_ident()) if _ACTIVE else None
    return sample() if store is None else store(material, sample)
