"""Cutting a batch of logits into blocks of whole positions.

A position (the C logits one label scores) is never cut: its classes go to
one kernel call.  softmax_loss streams logits it must convert block by block,
and diagnose reads a memory-mapped batch block by block, through the same
blocks.
"""
import math
from typing import Any, Iterator, NamedTuple, Tuple

import numpy as np


class Block(NamedTuple):
    """index selects the block of the logits (class axis whole), positions
    its labels (the Ellipsis keeps a 0-d block an array): tuples of slices,
    or ... for everything; first is the flat (C order) index of its first
    position, count how many positions (first, first + 1, ..., contiguous)."""
    index: Any
    positions: Any
    first: int
    count: int          # type: ignore[assignment]  # hides tuple.count


def position_blocks(shape: Tuple[int, ...], axis: int,
                    max_positions: int) -> Iterator[Block]:
    """The blocks of whole positions of logits of `shape` (class axis
    `axis`), in the positions' C order, each at most max_positions (>= 1)
    positions; none when there are no positions.

    A block is a run along one non-class axis k, every later axis whole,
    every earlier one fixed (as a length-1 slice, so that the class axis
    stays where it was), k the first axis whose indices fit in a block; so
    its positions are contiguous in C order.  Blocks take as many indices as
    fit, so every block but a run's last holds more than half the positions
    allowed.  1-D logits are one position: one block."""
    whole = (slice(None),) * len(shape)
    position_shape = shape[:axis] + shape[axis + 1:]
    positions = math.prod(position_shape)
    if positions == 0:
        return
    if positions <= max_positions:
        yield Block(whole, whole[:-1] + (...,), 0, positions)
        return
    fixed, unit = [], positions
    for k in (a for a in range(len(shape)) if a != axis):
        unit //= shape[k]              # positions per index along axis k
        if unit <= max_positions:
            break
        fixed.append(k)
    step = max_positions // unit
    strides = [math.prod(shape[b] for b in range(a + 1, len(shape)) if b != axis)
               for a in range(len(shape))]
    for prefix in np.ndindex(*(shape[a] for a in fixed)):
        index = list(whole)
        first = 0
        for a, i in zip(fixed, prefix):
            index[a] = slice(i, i + 1)
            first += i * strides[a]
        for start in range(0, shape[k], step):
            stop = min(start + step, shape[k])
            index[k] = slice(start, stop)
            yield Block(tuple(index), tuple(index[:axis] + index[axis + 1:]) + (...,),
                        first + start * strides[k], (stop - start) * unit)
