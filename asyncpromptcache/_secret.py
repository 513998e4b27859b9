"""``Secret``: a string that stays out of reprs, ``str()``, logs and error reporters. Pure.

Error reporters (Sentry and the like) record the local variables of every frame of a
traceback by their ``repr``. The secret key is therefore wrapped in a ``Secret`` as it enters
(the first statement of the function that receives it) and revealed only as a temporary in
the expression that needs it, never kept in a plain local or attribute.
"""

from __future__ import annotations

import hmac

__all__ = ["Secret"]


class Secret:
    """Holds a secret string; ``repr``, ``str`` and ``format`` show ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickled (a multiprocessing argument, a cache dump), it would be written out whole.
        raise TypeError("a Secret cannot be pickled")
