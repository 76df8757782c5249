"""Offline data: one gradient update per advance, on the update clock."""

from __future__ import annotations

from tensordict import TensorDictBase

from rltrain.sources.base import EndsInterval


class DatasetSource:
    """A dataset sampler (transitions, action chunks or trajectory windows) on the update clock.

    Args:
        sampler: has ``sample(batch_size)``, ``__len__`` and state (e.g.
            :class:`~rltrain.data.minari_data.TransitionSampler`, :class:`~rltrain.data.chunks.ChunkSampler`,
            :class:`~rltrain.data.trajectory.TrajectoryBuffer`).
        batch_size: rows per :meth:`sample`.
        total_updates: the budget.
    """

    kind = "dataset"
    clock = "update"
    env_steps = 0

    def __init__(self, sampler, *, batch_size: int, total_updates: int):
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.total = int(total_updates)

    def position(self, updates: int) -> int:
        return updates

    def advance(self, updates: int, ends_interval: EndsInterval) -> int:
        return 1

    def sample(self) -> TensorDictBase:
        return self.sampler.sample(self.batch_size)

    def reset(self, seed: int) -> None:
        pass

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        return []

    def stored(self) -> int:
        return len(self.sampler)

    def log_fields(self, updates: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
