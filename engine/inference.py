"""What the inference scripts share: the run's frame, model loading, the multi-scale flipped forward pass.

:func:`run_stage` is the frame of ``infer_cls_ser.py``, ``infer_aff.py`` and
``infer_seg.py``: the script context, this rank's images minus the finished
ones, the counts summed over ranks. The scripts supply what one image makes.

``infer_cls_ser.infer_cams`` and ``infer_seg.infer_probs`` differ only in what
they do with each scale's output (docs/method.md#ssenet-inference,
docs/method.md#segmentation); the loop over scales and flips is here.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from engine.script import ScriptEnv, script_context
from network import build_network
from network.weights import load_weights
from tool import cli, layout, torchutils
from tool.dataset import load_img_id_list
from tool.fileio import remove_stale_temps

logger = logging.getLogger(__name__)


def load_model(
    network: str,
    width_mult: float,
    weights: str,
    device: torch.device,
    num_classes: int | None = None,
    head: str | None = None,
) -> torch.nn.Module:
    """The network module ``network`` at ``width_mult`` with ``num_classes`` outputs (None: a head without classes;
    ``head``: the kind a bare backbone gets, :func:`network.build_network`) and ``weights`` (head included), in eval
    mode on ``device``."""
    model = build_network(network, width_mult, num_classes, head)
    load_weights(model, weights, allow_missing_head=False)
    return model.eval().to(device)


def msf_outputs(
    model: torch.nn.Module, inputs: list[torch.Tensor], device: torch.device, amp: bool = False, flip: bool = True
) -> Iterator[torch.Tensor]:
    """The model's output for each (2, 3, h_s, w_s) scale pair of ``inputs`` (the image and its flip; only the
    image when ``flip`` is False): (B, C, h_s, w_s), in the autocast dtype."""
    for pair in inputs:
        batch = pair if flip else pair[:1]
        with torchutils.autocast(device, amp):
            yield model(batch.to(device, non_blocking=True))


def unflip_sum(maps: torch.Tensor) -> torch.Tensor:
    """``maps[0] + maps[1]`` un-flipped (horizontal): the two halves of one scale pair summed in the image's frame."""
    return maps[0] + maps[1].flip(-1)


def images_to_do(
    ids: list[str], paths_of: Callable[[str], Mapping[str, Path]], overwrite: bool
) -> tuple[list[int], int]:
    """This rank's share of ``ids`` (indices) minus the images whose files ``paths_of(id)`` all exist (unless
    ``overwrite``), and how many were skipped; the leftovers of a killed run for the images to do are removed."""
    mine = torchutils.shard(list(range(len(ids))))
    todo = [i for i in mine if overwrite or not layout.all_exist(paths_of(ids[i]))]
    skipped = len(mine) - len(todo)
    if skipped:
        logger.info(
            "%d of %d images already have every output; skipping them (--overwrite redoes them)", skipped, len(mine)
        )
    if todo:
        folders = {p.parent for p in paths_of(ids[todo[0]]).values()}
        if removed := remove_stale_temps(folders, {ids[i] for i in todo}):
            logger.info("removed %d temporary files left by an interrupted run", removed)
    return todo, skipped


def log_done(stage: str, done: int, skipped: int, start: float) -> float:
    """Log how many images ``stage`` did and skipped and the seconds since ``start`` (perf_counter); returns them."""
    seconds = time.perf_counter() - start
    logger.info(
        "%s: %d images done, %d skipped (outputs present), %.1f s (%.3f s per image done)",
        stage,
        done,
        skipped,
        seconds,
        seconds / max(done, 1),
    )
    return seconds


def run_stage(
    args: argparse.Namespace,
    stage: str,
    out_dirs: list[tuple[str, str | Path]],
    paths_of: Callable[[str], Mapping[str, Path]],
    run_images: Callable[[list[str], list[int], ScriptEnv], int],
    finish: Callable[[list[str], ScriptEnv], dict] | None = None,
) -> dict:
    """One inference script's run over ``--infer_list``, in :func:`engine.script.script_context`.

    ``out_dirs`` are the (flag, folder) pairs written to, checked before any work;
    ``paths_of(id)`` are an image's output files (:mod:`tool.layout`);
    ``run_images(ids, todo, env)`` makes the files of ``ids[i]`` for ``i`` in ``todo``
    (this rank's unfinished images) and returns how many it did. A repeated id in the list is done once.
    ``finish(ids, env)``, when given, runs on every rank once all ranks are done; the other ranks wait for
    rank 0's. Returns the counts over all ranks, the seconds and what ``finish`` returned.
    """
    start = time.perf_counter()
    with script_context(args) as env:
        ids = load_img_id_list(args.infer_list, duplicates="warn")
        for flag, folder in out_dirs:
            cli.check_output_dir(folder, flag)
        todo, skipped = images_to_do(ids, paths_of, args.overwrite)
        done = run_images(ids, todo, env) if todo else 0
        done, skipped = torchutils.sum_over_ranks([done, skipped])  # also waits for every rank to finish
        summary = {
            "images": len(ids),
            "done": done,
            "skipped": skipped,
            "seconds": log_done(stage, done, skipped, start),
        }
        if finish is not None:
            summary.update(finish(ids, env))
            if torchutils.is_distributed():
                torch.distributed.barrier()
    return summary
