"""Argument checks shared by every public function (raise InvalidArgumentError)."""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Sequence
from typing import TypeVar

from .errors import InvalidArgumentError

E = TypeVar("E", bound=enum.Enum)


def texts(values: object, name: str, *, allow_empty: bool = False) -> list[str]:
    """Return `values` as a list of str, or raise naming `name`."""
    if isinstance(values, str):
        raise InvalidArgumentError(f"{name} must be a list of strings, not one string: wrap it as [{name}].")
    if hasattr(values, "tolist") and not isinstance(values, Sequence):  # a numpy array or pandas Series
        values = values.tolist()
    if not isinstance(values, Sequence):
        raise InvalidArgumentError(f"{name} must be a list of strings, got {type(values).__name__}.")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise InvalidArgumentError(
                f"{name}[{i}] is {type(v).__name__}, not str: pass text only (convert with str() or drop it)."
            )
        encodable(v, f"{name}[{i}]")
    if not out and not allow_empty:
        raise InvalidArgumentError(f"{name} is empty: pass at least one string.")
    return out


def encodable(value: str, name: str) -> str:
    """`value` if it is valid Unicode text (tokenizers reject lone surrogates such as '\\ud800')."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{name} holds a lone surrogate {value[exc.start]!r} at position {exc.start}, which is not text: "
            "clean it with s.encode('utf-8', 'replace').decode()."
        ) from None
    return value


def pairs(xs: object, ys: object) -> tuple[list[str], list[str]]:
    """Validate two parallel lists of texts of equal length."""
    xs_, ys_ = texts(xs, "xs", allow_empty=True), texts(ys, "ys", allow_empty=True)
    if len(xs_) != len(ys_):
        raise InvalidArgumentError(
            f"xs and ys must have the same length (got {len(xs_)} and {len(ys_)}): pass one response per input."
        )
    return xs_, ys_


def positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """An int >= minimum (numpy integers too); never a bool, float or string."""
    return integer(value, name, minimum=minimum)


def _as_float(value: object, name: str, wanted: str) -> float:
    """A real number (int, float, numpy scalar, 0-d tensor); never a bool or a string ("0.7", True pass nowhere)."""
    if _is_scalar_tensor(value):
        value = value.item()  # type: ignore[union-attr]
    if isinstance(value, bool | str | bytes) or not isinstance(value, (numbers.Real, *_np_real())):
        raise InvalidArgumentError(f"{name} must be {wanted} (a number, not {type(value).__name__}), got {value!r}.")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgumentError(f"{name} must be {wanted}, got {value!r}.") from None


def _is_scalar_tensor(value: object) -> bool:
    """A 0-d torch tensor of a number type (not bool)."""
    return type(value).__name__ == "Tensor" and getattr(value, "ndim", 1) == 0 \
        and not getattr(value, "dtype", None).__repr__().endswith("bool")


def _np_real() -> tuple[type, ...]:
    import numpy as np

    return (np.floating, np.integer)


def flag(value: object, name: str) -> bool:
    """A real bool (numpy's too): "false", 0 or None are not flags (the string "false" is truthy)."""
    if type(value).__name__ == "bool_" or isinstance(value, bool):
        return bool(value)
    raise InvalidArgumentError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); "
                               f"e.g. {name}=False.")


def integer(value: object, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An int in [minimum, maximum] (numpy integers too); never a bool, float or string."""
    if type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu":
        value = int(value)  # type: ignore[call-overload]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        top = f" and <= {maximum}" if maximum is not None else ""
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}{top}, got {value!r}.")
    return value


BETA_RANGE = (1e-6, 1e12)  # β outside it: r/β or β·Δlog π overflows, or the update vanishes (loss = log 2);
# β → ∞ is legitimate in reward-guided decoding and steering (the policy itself), so the top is generous


def finite_positive(value: object, name: str) -> float:
    """A float in (0, inf); used for β (which must also lie in BETA_RANGE: every β-scaled term stays finite)."""
    v = _as_float(value, name, "a positive number")
    if not math.isfinite(v) or v <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r} (try {name}=1.0).")
    if name == "beta" and not BETA_RANGE[0] <= v <= BETA_RANGE[1]:
        raise InvalidArgumentError(f"beta={value!r} is outside [{BETA_RANGE[0]:g}, {BETA_RANGE[1]:g}]: β-scaled terms "
                                   "overflow (large β) or the update vanishes (tiny β); try beta=0.1.")
    return v


def non_negative(value: object, name: str, zero_means: str = "0 turns it off") -> float:
    """A finite float >= 0."""
    v = _as_float(value, name, "a number >= 0")
    if not math.isfinite(v) or v < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r} ({zero_means}).")
    return v


MIN_TEMPERATURE = 1e-6  # below it logits / T overflow float32 (1e-300 gave NaN probabilities); greedy is 0


def temperature(value: object) -> float:
    v = non_negative(value, "temperature", zero_means="0 means greedy")
    if 0 < v < MIN_TEMPERATURE:
        raise InvalidArgumentError(f"temperature={value!r} is too small to sample with (logits / temperature overflow): "
                                   f"pass temperature=0 for greedy decoding, or a value >= {MIN_TEMPERATURE:g}.")
    return v


MAX_SEED = 2**32 - 1  # numpy's and transformers' set_seed limit; torch's generators take any seed below it + offsets


def seed(value: object, name: str = "seed") -> int:
    """A seed in [0, 2**32 - 1] (numpy integers too)."""
    return integer(value, name, minimum=0, maximum=MAX_SEED)


def top_p(value: object) -> float:
    v = _as_float(value, "top_p", "a number in (0, 1]")
    if not 0 < v <= 1:
        raise InvalidArgumentError(f"top_p must be in (0, 1], got {value!r} (1.0 turns nucleus sampling off).")
    return v


def top_k(value: object) -> int:
    """k of top-k (sampling, reward-guided decoding): an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"top_k must be an integer >= 1, got {value!r}; try top_k=8 (None turns "
                                   "top-k sampling off).")
    return value


def choice(value: object, enum_type: type[E], name: str) -> E:
    """Parse a string enum value, listing the valid ones on failure."""
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in enum_type)
        raise InvalidArgumentError(f"{name}={value!r} is not valid; choose one of {valid}.") from None
