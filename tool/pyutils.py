"""Logging, smoothed meters and run metadata shared by the scripts."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections import deque
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logger(log_file: str | Path | None = None, main_process: bool = True) -> logging.Logger:
    """Configure the root logger once: console + ``log_file``; other ranks only warn."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if main_process else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    root.addHandler(console)
    if log_file is not None and main_process:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(file_handler)
    return root


def git_sha() -> str:
    try:
        cwd = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class SmoothedValue:
    """Running mean of a window of values, and of everything since the last reset."""

    def __init__(self, window: int = 20):
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.values.append(value)
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return sum(self.values) / max(len(self.values), 1)

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def bool_flag(text: str) -> bool:
    """argparse ``type`` for a boolean written as a word: true/false, yes/no, on/off, 1/0 (any case).

    The published scripts used ``type=bool``, which reads every non-empty word (even ``False``) as True;
    with ``nargs="?", const=True`` the bare flag keeps working too.
    """
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {text!r}")
