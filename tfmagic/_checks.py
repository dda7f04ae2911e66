"""Argument checks shared by tfmagic's components: one message shape everywhere.

`check(ok, name, value, allowed)` raises `ValueError("name=value is not allowed: allowed")`.
"""

import math
import numbers


def check(condition: bool, name: str, value, allowed: str) -> None:
    """Raise a ValueError naming the argument, its value and what is allowed."""
    if not condition:
        raise ValueError(f"{name}={value!r} is not allowed: {allowed}")


def is_number(value) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value) -> bool:
    """An integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
