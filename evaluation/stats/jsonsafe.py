"""Numbers as valid JSON (pure numpy): what the stored statistics and export files hold.

numpy scalars and arrays become Python numbers and lists, NaN and infinities ``None``, so
the result can go into a ``JSONField`` or ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def clean_json(obj: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to None (valid JSON for files and JSONField)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def finite_or_none(value) -> float | None:
    """A finite float, or None."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None
