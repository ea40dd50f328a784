"""Continuous nearest-neighbour selection: two implementations behind one interface.

``reference``: index tensor + gather, for clarity and tests.
``static`` (default): static-shape, memory-bounded, exportable; see :mod:`.static`.
Both have the signature ``fn(x, embed, log_temp, distance_bn, *, k, patch_size, stride,
window, temp_bias) -> B x (k*C) x H x W``.
"""

from __future__ import annotations

from typing import Callable

from .reference import knn_aggregate_reference
from .static import knn_aggregate_static

KNN_IMPLEMENTATIONS: dict[str, Callable] = {
    "static": knn_aggregate_static,
    "reference": knn_aggregate_reference,
}

__all__ = ["KNN_IMPLEMENTATIONS", "knn_aggregate_reference", "knn_aggregate_static", "get_knn"]


def get_knn(name: str) -> Callable:
    """The KNN implementation registered under ``name`` (``static`` or ``reference``)."""
    try:
        return KNN_IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown KNN implementation {name!r}; choose one of {sorted(KNN_IMPLEMENTATIONS)}") from None
