"""tool/randomwalk.py: pair geometry (docs/method.md#affinitynet) and random walk (docs/method.md#random-walk)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tool.randomwalk import pair_indices, pair_offsets, propagate, transition_matrix

DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------- pair geometry


@pytest.mark.parametrize("h, w", [(7, 10), (12, 16), (9, 13), (5, 9)])
def test_pair_indices_match_fixture(h, w):
    idx_from, idx_to = pair_indices(h, w)
    with np.load(DATA / "pairs_radius5.npz", allow_pickle=False) as fixture:
        np.testing.assert_array_equal(idx_from, fixture[f"from_{h}x{w}"])
        np.testing.assert_array_equal(idx_to, fixture[f"to_{h}x{w}"])


def test_pair_indices_by_hand_7x10():
    # 7x10 grid, flat index = 10 * row + col. From pixels: rows 0..2 (h - 5 = 2), columns 4..5 (w - 5 = 5).
    idx_from, idx_to = pair_indices(7, 10)
    assert idx_from.tolist() == [4, 5, 14, 15, 24, 25]
    offsets = pair_offsets()
    assert len(offsets) == 34  # 4 + 9 (dy=1) + 9 (dy=2) + 7 (dy=3, |dx|<=3) + 5 (dy=4, |dx|<=2)
    # Offset 0 is (0, 1): one column right, flat +1.
    assert offsets[0] == (0, 1)
    assert idx_to[0].tolist() == [5, 6, 15, 16, 25, 26]
    # Offset 3 is (0, 4): flat +4.
    assert offsets[3] == (0, 4)
    assert idx_to[3].tolist() == [8, 9, 18, 19, 28, 29]
    # Offset 4 is (1, -4) (1 + 16 < 25): flat +10 - 4 = +6.
    assert offsets[4] == (1, -4)
    assert idx_to[4].tolist() == [10, 11, 20, 21, 30, 31]
    # Offset 13 is (2, -4) (4 + 16 < 25): flat +20 - 4 = +16.
    assert offsets[13] == (2, -4)
    assert idx_to[13].tolist() == [20, 21, 30, 31, 40, 41]
    # Offset 22 is (3, -3) ((3, -4) is out: 9 + 16 = 25): flat +30 - 3 = +27.
    assert offsets[22] == (3, -3)
    assert idx_to[22].tolist() == [31, 32, 41, 42, 51, 52]
    # The last offset is (4, 2) ((4, 3) is out: 16 + 9 = 25): flat +42, reaching the bottom row 6.
    assert offsets[33] == (4, 2)
    assert idx_to[33].tolist() == [46, 47, 56, 57, 66, 67]


# ---------------------------------------------------------------------------- reference walk


def reference_transition(aff: np.ndarray, h: int, w: int, beta: float) -> np.ndarray:
    """T of docs/method.md#random-walk, written out pair by pair in float64."""
    idx_from, idx_to = pair_indices(h, w)
    affinity = np.eye(h * w)
    for k in range(idx_to.shape[0]):
        for i in range(idx_from.size):
            affinity[idx_from[i], idx_to[k, i]] = aff[k, i]
            affinity[idx_to[k, i], idx_from[i]] = aff[k, i]
    affinity = affinity**beta
    return affinity / affinity.sum(axis=0, keepdims=True)


def reference_walk(aff: np.ndarray, cams: np.ndarray, beta: float, logt: int) -> np.ndarray:
    """v T^(2^logt) in float64, (C, h, w)."""
    c, h, w = cams.shape
    transition = reference_transition(aff, h, w, beta)
    return (cams.reshape(c, h * w) @ np.linalg.matrix_power(transition, 2**logt)).reshape(c, h, w)


def random_inputs(h: int, w: int, seed: int, channels: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Affinities in (0, 1] and scores in [0, 1), both float32-representable float64 arrays."""
    rng = np.random.default_rng(seed)
    n_from = pair_indices(h, w)[0].size
    aff = (1.0 - rng.random((34, n_from))).astype(np.float32).astype(np.float64)
    cams = rng.random((channels, h, w)).astype(np.float32).astype(np.float64)
    return aff, cams


def walk(aff: np.ndarray, cams: np.ndarray, **kwargs) -> np.ndarray:
    out = propagate(torch.from_numpy(aff).float(), torch.from_numpy(cams).float(), **kwargs)
    assert out.dtype == torch.float32 and tuple(out.shape) == cams.shape
    return out.double().numpy()


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def argmax_agreement(ours: np.ndarray, ref: np.ndarray) -> float:
    return float((ours.argmax(0) == ref.argmax(0)).mean())


# ---------------------------------------------------------------------------- transition matrix


@pytest.mark.parametrize("h, w", [(5, 9), (7, 10), (11, 9)])
def test_transition_matrix_matches_reference_and_columns_sum_to_one(h, w):
    aff, _ = random_inputs(h, w, seed=1)
    transition = transition_matrix(torch.from_numpy(aff).float(), h, w, beta=8).double().numpy()
    np.testing.assert_allclose(transition.sum(axis=0), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(transition, reference_transition(aff, h, w, 8), rtol=1e-6, atol=1e-12)


def test_transition_matrix_holds_each_pair_twice_and_a_unit_diagonal():
    # With beta 1, T = A D^-1 and A's diagonal is 1, so A = T / diag(T) column by column.
    h, w = 6, 11
    idx_from, idx_to = pair_indices(h, w)
    aff = torch.rand(34, len(idx_from)) * 0.9 + 0.05
    transition = transition_matrix(aff, h, w, beta=1)
    dense = transition / torch.diagonal(transition)[None, :]
    torch.testing.assert_close(dense, dense.T)
    torch.testing.assert_close(torch.diagonal(dense), torch.ones(h * w))
    torch.testing.assert_close(dense[idx_from[3], idx_to[7, 3]], aff[7, 3])
    assert int((dense != 0).sum()) == 2 * aff.numel() + h * w


def test_transition_matrix_by_hand_5x9():
    # 5x9 has a single from pixel, flat 4 (row 0, column 4); with every affinity 0.5 and beta 1, A's column 4
    # holds 1 + 34 * 0.5 = 18 and a partner's column 1 + 0.5 = 1.5.
    aff = torch.full((34, 1), 0.5)
    transition = transition_matrix(aff, 5, 9, beta=1)
    partner = 5  # offset (0, 1)
    assert transition[4, 4].item() == pytest.approx(1 / 18)
    assert transition[partner, 4].item() == pytest.approx(0.5 / 18)
    assert transition[4, partner].item() == pytest.approx(0.5 / 1.5)
    assert transition[partner, partner].item() == pytest.approx(1 / 1.5)
    # Row 0, column 0 pairs with nothing: its column is the unit vector.
    assert transition[:, 0].tolist() == [1.0] + [0.0] * 44


# ---------------------------------------------------------------------------- propagation


def test_one_step_by_hand_5x9():
    # logt = 0 is one multiplication by T. One-hot score on the single from pixel (flat 4), affinities
    # 2^(-1/8) so that a^8 = 0.5: the centre keeps 1 / (1 + 34 * 0.5) = 1/18, each of the 34 partners
    # gets 0.5 / (1 + 0.5) = 1/3 (its column has only itself and the centre), the 10 unpaired pixels 0.
    aff = np.full((34, 1), 2.0 ** (-1 / 8))
    cams = np.zeros((1, 5, 9))
    cams[0, 0, 4] = 1.0
    expected = np.zeros(45)
    expected[pair_indices(5, 9)[1][:, 0]] = 1 / 3
    expected[4] = 1 / 18
    for mode in ("sparse", "dense"):
        out = walk(aff, cams, beta=8, logt=0, mode=mode)
        np.testing.assert_allclose(out.reshape(45), expected, rtol=0, atol=1e-6)  # float32 rounding of scores <= 1
    assert np.count_nonzero(expected) == 35


@pytest.mark.parametrize("h, w", [(5, 9), (9, 13), (12, 16), (20, 31), (26, 10)])
def test_sparse_walk_matches_dense_float64(h, w):
    aff, cams = random_inputs(h, w, seed=h * 100 + w)
    ref = reference_walk(aff, cams, beta=8, logt=8)
    ours = walk(aff, cams, beta=8, logt=8)
    assert relative_error(ours, ref) <= 1e-4
    assert argmax_agreement(ours, ref) >= 0.9999


@pytest.mark.parametrize("logt", [0, 1, 2, 5])
@pytest.mark.parametrize("beta", [1, 8])
def test_small_logt(logt, beta):
    aff, cams = random_inputs(10, 14, seed=logt + 10 * beta)
    ref = reference_walk(aff, cams, beta=beta, logt=logt)
    ours = walk(aff, cams, beta=beta, logt=logt)
    assert relative_error(ours, ref) <= 1e-5
    assert argmax_agreement(ours, ref) == 1.0


def test_structured_scene():
    # Two regions (left/right halves) with strong affinities inside and weak ones across, as AffinityNet
    # predicts; class 1 scores on the left only, class 2 on the right only, a flat 0.2 background.
    h, w = 16, 22
    idx_from, idx_to = pair_indices(h, w)
    side = np.arange(h * w) % w >= w // 2
    aff = np.where(side[idx_from][None] == side[idx_to], 0.95, 0.3).astype(np.float32).astype(np.float64)
    rng = np.random.default_rng(3)
    cams = np.zeros((3, h, w))
    cams[0] = 0.2
    cams[1][~side.reshape(h, w)] = rng.random((~side).sum()) * 0.6
    cams[2][side.reshape(h, w)] = rng.random(side.sum()) * 0.6
    ref = reference_walk(aff, cams.astype(np.float32).astype(np.float64), beta=8, logt=8)
    ours = walk(aff, cams, beta=8, logt=8)
    assert relative_error(ours, ref) <= 1e-4
    assert argmax_agreement(ours, ref) == 1.0


def test_dense_mode_equals_sparse_mode():
    aff, cams = random_inputs(14, 19, seed=7)
    sparse = walk(aff, cams, logt=8, mode="sparse")
    dense = walk(aff, cams, logt=8, mode="dense")
    assert relative_error(sparse, dense) <= 1e-4
    assert argmax_agreement(sparse, dense) == 1.0


def test_constants_and_weighted_mean_are_kept():
    # 1 T = 1 (columns sum to 1) and T d = d for the column sums d, so a constant map stays constant and
    # the d-weighted mean of every channel is unchanged by the walk.
    h, w = 12, 17
    aff, cams = random_inputs(h, w, seed=11, channels=3)
    cams[0] = 0.2
    out = walk(aff, cams, beta=8, logt=8)
    np.testing.assert_allclose(out[0], 0.2, rtol=1e-6)
    degree = reference_transition(aff, h, w, 8).diagonal() ** -1  # T[j, j] = 1 / d[j]
    mean_in = cams.reshape(3, -1) @ degree
    mean_out = out.reshape(3, -1) @ degree
    np.testing.assert_allclose(mean_out, mean_in, rtol=1e-5)


def test_flat_cams_with_grid_hw_and_dtype():
    aff, cams = random_inputs(9, 13, seed=5, channels=4)
    out_grid = propagate(torch.from_numpy(aff), torch.from_numpy(cams), logt=3)
    out_flat = propagate(torch.from_numpy(aff), torch.from_numpy(cams).reshape(4, -1), grid_hw=(9, 13), logt=3)
    assert out_flat.dtype == torch.float32 and tuple(out_flat.shape) == (4, 9, 13)
    torch.testing.assert_close(out_flat, out_grid, rtol=0, atol=0)


def test_errors_name_the_problem():
    aff, cams = random_inputs(9, 13, seed=0)
    aff_t, cams_t = torch.from_numpy(aff), torch.from_numpy(cams)
    with pytest.raises(ValueError, match=r"aff has shape \(34, 24\), expected \(34, 25\)"):
        propagate(aff_t[:, :24], cams_t)
    with pytest.raises(ValueError, match="logt must be a non-negative integer"):
        propagate(aff_t, cams_t, logt=-1)
    with pytest.raises(ValueError, match="mode must be"):
        propagate(aff_t, cams_t, mode="fast")
    with pytest.raises(ValueError, match="together with grid_hw"):
        propagate(aff_t, cams_t.reshape(21, -1))
    with pytest.raises(ValueError, match="grid_hw"):
        propagate(aff_t, cams_t, grid_hw=(13, 9))
    with pytest.raises(ValueError, match="negative"):
        propagate(-aff_t, cams_t)
    with pytest.raises(ValueError, match="too small"):
        propagate(torch.ones(34, 1), torch.ones(1, 4, 9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    aff, cams = random_inputs(20, 31, seed=2)
    cpu = walk(aff, cams)
    for mode in ("sparse", "dense"):
        out = propagate(torch.from_numpy(aff).float().to("cuda"), torch.from_numpy(cams).float().to("cuda"), mode=mode)
        assert out.device.type == "cuda"
        assert relative_error(out.double().cpu().numpy(), cpu) <= 1e-4
