"""What the engine below `policy.py` asks of a policy. Decoding and scoring work on a policy's parts: the backbone
they run on, the prompt z in front of x, the adapter (None: the base weights) and the exit layer (None: the last).
`Policy` (policy.py) has them and builds on decoding and scoring, so those two name this protocol instead of
importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .backbone import Backbone
    from .prompt import Prompt


class PolicyPart(Protocol):
    """One plain policy of Eq. 7: π(·|x, z) with an adapter and an exit layer on a backbone."""

    @property
    def backbone(self) -> Backbone: ...

    @property
    def prompt(self) -> Prompt: ...

    @property
    def adapter(self) -> str | None: ...

    @property
    def exit_layer(self) -> int | None: ...
