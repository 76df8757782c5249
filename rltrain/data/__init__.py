"""Data: the replay buffer (online) and, later, datasets (offline)."""

from rltrain.data.replay import ReplayBuffer

__all__ = ["ReplayBuffer"]
