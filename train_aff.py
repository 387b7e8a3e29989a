"""Train AffinityNet from the CRF-refined CAMs (docs/method.md#affinitynet).

    python train_aff.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
        --la_crf_dir out_crf_4.0 --ha_crf_dir out_crf_24.0

Pair labels come from the confident regions of the low-alpha (foreground) and
high-alpha (background) CRF scores; pairs in between are ignored.
"""

from __future__ import annotations

import argparse

from engine import flags, training
from network.resnet38_aff import affinity_loss
from tool import cli
from tool.dataset import load_img_id_list
from voc12.data import VOC12AffDataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="Train AffinityNet (ResNet38) on CRF-refined CAM labels", script="train_aff"
    )
    reason = "the radius-5 pairs need 9 x 9 cells of the stride-8 grid"
    training.add_training_args(
        parser, "network.resnet38_aff", batch_size=8, max_epoches=8, min_crop=72, min_crop_reason=reason
    )
    parser.add_argument("--la_crf_dir", required=True, help="low-alpha CRF folder (confident foreground)")
    parser.add_argument("--ha_crf_dir", required=True, help="high-alpha CRF folder (confident background)")
    flags.add_allow_pickle_flag(parser, "the reference's pickled <id>.npy CRF files")
    return parser


def loss_fn(model, batch, device):
    images, bg_pos, fg_pos, neg = (t.to(device, non_blocking=True) for t in batch)
    aff = model(images)  # (N, 34, n_from)
    loss, parts = affinity_loss(aff.float(), bg_pos, fg_pos, neg)
    scalars = {k: v.item() for k, v in parts.items()}
    scalars["loss"] = loss.item()
    return loss, scalars, None


def main(args: argparse.Namespace) -> dict:
    info = flags.dataset_of(args)
    load_img_id_list(args.train_list)  # duplicate ids are an error here: they would weigh twice
    model = training.build_model(args, head="aff")
    dataset = VOC12AffDataset(
        args.train_list,
        info,
        args.la_crf_dir,
        args.ha_crf_dir,
        crop_size=args.crop_size,
        allow_pickle=args.allow_pickle,
        normalize=model.normalize,
        stride=model.stride,
    )
    return training.train(args, model, dataset, loss_fn)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
