"""The types the public API's annotations name, defined once.

Aliases only (nothing here runs at call time).  They are written with
typing's Union, not `X | Y`, because typing.get_type_hints evaluates them,
and Python 3.9 has no `|` between types.
"""
from typing import Any, Literal, Union

import numpy as np
from numpy.typing import NDArray

__all__ = ["FloatArray", "Integer", "Loss", "Reduced"]

# Results in the logits' dtype: float16, float32 or float64.
FloatArray = NDArray[np.floating[Any]]
# What the argument checks take as an int (numbers.Integral, bool excluded).
Integer = Union[int, np.integer[Any]]
# A loss: reduced (a float) or per position (reduction="none").
Loss = Union[float, FloatArray]
# The reductions that give one float (all but "none").
Reduced = Literal["mean", "sum", "valid", "full", "batch_size"]
