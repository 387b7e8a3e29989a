"""Pair geometry on the stride-8 feature grid and random-walk propagation.

AffinityNet (Ahn & Kwak, CVPR 2018, section 3) predicts an affinity for every pair
of feature-grid pixels closer than a radius. This module is the single home of
that pair geometry (SPEC section 5): the network, the affinity-label extraction
and the random walk (SPEC section 6) all use it.

With radius 5 the 34 offsets are (0, dx) for dx = 1..4, then (dy, dx) for
dy = 1..4 and dx = -4..4 with dy^2 + dx^2 < 25, in that order. "From" pixels are
rows 0..h-5 and columns 4..w-5 of the h x w grid, so every ``from + offset`` is
inside the grid.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DEFAULT_RADIUS = 5


@lru_cache(maxsize=None)
def pair_offsets(radius: int = DEFAULT_RADIUS) -> tuple[tuple[int, int], ...]:
    """The (dy, dx) offsets of the pairs, in the reference order."""
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return tuple(offsets)


def from_region(h: int, w: int, radius: int = DEFAULT_RADIUS) -> tuple[slice, slice]:
    """Row and column slices of the "from" pixels of an h x w grid."""
    rows, cols = h - radius + 1, w - 2 * (radius - 1)
    if rows < 1 or cols < 1:
        raise ValueError(
            f"feature grid {h}x{w} is too small for pair radius {radius}: "
            f"need at least {radius} rows and {2 * radius - 1} columns"
        )
    return slice(0, rows), slice(radius - 1, radius - 1 + cols)


@lru_cache(maxsize=64)
def pair_indices(h: int, w: int, radius: int = DEFAULT_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Flat row-major indices of the pairs of an h x w grid.

    Returns ``(idx_from, idx_to)``: ``idx_from`` is (n_from,) and ``idx_to`` is
    (n_offsets, n_from), with ``idx_to[k, i]`` the partner of ``idx_from[i]``
    along offset k. Both are read-only int64 arrays.
    """
    rows, cols = from_region(h, w, radius)
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    idx_from = grid[rows, cols].reshape(-1)
    idx_to = np.stack(
        [
            grid[rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx].reshape(-1)
            for dy, dx in pair_offsets(radius)
        ]
    )
    idx_from.flags.writeable = False
    idx_to.flags.writeable = False
    return idx_from, idx_to


def pair_slices(h: int, w: int, radius: int = DEFAULT_RADIUS) -> list[tuple[slice, slice]]:
    """For each offset, the (rows, cols) slices of the partner pixels.

    ``grid[pair_slices(h, w)[k]]`` equals ``grid.flat[idx_to[k]]`` reshaped to the
    from-region: slicing is cheaper than gathering when whole maps are compared.
    """
    rows, cols = from_region(h, w, radius)
    return [
        (slice(rows.start + dy, rows.stop + dy), slice(cols.start + dx, cols.stop + dx))
        for dy, dx in pair_offsets(radius)
    ]
