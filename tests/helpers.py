"""Shared test utilities (not tests themselves)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch

HEAD_LAYERS = {"fc8", "f8_3", "f8_4", "f8_5", "f9"}


def fill_reference_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill ``model`` with the weights the reference vectors were computed with.

    The rule of tests/data/README.md: one default_rng(seed), the state dict
    walked in sorted name order (num_batches_tracked skipped), float64 draws cast to float32.
    """
    g = np.random.default_rng(seed)
    state = model.state_dict()
    filled = {}
    for name in sorted(state):
        if name.endswith("num_batches_tracked"):
            continue
        shape = tuple(state[name].shape)
        if name.endswith("running_var"):
            value = g.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            value = 0.1 * g.standard_normal(shape)
        elif len(shape) == 1:
            value = 1.0 + 0.1 * g.standard_normal(shape)
        else:
            gain = 4.0 if name.split(".")[0] in HEAD_LAYERS else 0.7
            value = g.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))
        filled[name] = torch.from_numpy(value.astype(np.float32))
    model.load_state_dict(filled, strict=False)
    return model


def read_key_spec(path) -> list[tuple[str, tuple[int, ...]]]:
    """``name<TAB>d0,d1,...`` lines (empty shape for scalars) of tests/data/*_keys.txt."""
    entries = []
    for line in open(path).read().splitlines():
        name, _, shape = line.partition("\t")
        entries.append((name, tuple(int(d) for d in shape.split(",")) if shape else ()))
    return entries


def quick_train_flags(epochs: int = 1) -> list[str]:
    """Training-script flags for a seconds-long CPU run: batch 2, no loader workers, no TensorBoard."""
    flags = {"--batch_size": 2, "--max_epoches": epochs, "--num_workers": 0, "--device": "cpu", "--tblog_dir": ""}
    return [str(part) for flag_value in flags.items() for part in flag_value]


@contextlib.contextmanager
def restored_root_logger() -> Iterator[None]:
    """Put the root logger's handlers and level back afterwards (the scripts configure it for themselves)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
