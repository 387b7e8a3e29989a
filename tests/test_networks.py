"""ResNet38 backbone, SSENet CAM network and AffinityNet (docs/method.md#resnet38, #ssenet-network, #affinitynet)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from network import heads, resnet38_aff, resnet38_cls_ser, resnet38d
from tests.helpers import fill_reference_weights, read_key_spec

DATA = Path(__file__).parent / "data"
SMALL = 1 / 8


@pytest.fixture(scope="module")
def cls_full():
    return resnet38_cls_ser.Net()


@pytest.fixture(scope="module")
def aff_full():
    return resnet38_aff.Net()


@pytest.mark.parametrize(
    "fixture, spec", [("cls_full", "resnet38_cls_ser_keys.txt"), ("aff_full", "resnet38_aff_keys.txt")]
)
def test_state_dict_names_and_shapes_match_spec(fixture, spec, request):
    model = request.getfixturevalue(fixture)
    state = model.state_dict()
    expected = read_key_spec(DATA / spec)
    assert list(state) == [name for name, _ in expected]
    for name, shape in expected:
        assert tuple(state[name].shape) == shape, name


def test_full_width_parameter_count(cls_full):
    # docs/method.md#resnet38: 105,152,832 parameters at full width.
    n = sum(p.numel() for p in cls_full.parameters())
    assert 104e6 < n < 106e6


def test_cls_forward_matches_reference_vector(cls_full):
    ref = np.load(DATA / "forward_cls_ser.npz")
    model = fill_reference_weights(resnet38_cls_ser.Net(), seed=38).eval()
    with torch.no_grad():
        x = torch.from_numpy(ref["input"])
        cam = model(x)
        conv6_mean = model.forward_as_dict(x)["conv6"].mean(dim=(2, 3))
    # Measured against the vector (torch 2.14, AMD EPYC): max abs error 8.3e-7 with 1 thread, 0 with 2.
    np.testing.assert_allclose(cam.numpy(), ref["cam"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv6_mean.numpy(), ref["conv6_mean"], rtol=1e-5, atol=1e-6)


def test_aff_forward_matches_reference_vector():
    ref = np.load(DATA / "forward_aff.npz")
    model = fill_reference_weights(resnet38_aff.Net(), seed=39).eval()
    with torch.no_grad():
        aff = model(torch.from_numpy(ref["input"]))
    assert aff.shape == (1, 34, 64)  # 96x128 input -> 12x16 grid -> 8 x 8 "from" pixels
    # Measured: max abs error 2.4e-7 with 1 thread, 0 with 2 (affinities are in (0, 1]).
    np.testing.assert_allclose(aff.numpy(), ref["aff"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [1.0, SMALL])
def test_backbone_output_stride_8(width):
    model = resnet38d.Net(width_mult=width).eval()
    with torch.no_grad():
        feats = model.forward_as_dict(torch.zeros(1, 3, 64, 48))
    c = resnet38d.scaled
    assert feats["conv4"].shape == (1, c(512, width), 8, 6)
    assert feats["conv5"].shape == (1, c(1024, width), 8, 6)
    assert feats["conv6"].shape == (1, c(4096, width), 8, 6)


def test_small_width_keeps_names():
    full = resnet38_cls_ser.Net().state_dict()
    small = resnet38_cls_ser.Net(width_mult=SMALL).state_dict()
    assert list(full) == list(small)
    assert small["b7.conv_branch2b2.weight"].shape == (512, 256, 1, 1)
    assert small["fc8.weight"].shape == (20, 512, 1, 1)


def test_cls_output_is_cam_at_input_size():
    model = resnet38_cls_ser.Net(width_mult=SMALL).eval()
    with torch.no_grad():
        cam = model(torch.randn(2, 3, 61, 83))
    assert cam.shape == (2, 20, 61, 83)


def test_aff_output_shape_and_range():
    model = resnet38_aff.Net(width_mult=SMALL).eval()
    with torch.no_grad():
        aff = model(torch.randn(1, 3, 96, 128))
    assert aff.shape == (1, 34, 64)
    assert bool(((aff > 0) & (aff <= 1)).all())


def test_pair_affinities_by_hand():
    # A 1-channel 5x9 map: exactly one "from" pixel (row 0, col 4) with value 0.
    # Its partner along offset (0, 1) is (0, 5) = 2.0 -> exp(-2); along (1, -4) it
    # is (1, 0) = 0.5 -> exp(-0.5); every other partner equals 0 -> exp(0) = 1.
    feat = torch.zeros(1, 1, 5, 9)
    feat[0, 0, 0, 5] = 2.0
    feat[0, 0, 1, 0] = 0.5
    aff = heads.pair_affinities(feat)
    expected = torch.ones(34)
    expected[0] = np.exp(-2.0)  # offset (0, 1)
    expected[4] = np.exp(-0.5)  # offset (1, -4), the first of dy = 1
    torch.testing.assert_close(aff[0, :, 0], expected)
    # Two channels: the mean over channels of |difference|.
    feat2 = torch.cat([feat, torch.zeros_like(feat)], dim=1)
    torch.testing.assert_close(heads.pair_affinities(feat2)[0, 0, 0], torch.tensor(np.exp(-1.0)).float())


def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("net_cls", [resnet38_cls_ser.Net, resnet38_aff.Net])
def test_train_and_eval_return_module_and_keep_bn_frozen(net_cls):
    model = net_cls(width_mult=SMALL)
    assert model.train() is model
    assert model.training
    assert all(not bn.training for bn in _bn_modules(model))
    assert any(m.training for m in model.modules() if isinstance(m, nn.Dropout2d))
    assert model.eval() is model
    assert not model.training


def test_frozen_parameters():
    model = resnet38_cls_ser.Net(width_mult=SMALL).train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name in trainable:
        assert not name.startswith(("conv1a.", "b2.", "b2_1.", "b2_2.")), name
        assert ".bn_" not in name and not name.startswith("bn7"), name
    assert "b3.conv_branch2a.weight" in trainable
    assert "fc8.weight" in trainable


def test_bn_statistics_do_not_change_in_training():
    model = resnet38_cls_ser.Net(width_mult=SMALL).train()
    before = model.bn7.running_mean.clone()
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    torch.testing.assert_close(model.bn7.running_mean, before)


@pytest.mark.parametrize("net_cls", [resnet38_cls_ser.Net, resnet38_aff.Net])
def test_parameter_groups_partition_trainable_conv_params(net_cls):
    model = net_cls(width_mult=SMALL)
    groups = model.parameter_groups()
    assert len(groups) == 4
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    conv_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters() if p.requires_grad
    }
    assert set(ids) == conv_params
    new = {id(p) for name in model.new_layer_names for p in getattr(model, name).parameters()}
    assert {id(p) for p in groups[2]} == new
    assert groups[1] == [] and groups[3] == []  # no conv has a bias in these networks


def test_from_scratch_init_and_bn_calibration_keep_conv6_alive():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 48, 48)
    default = resnet38_cls_ser.Net(width_mult=SMALL).eval()
    with torch.no_grad():
        std_default = default.forward_as_dict(x)["conv6"].std().item()
    model = resnet38_cls_ser.Net(width_mult=SMALL)
    model.init_backbone_from_scratch()
    fc8_before = model.fc8.weight.clone()
    model.calibrate_batchnorm(lambda: model(x) for _ in range(2))
    torch.testing.assert_close(model.fc8.weight, fc8_before)  # the head keeps its own init
    assert model.training and all(not bn.training for bn in _bn_modules(model))  # mode restored, BN frozen
    assert model.bn7.momentum == 0.1 and float(model.bn7.running_var.mean()) != 1.0
    with torch.no_grad():
        conv6 = model.forward_as_dict(x)["conv6"]
    # PyTorch's default init leaves conv6 ~0 (measured ~0.004); He init + data statistics give ~unit scale.
    assert std_default < 0.02
    assert 0.2 < conv6.std().item() < 3.0
