"""``torch_threads``: how many threads torch's CPU kernels use.

``auto`` (the default) is half the cores this process may run on, at most 4 and at least 1; an
integer is that many; ``null`` is torch's own default (every core).

Why not every core: torch's intra-op threads wait for each other at the end of every kernel, so a
thread that loses its core to another process stalls the whole update. rltrain's small networks
(MLPs of 64 to 256 units, batches of 256) gain little from more threads and lose a lot under
contention; benchmarks/threads.py measured SAC updates on a 2-core machine shared with other jobs
(README, "CPU threads"): one thread 29 updates/s (256x256) and 107/s (64x64), both cores 4/s and
3/s; with one more process spinning a core, one thread 14/s and 45/s, both cores 1.4/s and 0.7/s.

A warning names the risk when the threads asked for exceed the cores left free by the machine's
recent load (its 1-minute load average).
"""

from __future__ import annotations

import os
import warnings

import torch

from rltrain.errors import ConfigError

MAX_AUTO_THREADS = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_threads(cores: int) -> int:
    return max(1, min(MAX_AUTO_THREADS, cores // 2))


def resolve_threads(setting) -> int | None:
    """The thread count of ``torch_threads=setting`` (``None``: leave torch's default)."""
    if setting is None:
        return None
    if setting == "auto":
        return auto_threads(usable_cores())
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"torch_threads={setting!r}: accepted values are auto (half the cores, at most "
                          f"{MAX_AUTO_THREADS}), a number of threads >= 1, or null (torch's default: every core)")
    return setting


def oversubscription(threads: int, cores: int, load: float) -> str | None:
    """The warning for ``threads`` threads when the machine's load average is ``load`` on ``cores``."""
    if threads <= 1 or load + threads <= cores + 0.5:
        return None
    return (f"torch uses {threads} threads but this machine is busy (load average {load:.1f} on {cores} cores): "
            "torch's threads wait for each other, and an update can become 10-30x slower than with one thread. "
            "Set torch_threads=1 (or fewer threads than free cores).")


def configure_torch_threads(setting) -> int:
    """Apply ``torch_threads=setting``; warn when the machine looks oversubscribed. Returns the count."""
    threads = resolve_threads(setting)
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return threads
    message = oversubscription(threads, usable_cores(), load)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return threads
