"""Typed errors. Every message names the parameter at fault and how to fix it."""

from __future__ import annotations


class TriangleError(Exception):
    """Base class of every error triangle_nb raises on purpose."""


class InvalidArgumentError(TriangleError, ValueError):
    """A parameter has a wrong type or value; the message names it and the fix."""


class ModelLoadError(TriangleError, OSError):
    """A model, adapter, cache or package could not be found or read."""


class AdapterMismatchError(TriangleError, ValueError):
    """An adapter was trained for another base model."""


class ContextLengthError(TriangleError, ValueError):
    """An input does not fit in the model's context window."""


class VocabularyMismatchError(TriangleError, ValueError):
    """Components of a composition do not share one vocabulary."""


class RewardError(TriangleError, ValueError):
    """A reward function returned something unusable or raised."""


class JudgeParseError(RewardError):
    """A verbalised judge score could not be parsed."""


class ArtifactKindError(TriangleError, ValueError):
    """A saved artifact is of another kind than the loader expects."""


class BackboneBusyError(TriangleError, RuntimeError):
    """A shared backbone is training in another thread (a panel's job) and cannot do what was asked meanwhile."""
