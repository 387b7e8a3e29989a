"""Torch plumbing shared by every script: device choice, seeding, the poly-LR SGD
of the reference (docs/method.md#ssenet-training), checkpoints, DataParallel / DDP.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tool.cli import InputError, MissingFileError
from tool.fileio import atomic_path

# --------------------------------------------------------------------------- device


def get_device(name: str | None = None) -> torch.device:
    """The device of ``--device``: default CUDA when available, else CPU.

    Under torchrun each process takes ``cuda:LOCAL_RANK``.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None and is_distributed():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA only; on CPU ``--amp`` is a no-op."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


# --------------------------------------------------------------------------- seeds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and ``random`` follow the torch seed of the worker.

    The loader's base seed comes from its seeded generator, so augmentations are
    reproducible for a given ``--seed`` and differ between workers and epochs.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    """RNG states as tensors and plain containers, so checkpoints load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- optimiser


DEFAULT_POLY_POWER = 0.9


class _PolySchedule:
    """Mixin for a torch optimiser: ``lr = lr0 * (1 - step / max_step) ** poly_power``, set before each step;
    the step count travels with ``state_dict`` so a resumed run continues the schedule."""

    def _init_poly(self, max_step: int, poly_power: float) -> None:
        self.global_step = 0
        self.max_step = max_step
        self.poly_power = poly_power
        self.initial_lrs = [group["lr"] for group in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            lr_mult = (1 - self.global_step / self.max_step) ** self.poly_power
            for group, lr0 in zip(self.param_groups, self.initial_lrs, strict=True):
                group["lr"] = lr0 * lr_mult
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["poly"] = {"global_step": self.global_step, "max_step": self.max_step, "initial_lrs": self.initial_lrs}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        poly = state_dict.pop("poly")
        super().load_state_dict(state_dict)
        self.global_step, self.max_step, self.initial_lrs = poly["global_step"], poly["max_step"], poly["initial_lrs"]


class PolyOptimizer(_PolySchedule, torch.optim.SGD):
    """SGD with the poly schedule ``lr = lr0 * (1 - step / max_step) ** poly_power``, set before each step.

    The published signature ``PolyOptimizer(params, lr, weight_decay, max_step, momentum=0.9)``
    keeps its published meaning: there ``momentum`` is the poly power (the
    published class stored it under that name and used it as the exponent), so
    ``momentum=`` and ``poly_power=`` are the same argument here.

    Reference quirk (psa issue #28): the original passed the weight decay where
    SGD expects momentum, so it trained with SGD momentum = weight decay (5e-4).
    ``sgd_momentum=None`` reproduces that; ``sgd_momentum=0.9`` is the intended optimiser.
    Per-group ``weight_decay`` in ``params`` overrides ``weight_decay``.
    """

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float,
        max_step: int,
        momentum: float | None = None,
        *,
        poly_power: float | None = None,
        sgd_momentum: float | None = None,
    ):
        if momentum is not None and poly_power is not None and momentum != poly_power:
            raise ValueError(
                f"PolyOptimizer: momentum={momentum} and poly_power={poly_power} name the same poly power "
                "(the published meaning of momentum); pass one. SGD momentum is sgd_momentum="
            )
        poly_power = next((v for v in (poly_power, momentum) if v is not None), DEFAULT_POLY_POWER)
        sgd_momentum = weight_decay if sgd_momentum is None else sgd_momentum
        super().__init__(params, lr=lr, momentum=sgd_momentum, weight_decay=weight_decay)
        self._init_poly(max_step, poly_power)


class PolyAdam(_PolySchedule, torch.optim.Adam):
    """Adam with the same poly schedule and parameter groups: not in the reference; the CPU demo's pretraining
    stage uses it, because a from-scratch ResNet38 leaves the class-prior plateau much sooner with it than with
    SGD (docs/method.md#toy-data-and-the-cpu-demo)."""

    def __init__(self, params, lr: float, weight_decay: float, max_step: int, poly_power: float = DEFAULT_POLY_POWER):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self._init_poly(max_step, poly_power)


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    max_step: int,
    sgd_momentum: float | None = None,
    optimizer: str = "sgd",
) -> PolyOptimizer | PolyAdam:
    """The poly-schedule optimiser over the 4 groups of docs/method.md#ssenet-network (lr, 2 lr, 10 lr, 20 lr;
    no decay on biases): ``"sgd"`` (the reference's ``PolyOptimizer``; ``sgd_momentum=None`` is its quirk,
    momentum = ``weight_decay``) or ``"adam"`` (``PolyAdam``)."""
    groups = model.parameter_groups()
    param_groups = [
        {"params": groups[0], "lr": lr, "weight_decay": weight_decay},
        {"params": groups[1], "lr": 2 * lr, "weight_decay": 0},
        {"params": groups[2], "lr": 10 * lr, "weight_decay": weight_decay},
        {"params": groups[3], "lr": 20 * lr, "weight_decay": 0},
    ]
    if optimizer == "adam":
        return PolyAdam(param_groups, lr=lr, weight_decay=weight_decay, max_step=max_step)
    if optimizer != "sgd":
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    return PolyOptimizer(param_groups, lr=lr, weight_decay=weight_decay, max_step=max_step, sgd_momentum=sgd_momentum)


# --------------------------------------------------------------------------- checkpoints


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: a killed run never leaves half a checkpoint.

    A failed write (full disk, quota, unwritable folder) removes the temporary file, leaves any
    previous ``path`` intact and raises :class:`InputError` naming ``path``.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)  # a file object: torch names the archive's folder "archive", not after the temp file
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as RuntimeError
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        reason = "no space left on the device" if getattr(e, "errno", None) == errno.ENOSPC or free < 1 << 20 else e
        raise InputError(
            f"cannot write {path}: {reason} ({free / 2**20:.0f} MiB free); any previous {path.name} is intact"
        ) from None


def load_torch_file(path: str | os.PathLike, what: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with an error naming ``what`` (a flag) and ``path``
    for a missing, empty, truncated, foreign or code-carrying file (torch's own message is not shown:
    one of them advises unsafe loading, which this project never does)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what}: file not found: {path}")
    expected = "expected a PyTorch file written by torch.save"
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path}: the file is empty; {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if not zipfile.is_zipfile(path):  # random bytes, a cut-short archive, another format
            reason = "not a complete PyTorch file (random bytes, another format, or cut short?)"
        elif isinstance(e, pickle.UnpicklingError):
            reason = "it holds objects other than tensors and plain containers, which are never unpickled here"
        else:
            reason = "a corrupt PyTorch archive"
        raise InputError(f"{what} {path}: cannot read it: {reason}; {expected}") from None


CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "step", "epoch_done", "rng")


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """A checkpoint written by ``save_atomic`` (tensors and plain containers only) holding the ``required``
    entries (:data:`CHECKPOINT_KEYS` for a resumable training checkpoint)."""
    ckpt = load_torch_file(path, "--resume")
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise InputError(
            f"--resume {path}: not a training checkpoint (no {', '.join(missing)}); expected a "
            "<session>_checkpoint.pth written by train_cls_ser.py / train_aff.py (a .pth of weights goes to --weights)"
        )
    return ckpt


# --------------------------------------------------------------------------- distributed


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed() -> bool:
    """Join the torchrun process group when torchrun's variables are set (NCCL on GPU, gloo on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or is_distributed():
        return is_distributed()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP under torchrun; DataParallel when one process sees several GPUs (the reference's way)."""
    if is_distributed():
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return nn.DataParallel(model)
    return model


def shard(items: list, rank: int | None = None, world_size: int | None = None) -> list:
    """This rank's share of a list (round robin), for inference under torchrun."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return items[rank::world_size]


def sum_over_ranks(values: list[int]) -> list[int]:
    """Element-wise sum of per-rank integer counts over all ranks (the values themselves without torchrun)."""
    if not is_distributed():
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    counts = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    return counts.tolist()
