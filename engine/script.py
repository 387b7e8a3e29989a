"""Start-up and tear-down every script shares: one context (docs/method.md#ssenet-training).

:func:`script_context` joins the torchrun process group when torchrun started
the script (and leaves it again at the end, also on an error), sets up the
logger (rank 0 logs to the console and ``log_path``), picks the device and logs
the flags and the git SHA in one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from tool import pyutils, torchutils

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptEnv:
    device: torch.device
    is_main: bool
    rank: int
    world: int


@contextlib.contextmanager
def script_context(args: argparse.Namespace, log_path: str | Path | None = None) -> Iterator[ScriptEnv]:
    """The process group, logger and device of one script run (``args.device``); a group joined here is left."""
    joined_here = not torchutils.is_distributed() and torchutils.init_distributed()
    try:
        is_main = torchutils.is_main_process()
        pyutils.setup_logger(log_path, is_main)
        device = torchutils.get_device(args.device)
        world = torchutils.get_world_size()
        logger.info("args: %s", json.dumps(vars(args), default=str))
        logger.info("git %s, torch %s, device %s, world size %d", pyutils.git_sha(), torch.__version__, device, world)
        yield ScriptEnv(device, is_main, torchutils.get_rank(), world)
    finally:
        if joined_here:
            dist.destroy_process_group()
