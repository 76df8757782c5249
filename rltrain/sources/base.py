"""The contract between the Trainer and a run's mode: a :class:`Source`.

A source owns everything that differs between modes: its clock (what the budget, ``eval_every``,
``checkpoint_every`` and ``log_every`` count), how far one :meth:`~Source.advance` moves it, its
collection, its batches (of its own batch size), episode restarts at checkpoints, finished-episode
reports and its share of a checkpoint. The Trainer asks, and knows nothing else about modes::

    while source.position(updates) < source.total:
        before = source.position(updates)
        owed = source.advance(updates, ends_interval)   # collect (if this source collects)
        for _ in range(owed):
            update(source.sample())
        periodic(before, source.position(updates))     # evaluate / log / checkpoint

``ends_interval(before, after)`` tells a collecting source whether the clock's move from ``before``
to ``after`` reaches a checkpoint (or the end of the budget); it then ends its training episodes as
*truncated* (they still bootstrap) and restarts its envs from a seed derived from the position, so
a resumed run continues exactly like one never interrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tensordict import TensorDictBase

EndsInterval = Callable[[int, int], bool]

# source kind -> the clock it counts (read by results tables and plots from a run's config.yaml)
CLOCKS = {"replay": "env_step", "dataset": "update", "rollout": "env_step", "finetune": "update",
          "offline_to_online": "step"}


def crossed(before: int, after: int, period: int) -> bool:
    """True if a multiple of ``period`` lies in ``(before, after]``."""
    return period > 0 and after // period > before // period


@runtime_checkable
class Source(Protocol):
    kind: str            # replay | dataset | rollout | finetune | offline_to_online
    clock: str           # env_step | update | step: the x-axis of logs and the unit of the budget
    total: int           # the budget, in clock units
    batch_size: int
    env_steps: int       # real environment transitions so far (0 for datasets)

    def position(self, updates: int) -> int:
        """The clock's value after ``updates`` gradient updates."""

    def advance(self, updates: int, ends_interval: EndsInterval) -> int:
        """Move the clock (collect, if this source collects); returns the updates owed now."""

    def sample(self) -> TensorDictBase:
        """One batch of ``batch_size`` rows."""

    def reset(self, seed: int) -> None:
        """Restart training episodes from ``seed`` (no-op for sources without envs)."""

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        """``(return, length)`` of the training episodes finished since the last call."""

    def stored(self) -> int:
        """Rows the source can sample from (logged as ``buffer_size``)."""

    def log_fields(self, updates: int) -> dict:
        """Extra columns of every eval/train row (e.g. the phase)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
