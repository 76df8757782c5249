"""Checkpoints: atomic writes, a previous checkpoint to fall back on, and the random-number state
that exact resume needs.

A run's ``checkpoints/`` folder holds ``last.pt`` and ``previous.pt``. :func:`save_checkpoint`

1. checks that every floating-point tensor of the state is finite (a step that made the weights
   NaN must not replace a good checkpoint),
2. writes ``last.pt.tmp`` and flushes it to disk,
3. hard-links the current ``last.pt`` as ``previous.pt``, then renames the new file over ``last.pt``.

A crash or SIGKILL at any point leaves an intact ``last.pt`` (and ``previous.pt``); a write that
fails (disk full, read-only folder) removes its temporary file and raises
:class:`CheckpointWriteError`, the existing checkpoints untouched. :func:`load_latest` reads
``last.pt`` and, when that file is empty, truncated or corrupt, falls back to ``previous.pt``.
"""

from __future__ import annotations

import errno
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from rltrain.errors import ConfigError

LAST, PREVIOUS = "last.pt", "previous.pt"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only folder, file-size limit); the previous
    checkpoints are intact."""


class NonFiniteStateError(RuntimeError):
    """The state to save holds NaN or infinite values; nothing was written."""


class CheckpointReadError(ConfigError):
    """No checkpoint of a run could be read."""


# ---- writing -------------------------------------------------------------------------------------

def _floating_tensors(node, path: str = ""):
    """(path, tensor) of every floating-point tensor in nested dicts, lists and tuples."""
    if isinstance(node, torch.Tensor):
        if node.is_floating_point():
            yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _floating_tensors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _floating_tensors(value, f"{path}[{i}]")


def non_finite_entries(state: dict) -> list[str]:
    """Paths of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for path, tensor in _floating_tensors(state):
        by_device.setdefault(tensor.device, []).append((path, torch.isfinite(tensor).all()))
    bad = []
    for flags in by_device.values():  # one reduction per tensor, one host read per device
        finite = torch.stack([flag for _, flag in flags]).tolist()
        bad += [path for (path, _), ok in zip(flags, finite) if not ok]
    return bad


def check_finite(state: dict, directory: Path) -> None:
    bad = non_finite_entries(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        kept = Path(directory) / LAST
        raise NonFiniteStateError(
            f"non-finite values (NaN or inf) in {', '.join(bad[:3])}{more}; the checkpoint was not written and the "
            f"last good one is kept: {kept if kept.exists() else '(none written yet)'}. Try a lower learning rate "
            "or gradient clipping (algo.optim.<group>.grad_clip).")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _RecordingWriter:
    """A file that keeps the ``OSError`` of a failed write: ``torch.save`` reports it as a RuntimeError
    without the reason (ENOSPC, EFBIG, ...)."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _write_file(state: dict, path: Path) -> None:
    with path.open("wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(state, writer)
        except RuntimeError as err:
            if writer.error is not None:
                raise writer.error from err
            raise
        f.flush()
        os.fsync(f.fileno())


def _keep_as_previous(last: Path, previous: Path) -> None:
    """``previous`` becomes the current ``last`` (a hard link: ``last`` exists at every moment)."""
    staged = previous.with_name(previous.name + ".tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(last, staged)
    except OSError:  # a file system without hard links: copy
        staged.write_bytes(last.read_bytes())
    os.replace(staged, previous)


def _write_error(path: Path, err: BaseException) -> CheckpointWriteError:
    code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
    return CheckpointWriteError(code, f"could not write checkpoint {path}: {reason}", str(path))


def save_checkpoint(state: dict, directory: Path) -> Path:
    """Write ``state`` as ``directory/last.pt``, the former one kept as ``previous.pt``; returns the path.

    Raises :class:`NonFiniteStateError` (nothing written) if a floating-point tensor is not finite,
    and :class:`CheckpointWriteError` if the file system refuses the write (the existing checkpoints
    are left as they were).
    """
    directory = Path(directory)
    check_finite(state, directory)
    last, previous = directory / LAST, directory / PREVIOUS
    tmp = last.with_name(LAST + ".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_file(state, tmp)
        if last.exists():
            _keep_as_previous(last, previous)
        os.replace(tmp, last)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise _write_error(last, err) from err
    _fsync_dir(directory)
    return last


def save_atomic(state: dict, path: Path) -> None:
    """One file written atomically (write, fsync, rename), e.g. a policy snapshot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_file(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise _write_error(path, err) from err


# ---- reading ---------------------------------------------------------------------------------------

def load(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(Path(path), map_location=device, weights_only=False)


def has_checkpoint(directory: Path) -> bool:
    return any((Path(directory) / name).exists() for name in (LAST, PREVIOUS))


def _read(path: Path, device) -> tuple[dict | None, str]:
    """(state, "") or (None, why the file cannot be used)."""
    if not path.exists():
        return None, "missing"
    if path.stat().st_size == 0:
        return None, "an empty file"
    try:
        state = load(path, device)
    except Exception as err:  # noqa: BLE001 - truncation and corruption surface as many types
        return None, f"truncated or corrupt ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not isinstance(state, dict):
        return None, f"not an rltrain checkpoint (holds a {type(state).__name__})"
    return state, ""


def load_latest(directory: Path, device: torch.device | str = "cpu") -> tuple[dict, Path]:
    """The newest readable checkpoint of ``directory``: ``last.pt``, else ``previous.pt``.

    Falling back prints a warning naming the unreadable file, which is moved aside to
    ``last.pt.corrupt`` so that the next save does not keep it as ``previous.pt``. Raises
    :class:`CheckpointReadError` naming each file and its problem when neither can be read.
    """
    directory = Path(directory)
    last, previous = directory / LAST, directory / PREVIOUS
    state, last_problem = _read(last, device)
    if state is not None:
        return state, last
    state, previous_problem = _read(previous, device)
    if state is None:
        raise CheckpointReadError(f"cannot resume from {directory.parent}: {last} is {last_problem} and {previous} is "
                                  f"{previous_problem}. Start a new run, or pass resume=<an earlier run directory>")
    aside = ""
    if last.exists():
        try:
            os.replace(last, last.with_name(LAST + ".corrupt"))
            aside = f" (moved aside to {LAST}.corrupt)"
        except OSError:
            pass
    print(f"rltrain: warning: checkpoint {last} is {last_problem}{aside}; resuming from the previous checkpoint "
          f"{previous}", file=sys.stderr, flush=True)
    return state, previous


# ---- resume overrides ------------------------------------------------------------------------------

def reapply_optimizer_settings(optim_cfg, groups) -> None:
    """Give the optimizers restored from a checkpoint the config's ``lr``, ``betas``, ``eps`` and
    ``weight_decay`` (``optimizer.load_state_dict`` puts the saved ones back, which would silently undo
    ``resume=<dir> algo.optim.<group>.lr=...``).

    ``groups`` are the Trainer's optimizer groups (``name``, ``optimizer``, ``scheduler``). A group with
    a learning-rate schedule keeps its place in the schedule: the schedule's base rate becomes the new
    ``lr`` and the current rate is scaled by the same factor.
    """
    for group in groups:
        settings = optim_cfg[group.name]
        new_lr = float(settings.lr)
        for i, param_group in enumerate(group.optimizer.param_groups):
            if group.scheduler is None:
                param_group["lr"] = new_lr
            else:
                old_base = group.scheduler.base_lrs[i]
                param_group["lr"] = param_group["lr"] * new_lr / old_base if old_base else new_lr
                group.scheduler.base_lrs[i] = new_lr
                param_group["initial_lr"] = new_lr
            param_group["betas"] = tuple(float(b) for b in settings.betas)
            param_group["eps"] = float(settings.eps)
            param_group["weight_decay"] = float(settings.weight_decay)


# ---- random-number state ---------------------------------------------------------------------------

def rng_state() -> dict:
    """Global generator states of Python, NumPy and torch (CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
