"""Command-line plumbing shared by every script: flag validators and the exit path for bad input.

Flags are checked when they are parsed: each numeric flag has a ``type=`` from
here, so a value out of range stops argparse with the flag, the value and the
valid range. A bad input found later (a file that is missing, truncated or of
the wrong kind, a bad list line) raises :class:`InputError` naming the file.
:func:`run` turns both into one line on stderr and exit code 1, never a
traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """A bad input the user can fix (file, list line, flag combination, full disk); the message names it."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file that does not exist; the message names it."""


class OutputExistsError(InputError, FileExistsError):
    """An output that exists and would be replaced without ``--overwrite``; the message names it."""


# --------------------------------------------------------------------------- argparse types


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset and container CPU sets where the platform reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "finite"


def int_range(lo: int | None = None, hi: int | None = None, why: str = "") -> Callable[[str], int]:
    """``type=`` for an integer flag in [lo, hi]; ``why`` is appended to the error (e.g. the reason for a bound)."""
    return _number_type(int, "an integer", lo, hi, False, False, why)


def float_range(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False, why: str = ""
) -> Callable[[str], float]:
    """``type=`` for a finite float flag between ``lo`` and ``hi`` (open ends with ``lo_open`` / ``hi_open``)."""
    return _number_type(float, "a finite number", lo, hi, lo_open, hi_open, why)


def _number_type(convert, noun: str, lo, hi, lo_open: bool, hi_open: bool, why: str) -> Callable[[str], float]:
    expected = f"{noun} {_bounds_text(lo, hi, lo_open, hi_open)}" + (f" ({why})" if why else "")

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in some messages
    return parse


positive_int = int_range(1)
nonneg_int = int_range(0)
positive_float = float_range(0, lo_open=True)
nonneg_float = float_range(0)
unit_float = float_range(0, 1)


def or_auto(value_type: Callable[[str], float]) -> Callable[[str], float | str]:
    """``type=`` for a flag that takes ``auto`` (a value the script computes) or a value of ``value_type``."""

    def parse(text: str) -> float | str:
        if text == "auto":
            return text
        try:
            return value_type(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{e} (or 'auto')") from None

    parse.__name__ = getattr(value_type, "__name__", "value")
    return parse


def worker_count(text: str) -> int:
    """``type=`` for a count of worker processes: an integer >= 0, capped at the CPUs this process may use
    (a larger pool only adds memory and contention; 256 loader workers once took a whole machine)."""
    value = nonneg_int(text)
    cpus = usable_cpus()
    if value > cpus:
        logger.warning("%d worker processes requested but only %d CPUs are usable: using %d", value, cpus, cpus)
        return cpus
    return value


def default_workers(preferred: int) -> int:
    """Default of a worker-count flag: ``preferred`` (the reference's value), at most the usable CPUs."""
    return min(preferred, usable_cpus())


def width_mult(text: str) -> float:
    """``type=`` for ``--width_mult``: channel width multiplier in (0, 4]."""
    return float_range(0, 4, lo_open=True)(text)


class OrderedPair(argparse.Action):
    """``nargs=2`` action that requires LOW <= HIGH, e.g. ``--resize_long 448 768``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values[0] > values[1]:
            parser.error(f"argument {option_string}: expected LOW <= HIGH, got {values[0]} {values[1]}")
        setattr(namespace, self.dest, tuple(values))


# --------------------------------------------------------------------------- running a script


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create the output folder of ``flag`` (or check it is one) before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: the output folder is not writable")
    return path


def error_message(error: BaseException) -> str:
    """The one-line message of ``error``; errors re-raised from DataLoader workers carry the worker's
    traceback in their text, and only its last line (the original message) is kept."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """``main(parser.parse_args(argv))``; a bad input ends the process with its message and exit code 1.

    That includes a bad flag: argparse's own usage errors (exit code 2) become exit code 1 too, so that
    callers (``run_pipeline.py``, shell scripts) see one code for every bad input.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        if e.code == 2:
            raise SystemExit(1) from None
        raise
    try:
        return main(args)
    except (InputError, FileNotFoundError) as e:
        parser.exit(1, f"{parser.prog}: error: {error_message(e)}\n")
    except SystemExit as e:
        if isinstance(e.code, str):  # SystemExit("message"): a check in main
            parser.exit(1, f"{parser.prog}: error: {e.code}\n")
        raise


def _exit_when_parent_dies(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def die_with_parent(parent_pid: int) -> None:
    """Worker-process initializer: end this process when ``parent_pid`` dies, even by SIGKILL.

    Linux: the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
    watchdog thread polls the parent. A parent that died before this ran is caught too.
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
            _exit_when_parent_dies(parent_pid)
    else:
        _exit_when_parent_dies(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
