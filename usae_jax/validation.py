"""The one validation idiom of the package's configs: ``require(condition, field, value, why)``.

Every config dataclass checks its fields in ``__post_init__`` with :func:`require`, so a bad
value always fails the same way: a ``ValueError`` whose message starts with the field's name and
the value it was given, then says what the field needs::

    require(self.top_k > 0, "top_k", self.top_k, "must be > 0")
    # ValueError: top_k=0: must be > 0

A check that ties several fields together names them all (``"num_steps/num_epochs"``) and passes
their values as a tuple. This module imports nothing from the package, so every layer (the
backbones included) may use it.
"""

from __future__ import annotations


def require(condition: bool, field: str, value: object, why: str) -> None:
    """Raise ``ValueError("{field}={value!r}: {why}")`` unless ``condition`` holds.

    Args:
      condition: whether the value is acceptable.
      field: the name of the field (or ``"a/b"`` for a check across fields a and b).
      value: the value given (a tuple for a check across fields), shown with ``repr``.
      why: what the field needs, e.g. ``"must be > 0"``.

    Raises:
      ValueError: when ``condition`` is false; the message names ``field`` and ``value``.
    """
    if not condition:
        raise ValueError(f"{field}={value!r}: {why}")
