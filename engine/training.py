"""The training driver shared by ``train_cls_ser.py``, ``train_aff.py`` and ``train_seg.py``.

The scripts train a ResNet38 head with the reference's poly-LR SGD, the same
flags, checkpoints and logging; they differ only in the dataset, the loss and
what they draw. So a script supplies those and calls ``train(...)``:

- ``loss_fn(model, batch, device) -> (loss, scalars, vis)``: the loss of one
  (micro-)batch, a dict of floats to log, and an optional dict of tensors for
  ``vis_fn``;
- ``val_fn(model, device) -> dict`` (optional): evaluated after every epoch on rank 0;
- ``vis_fn(writer, vis, step)`` (optional): TensorBoard images.

Single process, DataParallel (one process, several GPUs) and DDP (torchrun)
use the same code; ``--batch_size`` is always the total batch and
``--accum_steps`` splits it into micro-batches.

Resumption: every epoch draws its sample order and augmentation seeds from
``(seed, epoch)`` alone, so a run resumed from an epoch checkpoint is identical
to an uninterrupted one. A run stopped mid-epoch (``--max_steps``, a kill
after the last checkpoint) resumes at the recorded step; its remaining batches
keep their order, and with ``--num_workers 0`` their augmentation and dropout
draws too (the checkpoint holds the RNG states), so it is exact as well; with
workers the augmentation draws differ (each worker's stream restarts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tensorboardX import SummaryWriter
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine import flags
from engine.script import ScriptEnv, script_context
from network import build_network
from network.weights import load_weights
from tool import cli, layout, pyutils, torchutils
from tool.cli import InputError
from tool.fileio import atomic_path, remove_stale_temps

logger = logging.getLogger(__name__)


def add_training_args(
    parser: argparse.ArgumentParser,
    network: str,
    *,
    batch_size: int,
    max_epoches: int,
    lr: float = 0.01,
    momentum: float | None = None,
    crop_size: int = 448,
    min_crop: int = 8,
    min_crop_reason: str = "",
) -> None:
    """The flags the training scripts share, with the script's reference values as defaults.

    ``network`` is the default ``--network``; the module name of the ``--network`` given is the default
    ``--session_name``. ``momentum`` None is the reference quirk (SGD momentum
    equal to the weight decay). ``--crop_size`` is checked against
    ``min_crop``, and its error gives ``min_crop_reason``.
    """
    _add_optimizer_args(parser, network, batch_size, max_epoches, lr, momentum)
    _add_init_args(parser)
    _add_run_args(parser, crop_size, min_crop, min_crop_reason)


def _add_optimizer_args(
    parser: argparse.ArgumentParser, network: str, batch_size: int, max_epoches: int, lr: float, momentum: float | None
) -> None:
    """Batch, schedule, network and optimiser flags."""
    parser.add_argument(
        "--batch_size", type=cli.positive_int, default=batch_size, help="total batch over all devices (>= 1)"
    )
    parser.add_argument(
        "--max_epoches", type=cli.positive_int, default=max_epoches, help="epochs (reference spelling, >= 1)"
    )
    flags.add_network_flags(parser, network, width_help="channel width multiplier in (0, 4] (1/8 for CPU demos)")
    parser.add_argument(
        "--lr",
        type=cli.float_range(0, 10, lo_open=True),
        default=lr,
        help=f"base learning rate in (0, 10] (new layers get 10x; default {lr})",
    )
    flags.add_num_workers_flag(parser)
    parser.add_argument("--wt_dec", type=cli.float_range(0, 1), default=5e-4, help="weight decay in [0, 1]")
    momentum_default = (
        "default: equal to --wt_dec, the reference's positional-argument quirk (0.9 fixes it)"
        if momentum is None
        else f"default {momentum}"
    )
    parser.add_argument(
        "--sgd_momentum",
        "--momentum",
        dest="momentum",
        type=cli.float_range(0, 1, hi_open=True),
        default=momentum,
        help=f"SGD momentum in [0, 1) (not the poly power); {momentum_default}",
    )
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="sgd: the reference's poly SGD; adam: poly Adam (not in the reference; the demo's pretraining stage)",
    )


def _add_init_args(parser: argparse.ArgumentParser) -> None:
    """Where the weights start: ``--weights`` or ``--from_scratch`` with its BatchNorm calibration."""
    flags.add_weights_flag(
        parser, "init weights: MXNet .params (ResNet38), Caffe .caffemodel (VGG16) or a .pth state dict", required=False
    )
    parser.add_argument(
        "--from_scratch",
        action="store_true",
        help="train without --weights: He init and BatchNorm statistics estimated from data (see --bn_calib_batches)",
    )
    parser.add_argument(
        "--dropout_scale",
        type=cli.float_range(0, 2),
        default=1.0,
        help="multiply every Dropout2d rate (b6 0.3, b7 0.5, head 0.5) by this, in [0, 2] so that rates stay <= 1; "
        "0 disables dropout",
    )
    parser.add_argument(
        "--bn_calib_batches",
        type=cli.nonneg_int,
        default=8,
        help="with --from_scratch: batches used to estimate the frozen BatchNorm statistics (0 keeps mean 0, var 1)",
    )


def _add_run_args(parser: argparse.ArgumentParser, crop_size: int, min_crop: int, min_crop_reason: str) -> None:
    """Data, outputs, device, seed and the run's length and logging."""
    parser.add_argument("--train_list", default="voc12/train_aug.txt", help="list of training images")
    parser.add_argument(
        "--session_name", help="output path prefix (default: the module name of --network, e.g. resnet38_cls_ser)"
    )
    parser.add_argument(
        "--crop_size",
        type=cli.int_range(min_crop, 4096, why=min_crop_reason),
        default=crop_size,
        help=f"random crop side, pixels, {min_crop}..4096 (default {crop_size})",
    )
    flags.add_data_flags(parser)
    parser.add_argument("--tblog_dir", default="./log", help="TensorBoard folder ('' disables)")
    flags.add_device_flags(parser)
    parser.add_argument("--seed", type=cli.int_range(0, 2**31 - 1), default=1, help="random seed (reference: 1)")
    parser.add_argument(
        "--accum_steps", type=cli.positive_int, default=1, help="split each batch into this many micro-batches"
    )
    parser.add_argument(
        "--resume", help="checkpoint to resume from (default: <session_name>_checkpoint.pth when it exists)"
    )
    flags.add_overwrite_flag(parser, "start afresh even if outputs exist")
    parser.add_argument("--max_steps", type=cli.positive_int, help="stop after this many optimiser steps")
    parser.add_argument("--print_freq", type=cli.positive_int, default=10, help="log every N steps")
    parser.add_argument("--vis_freq", type=cli.positive_int, default=100, help="TensorBoard images every N steps")


@dataclass(frozen=True)
class TrainConfig:
    """The flags of :func:`add_training_args`, the ones the driver reads, by the same names."""

    network: str
    width_mult: float
    weights: str | None
    from_scratch: bool
    dropout_scale: float
    bn_calib_batches: int
    batch_size: int
    max_epoches: int
    accum_steps: int
    max_steps: int | None
    lr: float
    wt_dec: float
    momentum: float | None
    optimizer: str
    seed: int
    num_workers: int
    amp: bool
    session_name: str
    resume: str | None
    overwrite: bool
    tblog_dir: str
    print_freq: int
    vis_freq: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["session_name"] = values["session_name"] or layout.session_name_of(args.network)
        return cls(**values)


def build_model(args: argparse.Namespace, num_classes: int | None = None, head: str | None = None) -> torch.nn.Module:
    """``--network`` module's ``Net`` at ``--width_mult`` with ``num_classes`` outputs (None: a head without
    classes; ``head``: the kind a bare backbone gets, :func:`network.build_network`), initialised from
    ``--weights`` (flags of ``args``)."""
    cfg = TrainConfig.from_args(args)
    # Seeded here so that --seed fixes the new layers' random init, whatever ran before in this process.
    torchutils.seed_everything(cfg.seed)
    model = build_network(cfg.network, cfg.width_mult, num_classes, head)
    if cfg.weights:
        load_weights(model, cfg.weights, allow_missing_head=True)
    elif cfg.from_scratch:
        model.init_backbone_from_scratch()
    else:
        raise SystemExit(
            "--weights is required (ImageNet ResNet38 .params, VGG16 .caffemodel or a .pth); "
            "--from_scratch trains without"
        )
    if cfg.dropout_scale != 1.0:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout2d):
                m.p *= cfg.dropout_scale
    return model


def calibrate_batchnorm(model, dataset, loss_fn, device, cfg: TrainConfig) -> None:
    """From scratch only: estimate the frozen BatchNorm statistics on ``--bn_calib_batches`` batches."""
    g = torch.Generator().manual_seed(cfg.seed)
    n_images = min(len(dataset), cfg.bn_calib_batches * cfg.batch_size)
    indices = torch.randperm(len(dataset), generator=g)[:n_images].tolist()
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        worker_init_fn=torchutils.seed_worker,
        generator=g,
    )
    model.calibrate_batchnorm(lambda batch=batch: loss_fn(model, batch, device) for batch in loader)
    logger.info("BatchNorm statistics estimated from %d training images (--from_scratch)", n_images)


class _EpochSampler(Sampler):
    """A fixed permutation of the dataset for one epoch (this rank's share), samples ``offset`` to ``stop``."""

    def __init__(
        self, dataset_len: int, seed: int, epoch: int, rank: int, world: int, offset: int = 0, stop: int | None = None
    ):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(dataset_len, generator=g).tolist()
        usable = dataset_len // world * world  # equal shares keep DDP ranks in step
        self.indices = order[rank:usable:world][offset:stop]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _micro_batches(batch, n: int):
    """Split a collated batch (tuple/list of tensors or lists) into ``n`` equal chunks."""
    if n == 1:
        return [batch]
    size = len(batch[0])
    if size % n:
        raise SystemExit(f"--accum_steps {n} must divide the per-device batch {size}")
    step = size // n
    return [[item[i : i + step] for item in batch] for i in range(0, size, step)]


@dataclass
class _Run:
    """What one training run's helpers share: the model (plain and wrapped), optimiser, scaler and schedule."""

    cfg: TrainConfig
    script_flags: dict  # every flag of the script, stored in the checkpoints
    env: ScriptEnv
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    writer: Any
    per_rank: int
    steps_per_epoch: int
    stop_step: int


def train(
    args: argparse.Namespace,
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: Callable,
    val_fn: Callable | None = None,
    vis_fn: Callable | None = None,
) -> dict:
    """Train ``model`` on ``dataset``; returns a summary dict. See the module docstring.

    ``args`` holds the flags of :func:`add_training_args` (read here as a :class:`TrainConfig`) and the
    script's own, which are logged and stored in the checkpoints.
    """
    cfg = TrainConfig.from_args(args)
    paths = layout.session_files(cfg.session_name)
    with script_context(args, paths["log"]) as env:
        return _train(cfg, vars(args), env, paths, model, dataset, loss_fn, val_fn, vis_fn)


def _train(
    cfg: TrainConfig, script_flags: dict, env: ScriptEnv, paths, model, dataset, loss_fn, val_fn, vis_fn
) -> dict:
    world, device = env.world, env.device
    if cfg.batch_size % (world * cfg.accum_steps):
        raise SystemExit(f"--batch_size {cfg.batch_size} must be a multiple of world size x --accum_steps")
    steps_per_epoch = len(dataset) // cfg.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(dataset)} training images are fewer than --batch_size {cfg.batch_size}")
    max_step = steps_per_epoch * cfg.max_epoches

    model.to(device)
    optimizer = torchutils.make_optimizer(model, cfg.lr, cfg.wt_dec, max_step, cfg.momentum, cfg.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    start_step, resume_rng = resume_or_start(cfg, paths, model, optimizer, scaler, env.is_main, max_step)
    if start_step is None:
        start_step = 0
        if cfg.from_scratch and not cfg.weights and cfg.bn_calib_batches > 0:
            calibrate_batchnorm(model, dataset, loss_fn, device, cfg)  # before DDP, which broadcasts rank 0's

    ddp_model = torchutils.wrap_model(model, device)
    ddp_model.train()
    writer = None
    if env.is_main and cfg.tblog_dir:
        writer = SummaryWriter(cfg.tblog_dir)
    stop_step = max_step if cfg.max_steps is None else min(max_step, cfg.max_steps)
    per_rank = cfg.batch_size // world
    run = _Run(
        cfg, script_flags, env, model, ddp_model, optimizer, scaler, writer, per_rank, steps_per_epoch, stop_step
    )
    step = start_step
    history = []
    with logging_redirect_tqdm():
        while step < stop_step:
            epoch, offset = divmod(step, steps_per_epoch)
            loader = _epoch_loader(run, dataset, epoch, offset, resume_rng)
            resume_rng = None
            t_epoch = time.time()
            step, meters = train_one_epoch(run, loader, loss_fn, vis_fn, epoch, offset, step)
            stats = {"epoch": epoch, "step": step, **{k: m.global_avg for k, m in meters.items()}}
            stats["epoch_seconds"] = time.time() - t_epoch
            end_epoch(run, paths, stats, val_fn)
            if env.is_main:
                history.append(stats)

    if env.is_main and step >= max_step:
        save_final(model, step, paths["final"])
    if writer is not None:
        writer.close()
    return {"step": step, "max_step": max_step, "history": history, "final": str(paths["final"])}


def resume_or_start(
    cfg: TrainConfig, paths, model, optimizer, scaler, main: bool, max_step: int
) -> tuple[int | None, Any]:
    """Load ``--resume`` (or the session's checkpoint) into the model, optimiser and scaler; clean up.

    Returns the step and RNG state to resume at (the state only mid-epoch), or ``(None, None)`` for a fresh run.
    """
    resume = cfg.resume
    # A finished run keeps its checkpoint too, so the final file is checked first.
    if resume is None and paths["final"].exists() and not cfg.overwrite:
        raise SystemExit(f"{paths['final']} exists; pass --overwrite to train again")
    if resume is None and paths["checkpoint"].exists() and not cfg.overwrite:
        resume = paths["checkpoint"]
        logger.info("found %s: resuming (pass --overwrite to start afresh)", resume)
    if main:
        # Hidden temporary files of a save that was killed (atomic_path): nothing else ever removes them.
        stems = {p.stem for p in paths.values()}
        if removed := remove_stale_temps({paths["checkpoint"].parent}, stems):
            logger.info("removed %d temporary files left by an interrupted save", removed)
    if resume is None:
        if main:
            paths["jsonl"].unlink(missing_ok=True)  # a fresh run must not append to an old run's epoch log
        return None, None
    ckpt = torchutils.load_checkpoint(resume, torchutils.CHECKPOINT_KEYS)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[:2]
        raise InputError(
            f"--resume {resume}: this checkpoint does not fit the model (another --network or --width_mult?): "
            + " ".join(first)[:300]
        ) from None
    logger.info("resumed from %s at step %d / %d", resume, ckpt["step"], max_step)
    return ckpt["step"], (ckpt["rng"] if not ckpt["epoch_done"] else None)


def _epoch_loader(run: _Run, dataset: Dataset, epoch: int, offset: int, resume_rng) -> DataLoader:
    """This rank's batches of ``epoch`` from batch ``offset`` on, with the epoch's seeds set."""
    cfg, rank, world = run.cfg, run.env.rank, run.env.world
    # Every epoch's randomness derives from (seed, epoch, rank) only: exact resumption.
    torchutils.seed_everything(cfg.seed + 1000 * epoch + rank)
    if offset and resume_rng is not None:
        torchutils.set_rng_state(resume_rng)  # continue the stopped epoch's random stream
    # Only the batches this run trains: fetching one more would spend its augmentation draws
    # before the checkpoint records the RNG state, and a resumed run would then differ.
    end = min(run.steps_per_epoch, run.stop_step - epoch * run.steps_per_epoch)
    per_rank = run.per_rank
    sampler = _EpochSampler(len(dataset), cfg.seed, epoch, rank, world, offset * per_rank, end * per_rank)
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=run.env.device.type == "cuda",
        worker_init_fn=torchutils.seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank),
        persistent_workers=False,
    )


def train_one_epoch(run: _Run, loader, loss_fn, vis_fn, epoch: int, offset: int, step: int):
    """Optimiser steps over ``loader`` until the epoch or the run ends; returns the step and the meters."""
    cfg, steps_per_epoch = run.cfg, run.steps_per_epoch
    meters: dict[str, pyutils.SmoothedValue] = defaultdict(pyutils.SmoothedValue)
    bar = tqdm(total=steps_per_epoch, initial=offset, desc=f"epoch {epoch}", disable=not run.env.is_main, leave=False)
    for batch in loader:
        if step >= run.stop_step or step // steps_per_epoch != epoch:
            break
        t0 = time.time()
        vis = train_step(run, batch, loss_fn, meters, step)
        step += 1
        meters["imps"].update(cfg.batch_size / (time.time() - t0))
        bar.update(1)
        if run.env.is_main and step % cfg.print_freq == 0:
            _log_step(run, meters, step)
        if run.writer is not None and vis_fn is not None and vis is not None and step % cfg.vis_freq == 0:
            vis_fn(run.writer, vis, step)
    bar.close()
    return step, meters


def train_step(run: _Run, batch, loss_fn, meters: dict, step: int):
    """One optimiser step on ``batch`` (in ``--accum_steps`` micro-batches); returns the last ``vis``."""
    vis = None
    chunks = _micro_batches(batch, run.cfg.accum_steps)
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = run.ddp_model.no_sync() if (run.env.world > 1 and not last) else contextlib.nullcontext()
        with sync:
            with torchutils.autocast(run.env.device, run.cfg.amp):
                loss, scalars, vis = loss_fn(run.ddp_model, chunk, run.env.device)
            run.scaler.scale(loss / len(chunks)).backward()
        for k, v in scalars.items():
            meters[k].update(v)
    if not math.isfinite(loss.item()):
        raise SystemExit(f"loss is {loss.item()} at step {step}; stopping")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return vis


def _log_step(run: _Run, meters: dict, step: int) -> None:
    eta = (run.stop_step - step) * run.cfg.batch_size / max(meters["imps"].avg, 1e-9)
    lr = run.optimizer.param_groups[0]["lr"]
    losses = " ".join(f"{k} {m.avg:.4f}" for k, m in meters.items() if k != "imps")
    logger.info(
        "step %d/%d %s imps %.1f lr %.5f eta %s",
        step,
        run.stop_step,
        losses,
        meters["imps"].avg,
        lr,
        pyutils.format_seconds(eta),
    )
    if run.writer is not None:
        for k, m in meters.items():
            run.writer.add_scalar(f"train/{k}", m.avg, step)
        run.writer.add_scalar("train/lr", lr, step)


def end_epoch(run: _Run, paths: dict, stats: dict, val_fn) -> None:
    """Validation (at an epoch's end), the checkpoint and the JSON epoch log line on rank 0; then all ranks meet."""
    step, epoch = stats["step"], stats["epoch"]
    epoch_done = step % run.steps_per_epoch == 0
    if epoch_done and val_fn is not None and run.env.is_main:
        stats.update({f"val_{k}": v for k, v in val_fn(run.model, run.env.device).items()})
        if run.writer is not None:
            for k, v in stats.items():
                if k.startswith("val_"):
                    run.writer.add_scalar(f"val/{k[4:]}", v, step)
        run.model.train()
    if run.env.is_main:
        checkpoint = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "step": step,
            "epoch": epoch,
            "epoch_done": epoch_done,
            "rng": torchutils.rng_state(),
            "args": run.script_flags,
        }
        torchutils.save_atomic(checkpoint, paths["checkpoint"])
        with atomic_path(paths["jsonl"]) as tmp:
            previous = paths["jsonl"].read_text() if paths["jsonl"].exists() else ""
            Path(tmp).write_text(previous + json.dumps(stats) + "\n")
        logger.info("epoch %d done: %s", epoch, json.dumps(stats))
    if torchutils.is_distributed():
        torch.distributed.barrier()


def save_final(model: torch.nn.Module, step: int, path: Path) -> None:
    """The final weights; refused when they are not finite."""
    # The loss is checked before each step, so a last step that diverged would otherwise be saved silently.
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise SystemExit(f"weights are not finite after step {step} (e.g. {bad[:3]}): training diverged; lower --lr")
    torchutils.save_atomic(model.state_dict(), path)
    logger.info("saved %s", path)
