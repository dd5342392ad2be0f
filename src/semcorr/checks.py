"""Range checks for the config dataclasses' ``__post_init__`` (a leaf: imports nothing of semcorr).

Each check raises ``ValueError`` with a message that starts with the field's name and states the
valid range, e.g. ``n_steps must be an integer >= 0, got -3``;
:func:`semcorr.config.validate` prefixes the section (``matcher.n_steps must be ...``) and raises
it as one line.

Example::

    @dataclass
    class PlotsConfig:
        n_pairs: int = 4

        def __post_init__(self) -> None:
            number(self, "n_pairs", ge=0, integer=True)
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(obj: Any, name: str, *, ge: Optional[float] = None, gt: Optional[float] = None,
           le: Optional[float] = None, integer: bool = False, none_ok: bool = False) -> None:
    """``getattr(obj, name)`` must be a finite number (an integer when ``integer``) within the
    bounds (``ge``: >=, ``gt``: >, ``le``: <=); None passes when ``none_ok``."""
    value = getattr(obj, name)
    if value is None and none_ok:
        return
    bounds = [f"{op} {bound:g}" for op, bound in ((">=", ge), (">", gt), ("<=", le)) if bound is not None]
    kind = "an integer" if integer else "a number"
    want = (kind + (" " + " and ".join(bounds) if bounds else "")
            + (" (or null)" if none_ok else ""))
    ok = _is_number(value) and math.isfinite(value) and (not integer or float(value).is_integer())
    ok = ok and (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def one_of(obj: Any, name: str, choices: Sequence[Any], none_ok: bool = False) -> None:
    """``getattr(obj, name)`` must be one of ``choices`` (or None when ``none_ok``)."""
    value = getattr(obj, name)
    if (value is None and none_ok) or value in choices:
        return
    extra = " (or null)" if none_ok else ""
    raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}{extra}, got {value!r}")


def numbers(obj: Any, name: str, *, gt: Optional[float] = None, le: Optional[float] = None,
            non_empty: bool = True) -> None:
    """``getattr(obj, name)`` must be a (non-empty) list of finite numbers within the bounds."""
    values = list(getattr(obj, name) or [])
    bounds = " and ".join(f"{op} {b:g}" for op, b in ((">", gt), ("<=", le)) if b is not None)
    want = f"a {'non-empty ' if non_empty else ''}list of numbers{' ' + bounds if bounds else ''}"
    bad = [v for v in values if not (_is_number(v) and math.isfinite(v)
                                     and (gt is None or v > gt) and (le is None or v <= le))]
    if bad or (non_empty and not values):
        raise ValueError(f"{name} must be {want}, got {values!r}")
