"""The published repository's commands and Python names work here with their published meaning.

Every command of the published README is parsed by our parsers (paths substituted for its ``$your_...``
placeholders), and the published names (``get_parameter_groups``, ``Net.normalize``,
``tool.imutils.crf_inference``, ``PolyOptimizer(..., momentum=)``, ``infer_aff.py --crf True``) are
checked against what the published code did with them.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evaluation
import infer_aff
import infer_cls_ser
import train_aff
import train_cls_ser
from tool import torchutils
from voc12 import make_cls_labels

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
PARSERS = {
    "train_cls_ser.py": train_cls_ser.get_args_parser,
    "infer_cls_ser.py": infer_cls_ser.get_args_parser,
    "evaluation.py": evaluation.get_args_parser,
    "train_aff.py": train_aff.get_args_parser,
    "infer_aff.py": infer_aff.get_args_parser,
    "make_cls_labels.py": make_cls_labels.get_args_parser,
}
PLACEHOLDERS = {
    "$your_voc12_root": "/data/VOC2012",
    "$your_weights_file": "/w/ilsvrc-cls_rna-a1_cls1000_ep-0001.params",
    "$your_session_name": "resnet38_cls_ser",
    "$your_SSENet_checkpoint": "resnet38_cls_ser.pth",
    "$your_cam_dir": "out_cam",
    "$your_crf_dir_4.0": "out_crf_4.0",
    "$your_crf_dir_24.0": "out_crf_24.0",
    "$your_crf_dir": "out_crf",
    "$your_pred_dir": "out_cam_pred",
    "$your_rw_dir": "out_rw",
}
# The commands of the published README, verbatim; "[a | b]" alternatives are expanded below.
PUBLISHED_COMMANDS = [
    "python make_cls_labels.py --voc12_root $your_voc12_root",
    "python train_cls_ser.py --voc12_root $your_voc12_root --weights $your_weights_file "
    "--session_name $your_session_name",
    "python infer_cls_ser.py --weights $your_SSENet_checkpoint "
    "--infer_list [voc12/val.txt | voc12/train.txt | voc12/train_aug.txt] --out_cam $your_cam_dir "
    "--out_crf $your_crf_dir --out_cam_pred $your_pred_dir",
    "python evaluation.py --list $your_voc12_root/ImageSets/Segmentation/[val.txt | train.txt] "
    "--predict_dir $your_pred_dir --gt_dir $your_voc12_root/SegmentationClass",
    "python train_aff.py --weights $your_weights_file --voc12_root $your_voc12_root --la_crf_dir $your_crf_dir_4.0 "
    "--ha_crf_dir $your_crf_dir_24.0 --session_name $your_session_name",
    "python infer_aff.py --weights $your_weights_file --infer_list [voc12/val.txt | voc12/train.txt] "
    "--cam_dir $your_cam_dir --voc12_root $your_voc12_root --out_rw $your_rw_dir",
    "python evaluation.py --list $your_voc12_root/ImageSets/Segmentation/[val.txt | train.txt] "
    "--predict_dir $your_rw_dir --gt_dir $your_voc12_root/SegmentationClass",
]


def expand(command: str) -> list[str]:
    """Every variant of a command with ``[a | b]`` alternatives, placeholders substituted (longest first)."""
    if "[" in command:
        head, rest = command.split("[", 1)
        options, tail = rest.split("]", 1)
        return [v for option in options.split("|") for v in expand(head + option.strip() + tail)]
    for placeholder in sorted(PLACEHOLDERS, key=len, reverse=True):
        command = command.replace(placeholder, PLACEHOLDERS[placeholder])
    return [command]


VARIANTS = [v for c in PUBLISHED_COMMANDS for v in expand(c)]
# Published flags whose value lands on another attribute of the same meaning: --voc12_root is the VOC spelling of
# --dataset_root (docs/datasets.md).
DEST = {"--voc12_root": "dataset_root"}


@pytest.mark.parametrize("command", VARIANTS, ids=[v.split()[1] + f"-{i}" for i, v in enumerate(VARIANTS)])
def test_published_readme_command_parses_with_its_meaning(command):
    argv = shlex.split(command)
    assert argv[0] == "python"
    args = PARSERS[argv[1]]().parse_args(argv[2:])
    given = dict(zip(argv[2::2], argv[3::2], strict=True))
    dests = DEST if hasattr(args, "dataset") else {}  # make_cls_labels is VOC's own tool: no --dataset
    for flag, value in given.items():  # every flag lands on the attribute of its own name, unchanged
        assert str(getattr(args, dests.get(flag, flag.removeprefix("--")))) == value, flag
    assert getattr(args, "dataset", "voc12") == "voc12"
    for list_flag in ("--infer_list",):
        if list_flag in given:
            assert (REPO / given[list_flag]).is_file()  # the shipped voc12/*.txt lists


def test_every_published_script_and_flag_is_covered():
    assert {shlex.split(c)[1] for c in PUBLISHED_COMMANDS} == set(PARSERS)
    assert len(VARIANTS) == 12


def test_make_cls_labels_runs_as_a_file_from_voc12():
    # The published README runs it as "cd voc12; python make_cls_labels.py ..."; its defaults stay in voc12/.
    out = subprocess.run(
        [sys.executable, "make_cls_labels.py", "--help"], cwd=REPO / "voc12", capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    args = make_cls_labels.get_args_parser().parse_args(["--voc12_root", "x"])
    assert Path(args.out) == REPO / "voc12" / "cls_labels.npz" and Path(args.list_dir) == REPO / "voc12"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),
        (["--crf"], True),
        (["--crf", "True"], True),
        (["--crf", "true"], True),
        (["--crf", "1"], True),
        (["--crf", "False"], False),
        (["--crf", "false"], False),
        (["--crf", "no"], False),
        (["--crf=False"], False),
    ],
)
def test_infer_aff_crf_words_mean_what_they_say(argv, expected):
    base = ["--weights", "w.pth", "--cam_dir", "c", "--out_rw", "r"]
    assert infer_aff.get_args_parser().parse_args(base + argv).crf is expected


def test_infer_aff_crf_rejects_other_words(capsys):
    with pytest.raises(SystemExit):
        infer_aff.get_args_parser().parse_args(["--weights", "w", "--cam_dir", "c", "--out_rw", "r", "--crf", "maybe"])
    assert "expected a boolean" in capsys.readouterr().err


def _poly(**kwargs):
    ref = np.load(DATA / "poly_optimizer.npz", allow_pickle=False)
    p1 = nn.Parameter(torch.from_numpy(ref["init"][:4].copy()))
    p2 = nn.Parameter(torch.from_numpy(ref["init"][4:].copy()))
    groups = [{"params": [p1], "lr": 0.01, "weight_decay": 5e-4}, {"params": [p2], "lr": 0.1, "weight_decay": 0.0}]
    return ref, p1, p2, torchutils.PolyOptimizer(groups, 0.01, 5e-4, 6, **kwargs)


def _run(ref, p1, p2, opt):
    lrs, params = [], []
    for grad in ref["grads"]:
        p1.grad, p2.grad = torch.from_numpy(grad[:4].copy()), torch.from_numpy(grad[4:].copy())
        opt.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        params.append(torch.cat([p1.detach(), p2.detach()]).numpy().copy())
    return np.array(lrs), np.stack(params)


def test_poly_optimizer_published_call_means_poly_power():
    # The published call PolyOptimizer(groups, lr, wd, max_step, momentum=0.9): 0.9 is the poly power and SGD
    # momentum is the weight decay. It reproduces the published optimiser's reference vector.
    ref, *rest = _poly(momentum=0.9)
    assert all(g["momentum"] == 5e-4 for g in rest[2].param_groups)
    lrs, params = _run(ref, *rest)
    np.testing.assert_allclose(lrs, ref["lrs"], rtol=1e-12)
    np.testing.assert_allclose(params, ref["params"], rtol=0, atol=2e-7)
    # momentum=0.5: lr = lr0 (1 - k / 6) ** 0.5, e.g. step 3: 0.01 * 0.5 ** 0.5 = 0.00707107.
    ref, *rest = _poly(momentum=0.5)
    lrs, _ = _run(ref, *rest)
    assert lrs[3] == pytest.approx([0.00707107, 0.0707107], rel=1e-6)
    assert all(g["momentum"] == 5e-4 for g in rest[2].param_groups)


def test_poly_optimizer_sgd_momentum_has_its_own_name():
    _, _, _, opt = _poly(sgd_momentum=0.9)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups) and opt.poly_power == 0.9
    _, _, _, opt = _poly(poly_power=0.5)
    assert opt.poly_power == 0.5
    with pytest.raises(ValueError, match="same poly power"):
        _poly(momentum=0.9, poly_power=0.5)
    args = train_cls_ser.get_args_parser().parse_args(["--sgd_momentum", "0.9"])
    assert args.momentum == 0.9  # --momentum (the old spelling) is an alias of --sgd_momentum


def test_published_python_names():
    from network import resnet38_aff, resnet38_cls_ser, resnet38d, vgg16_aff, vgg16_cls_ser, vgg16d
    from tool import crf
    from tool.imutils import crf_inference  # where the published code kept it

    assert crf_inference is crf.crf_inference
    assert callable(resnet38d.convert_mxnet_to_torch) and callable(vgg16d.convert_caffe_to_torch)
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for module in (resnet38_cls_ser, resnet38_aff, vgg16_cls_ser, vgg16_aff):
        model = module.Net(width_mult=1 / 8)
        groups = model.get_parameter_groups()
        assert len(groups) == 4 and all(
            a is b for g, h in zip(groups, model.parameter_groups(), strict=True) for a, b in zip(g, h, strict=True)
        )
        assert model.normalize(image).shape == (2, 3, 3)
    np.testing.assert_array_equal(resnet38_cls_ser.Net.normalize(image), resnet38d.normalize(image))
    # ResNet38: RGB / 255 - mean / std; VGG16: BGR minus the Caffe means. Pixel (0, 1, 2):
    np.testing.assert_allclose(
        vgg16_cls_ser.Net.normalize(image)[0, 0], [2 - 104.008, 1 - 116.669, 0 - 122.675], atol=1e-4
    )
