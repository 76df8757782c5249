"""Online off-policy data: a collector fills a replay buffer; updates are owed per env step.

One :meth:`ReplaySource.advance` steps every env once. The clock counts *real* transitions: with
gymnasium's next-step autoreset, the call after an episode ends only resets that env and yields no
transition, so it does not count (CleanRL and SB3 count the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tensordict import TensorDictBase

from rltrain.collect import Collector
from rltrain.envs import derive_seed
from rltrain.sources.base import EndsInterval, crossed

RESTART_SEEDS = 1  # derive_seed(seed, env_step, RESTART_SEEDS): training envs restarted at checkpoints


@dataclass
class ReplaySchedule:
    """The owed-update arithmetic: ``updates_per_step`` updates per env step, run in bursts every
    ``train_every`` env steps, once more than ``learning_starts`` env steps were collected and the
    buffer holds ``min_rows`` rows. Fractional UTD ratios carry their remainder over."""

    updates_per_step: float = 1.0
    train_every: int = 1
    learning_starts: int = 0
    min_rows: int = 1
    owed: float = 0.0

    def __post_init__(self):
        if not self.updates_per_step > 0:
            raise ValueError(f"updates_per_step must be > 0, got {self.updates_per_step}")
        if self.train_every < 1:
            raise ValueError(f"train_every must be >= 1, got {self.train_every}")

    def updates_due(self, before: int, after: int, stored: int) -> int:
        """Updates to run now that the env-step clock moved from ``before`` to ``after``."""
        if after <= self.learning_starts or stored < self.min_rows:
            return 0
        self.owed += self.updates_per_step * (after - before)
        if not crossed(before, after, self.train_every):
            return 0
        due = int(self.owed)
        self.owed -= due
        return due


class Preprocess(Protocol):
    """What a replay source applies to each step's transitions before storing them; it may hold some
    back (whole episodes) and is told when the envs restart."""

    def __call__(self, transitions: TensorDictBase) -> TensorDictBase: ...

    def reset(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def truncate_all(transitions: TensorDictBase) -> TensorDictBase:
    """Mark every transition as the end of its episode by truncation (it still bootstraps)."""
    next_td = transitions.get("next")
    next_td.set("truncated", torch.ones_like(next_td.get("truncated")))
    next_td.set("done", next_td.get("terminated") | next_td.get("truncated"))
    return transitions


class ReplaySource:
    """Collector + replay buffer, on the env-step clock.

    Args:
        collector: steps the training envs with the behaviour policy.
        buffer: the replay buffer (``extend``, ``sample(batch_size)``, ``__len__``, state).
        schedule: when updates are owed.
        batch_size: rows per :meth:`sample`.
        total_env_steps: the budget.
        warmup_steps: uniform random actions before this many env steps.
        seed: the run seed (training envs restart from seeds derived from it).
        preprocess: applied to each step's transitions before they are stored (e.g. observation
            normalization and reward transforms of an offline phase).
    """

    kind = "replay"
    clock = "env_step"

    def __init__(self, collector: Collector, buffer, schedule: ReplaySchedule, *, batch_size: int,
                 total_env_steps: int, warmup_steps: int = 0, seed: int = 0,
                 preprocess: Preprocess | None = None):
        self.collector = collector
        self.buffer = buffer
        self.schedule = schedule
        self.batch_size = int(batch_size)
        self.total = int(total_env_steps)
        self.warmup_steps = int(warmup_steps)
        self.seed = seed
        self.preprocess = preprocess
        self.env_steps = 0

    def position(self, updates: int) -> int:
        return self.env_steps

    def collect(self, ends_interval: EndsInterval) -> tuple[int, int]:
        """One step of every env into the buffer; returns the env-step clock ``(before, after)``."""
        before = self.env_steps
        transitions = self.collector.step(random=before < self.warmup_steps, env_step=before)
        after = before + len(transitions)
        restart = ends_interval(before, after)
        if restart:
            truncate_all(transitions)
        if self.preprocess is not None:
            transitions = self.preprocess(transitions)
        self.buffer.extend(transitions)
        self.env_steps = after
        if restart:
            self.reset(derive_seed(self.seed, after, RESTART_SEEDS))
        return before, after

    def advance(self, updates: int, ends_interval: EndsInterval) -> int:
        before, after = self.collect(ends_interval)
        return self.schedule.updates_due(before, after, len(self.buffer))

    def sample(self) -> TensorDictBase:
        return self.buffer.sample(self.batch_size)

    def reset(self, seed: int) -> None:
        self.collector.reset(seed)
        if self.preprocess is not None:
            self.preprocess.reset()

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        return self.collector.pop_finished_episodes()

    def stored(self) -> int:
        return len(self.buffer)

    def log_fields(self, updates: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "env_steps": self.env_steps, "owed": self.schedule.owed,
                "collector": self.collector.state_dict(),
                "preprocess": None if self.preprocess is None else self.preprocess.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.env_steps, self.schedule.owed = int(state["env_steps"]), float(state["owed"])
        restart_seed = derive_seed(self.seed, self.env_steps, RESTART_SEEDS)
        if "collector" not in state:  # written before collectors saved their episodes in flight
            self.collector.rng.bit_generator.state = state["collector_rng"]
            self.reset(self.seed if self.env_steps == 0 else restart_seed)
            return
        if self.preprocess is not None:
            self.preprocess.reset()
        resumed = self.collector.load_state_dict(state["collector"], fallback_seed=restart_seed)
        if resumed and self.preprocess is not None:
            self.preprocess.load_state_dict(state["preprocess"])
