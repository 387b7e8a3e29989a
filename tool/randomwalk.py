"""Pair geometry on the network's feature grid (stride 8 for every network here) and random-walk propagation.

AffinityNet (Ahn & Kwak, CVPR 2018, section 3) predicts an affinity for every pair
of feature-grid pixels closer than a radius. This module is the single home of
that pair geometry (docs/method.md#affinitynet): the network, the affinity-label extraction
and the random walk (docs/method.md#random-walk) all use it.

With radius 5 the 34 offsets are (0, dx) for dx = 1..4, then (dy, dx) for
dy = 1..4 and dx = -4..4 with dy^2 + dx^2 < 25, in that order. "From" pixels are
rows 0..h-5 and columns 4..w-5 of the h x w grid, so every ``from + offset`` is
inside the grid.

Random walk (docs/method.md#random-walk, paper eq. 11-12): ``propagate`` returns
``v T^(2^logt)`` for scores ``v`` (C, N) and the column-normalised transition
matrix ``T`` built from the pair affinities. The reference squares a dense
N x N ``T`` logt times (O(N^2) memory, O(N^3 logt) time); the default sparse
mode applies ``T`` 2^logt times as a sparse matrix with at most 69 non-zeros
per column (O(N) memory, O(N 2^logt) time): the same numbers up to float32
rounding.
"""

from __future__ import annotations

import numbers
import warnings
from functools import cache, lru_cache

import numpy as np
import torch

DEFAULT_RADIUS = 5


@cache
def pair_offsets(radius: int = DEFAULT_RADIUS) -> tuple[tuple[int, int], ...]:
    """The (dy, dx) offsets of the pairs, in the reference order."""
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return tuple(offsets)


def min_grid(radius: int = DEFAULT_RADIUS) -> tuple[int, int]:
    """The smallest feature grid (rows, columns) that holds a pair of every offset: ``radius`` x ``2 radius - 1``."""
    return radius, 2 * radius - 1


def from_region(h: int, w: int, radius: int = DEFAULT_RADIUS) -> tuple[slice, slice]:
    """Row and column slices of the "from" pixels of an h x w grid."""
    rows, cols = h - radius + 1, w - 2 * (radius - 1)
    if rows < 1 or cols < 1:
        raise ValueError(
            f"feature grid {h}x{w} is too small for pair radius {radius}: "
            "need at least {} rows and {} columns".format(*min_grid(radius))
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


def _pair_entries(
    aff: torch.Tensor, h: int, w: int, beta: float, radius: int = DEFAULT_RADIUS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of T (docs/method.md#random-walk) as float64 on ``aff``'s device.

    Returns ``(src, dst, weight, degree)``: ``T[src[e], dst[e]] = weight[e]``
    for every pair in both directions (2 * 34 * n_from entries, no duplicates,
    no diagonal) and ``T[j, j] = 1 / degree[j]``, where ``degree[j] = sum_i
    A[i, j] >= 1`` is the column sum of ``A`` including its diagonal 1.
    """
    idx_from, idx_to = pair_indices(h, w, radius)
    if tuple(aff.shape) != idx_to.shape:
        raise ValueError(
            f"aff has shape {tuple(aff.shape)}, expected {idx_to.shape} "
            f"(pair offsets, from pixels) for the {h}x{w} feature grid and pair radius {radius}"
        )
    device = aff.device
    pix_to = torch.tensor(idx_to, device=device).reshape(-1)
    pix_from = torch.tensor(idx_from, device=device).expand(idx_to.shape).reshape(-1)
    # float64 so that every float32 weight derived below is one correctly rounded number.
    affinity = aff.to(torch.float64).pow(beta).reshape(-1)
    src = torch.cat([pix_from, pix_to])
    dst = torch.cat([pix_to, pix_from])
    affinity = torch.cat([affinity, affinity])
    degree = torch.ones(h * w, dtype=torch.float64, device=device).index_add_(0, dst, affinity)
    return src, dst, affinity / degree[dst], degree


def transition_matrix(
    aff: torch.Tensor, h: int, w: int, beta: float = 8.0, radius: int = DEFAULT_RADIUS
) -> torch.Tensor:
    """Dense transition matrix T (N, N), N = h * w, float32 on ``aff``'s device.

    ``aff`` is one image's (34, n_from) pair affinities in ``pair_indices(h, w)``
    order. ``A`` holds them symmetrically with 1 on the diagonal, raised
    elementwise to ``beta``; ``T = A D^-1`` divides each column by its sum, so
    every column of T sums to 1. This is the reference (dense) construction:
    N^2 memory, meant for small grids, tests and benchmarks.
    """
    src, dst, weight, degree = _pair_entries(aff, h, w, beta, radius)
    transition = torch.zeros(h * w, h * w, dtype=torch.float32, device=aff.device)
    transition[src, dst] = weight.float()
    transition.diagonal().copy_(degree.reciprocal())
    return transition


def propagate(
    aff: torch.Tensor,
    cams: torch.Tensor,
    grid_hw: tuple[int, int] | None = None,
    beta: float = 8.0,
    logt: int = 8,
    mode: str = "sparse",
    radius: int = DEFAULT_RADIUS,
) -> torch.Tensor:
    """Random-walk propagation ``v T^(2^logt)`` (docs/method.md#random-walk).

    Args:
        aff: (34, n_from) pair affinities of one image in ``pair_indices(h, w)``
            order: ``aff[k, i]`` links ``idx_from[i]`` and ``idx_to[k, i]``.
            Non-negative (the network gives values in (0, 1]).
        cams: (C, h, w) scores on the stride-8 grid, or (C, h * w) with ``grid_hw``.
        grid_hw: (h, w) of the grid; needed only when ``cams`` is flattened.
        beta: power applied elementwise to the affinity matrix (paper: 8).
        logt: the walk takes 2^logt steps (paper: 8, i.e. 256 steps).
        mode: "sparse" (default) applies T 2^logt times as a sparse matrix,
            O(N) memory; "dense" is the reference algorithm (square a dense T
            logt times, then one product), kept to verify and benchmark.
        radius: the pair radius ``aff`` was computed with (the network's ``radius``).

    Returns:
        (C, h, w) float32 tensor on the device of the inputs, with
        ``out[c, j] = sum_i v[c, i] (T^(2^logt))[i, j]``.
    """
    if mode not in ("sparse", "dense"):
        raise ValueError(f"mode must be 'sparse' or 'dense', got {mode!r}")
    if isinstance(logt, bool) or not isinstance(logt, numbers.Integral) or logt < 0:
        raise ValueError(f"logt must be a non-negative integer (the walk takes 2^logt steps), got {logt!r}")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    if cams.dim() == 3:
        if grid_hw is not None and tuple(grid_hw) != tuple(cams.shape[1:]):
            raise ValueError(f"grid_hw {tuple(grid_hw)} does not match cams of shape {tuple(cams.shape)}")
        h, w = cams.shape[1:]
    elif cams.dim() == 2 and grid_hw is not None:
        h, w = grid_hw
        if cams.shape[1] != h * w:
            raise ValueError(f"cams has shape {tuple(cams.shape)}, expected (C, {h * w}) for grid_hw {tuple(grid_hw)}")
    else:
        raise ValueError(f"cams must be (C, h, w), or (C, h * w) together with grid_hw; got shape {tuple(cams.shape)}")
    if aff.device != cams.device:
        raise ValueError(f"aff is on {aff.device} but cams is on {cams.device}; put both on one device")
    if bool((aff < 0).any()):
        raise ValueError("aff has negative entries; pair affinities must be >= 0")
    cams_flat = cams.reshape(cams.shape[0], h * w).float()  # (C, N)

    if mode == "dense":
        transition = transition_matrix(aff, h, w, beta, radius)
        for _ in range(logt):
            transition = transition @ transition
        out = cams_flat @ transition
    else:
        out = _walk_sparse(aff, cams_flat, h, w, beta, 2 ** int(logt), radius)
    return out.reshape(-1, h, w)


def _walk_sparse(
    aff: torch.Tensor, cams_flat: torch.Tensor, h: int, w: int, beta: float, steps: int, radius: int = DEFAULT_RADIUS
) -> torch.Tensor:
    """``cams_flat T^steps`` by ``steps`` sparse products; (C, N) in, (C, N) float32 out.

    In float32, after 256 steps the error stayed below 1e-5 of the largest
    score with random affinities and near 2e-7 with realistic ones (the dense
    float32 reference: up to 2e-5 and 5e-6), thanks to two exact rewrites that
    keep large, slowly changing numbers out of the rounding:
    - Each step adds the change ``(T^T - I) x``, i.e. ``sum_i T[i, j] (x_i -
      x_j)``, to x instead of forming ``T^T x``: a weakly linked pixel has
      ``T[j, j]`` close to 1, and rounding that entry once and applying it 256
      times would bias the pixel by up to 256 half-ulps.
    - T keeps the ``degree``-weighted mean of each channel (``T degree =
      degree``) and maps constants to themselves, so the mean is taken out
      before the walk and added back after; only the decaying part walks.
    """
    n = h * w
    src, dst, weight, degree = _pair_entries(aff, h, w, beta, radius)
    weight = weight.float()
    # The diagonal of T^T - I is minus what the float32 weights of the column sum
    # to, so that a constant map gets a change of exactly 0.
    leave = torch.zeros(n, dtype=torch.float64, device=aff.device).index_add_(0, dst, weight.double()).float()
    pixels = torch.arange(n, device=aff.device)
    # change[j, i] = T[i, j] - [i == j]: row j lists what pixel j collects in one
    # step, so (v T)^T = v^T + change @ v^T with the channels as the dense side.
    rows, cols = torch.cat([dst, pixels]), torch.cat([src, pixels])
    values = torch.cat([weight, -leave])
    order = torch.argsort(rows * n + cols)
    # int32 indices: less memory traffic per product than int64 (about 20% faster on CPU).
    crow = torch.zeros(n + 1, dtype=torch.int32, device=aff.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        change = torch.sparse_csr_tensor(crow, cols[order].int(), values[order], (n, n), check_invariants=False)

    cams64 = cams_flat.double()
    mean = (cams64 @ degree / degree.sum())[:, None]  # (C, 1)
    x = (cams64 - mean).t().float().contiguous()  # (N, C)
    for _ in range(steps):
        # One fused op per step: the product is rounded before it is added to x.
        x = torch.addmm(x, change, x)
    return (x.t().double() + mean).float()
