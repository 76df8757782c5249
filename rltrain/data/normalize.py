"""Observation normalization and reward transforms for offline data.

Observations (the offline RL convention of TD3+BC, IQL, CQL, ...):

    obs' = (obs - mean) / std,     std = dataset std (population, ddof 0) + eps,  eps = 1e-3

with the statistics of the dataset's states s_t. The normalizer is a module with buffers, so it is
saved in checkpoints and the same transform is applied to evaluation observations; without
normalization, :meth:`ObservationNormalizer.identity` keeps the checkpoint layout the same.

Rewards, applied in place to ``OfflineData.rewards``; each kind is an affine map of the rewards:

    none           r' = r
    return_range   r' = r * 1000 / (max_k R_k - min_k R_k)   (IQL locomotion; R_k = undiscounted
                                                             return of episode k, raw rewards)
    antmaze        r' = r - 1                                (IQL/TD3+BC AntMaze: 0 on success, -1 else)

followed by ``r' <- r' * scale + shift`` (e.g. CQL's AntMaze ``r * 10 - 5`` is kind "none",
scale 10, shift -5).
"""

from __future__ import annotations

import torch
from torch import nn

from rltrain.data.minari_data import OfflineData
from rltrain.errors import ConfigError

REWARD_TRANSFORMS = ("none", "return_range", "antmaze")


class ObservationNormalizer(nn.Module):
    """``(obs - mean) / std`` with ``mean`` and ``std`` as buffers (saved in the state_dict).

    Args:
        mean: per-feature mean ``[obs]``.
        std: per-feature scale ``[obs]`` (already including eps), strictly positive.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean and std must be 1-D of equal shape, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (std > 0).all():
            raise ValueError("std must be strictly positive")
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("std", std.detach().to(torch.float32).clone())

    @classmethod
    def from_observations(cls, observations: torch.Tensor, eps: float = 1e-3) -> ObservationNormalizer:
        """Statistics of ``observations [n, obs]``: mean and population std + ``eps``."""
        # CPU reductions of float32 accumulate in double, so no float64 copy is needed.
        std, mean = torch.std_mean(observations, dim=0, correction=0)
        return cls(mean, std + eps)

    @classmethod
    def from_data(cls, data: OfflineData, eps: float = 1e-3) -> ObservationNormalizer:
        """Statistics of the dataset's states s_t (each observation that starts a transition)."""
        return cls.from_observations(data.observations.index_select(0, data.obs_index), eps)

    @classmethod
    def identity(cls, dim: int) -> ObservationNormalizer:
        """Mean 0, std 1: no normalization, same checkpoint layout."""
        return cls(torch.zeros(dim), torch.ones(dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class RunningObservationNormalizer(ObservationNormalizer):
    """Online observation normalization (``env.normalize_observations``, SB3's VecNormalize and
    CleanRL's ``NormalizeObservation``): running mean and variance of every observation the
    training envs return, ``clip((obs - mean) / sqrt(var + eps), -clip, clip)``.

    The collector updates the statistics with each step's observations, then normalizes them; the
    evaluation policy and loaded agents apply the current statistics without updating them. The
    statistics (``mean``, ``std``, ``var``, ``count``) are buffers, so checkpoints and policy
    snapshots keep them.
    """

    def __init__(self, dim: int, eps: float = 1e-8, clip: float = 10.0):
        super().__init__(torch.zeros(dim), torch.ones(dim))
        self.eps, self.clip = float(eps), float(clip)
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))  # as gymnasium's RunningMeanStd

    @torch.no_grad()
    def update(self, observations: torch.Tensor) -> None:
        """Merge the statistics of ``observations [n, obs]`` (Chan et al.'s parallel update)."""
        batch = observations.to(torch.float64).reshape(-1, self.mean.shape[0])
        n = batch.shape[0]
        if n == 0:
            return
        batch_var, batch_mean = torch.var_mean(batch, dim=0, correction=0)
        mean = self.mean.to(torch.float64)
        total = self.count + n
        delta = batch_mean - mean
        new_mean = mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)
        self.mean.copy_(new_mean.to(torch.float32))
        self.std.copy_((self.var + self.eps).sqrt().to(torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs).clamp(-self.clip, self.clip)


def normalizer_from_state(state: dict) -> ObservationNormalizer:
    """The normalizer a checkpoint or snapshot holds: running statistics (they carry a ``count``)
    or fixed dataset statistics."""
    dim = state["mean"].shape[0]
    normalizer = RunningObservationNormalizer(dim) if "count" in state else ObservationNormalizer.identity(dim)
    normalizer.load_state_dict(state)
    return normalizer


@torch.no_grad()
def normalize_in_place(data: OfflineData, normalizer: ObservationNormalizer) -> OfflineData:
    """Normalize ``data.observations`` in place (no second copy). Apply it once only."""
    observations = data.observations
    observations.sub_(normalizer.mean.to(observations.device)).div_(normalizer.std.to(observations.device))
    return data


def _kind_affine(data: OfflineData, kind: str) -> tuple[float, float, dict]:
    """(multiplier, offset, details) of a reward-transform kind."""
    if kind == "none":
        return 1.0, 0.0, {}
    if kind == "antmaze":
        return 1.0, -1.0, {}
    if kind == "return_range":
        returns = data.episode_returns
        return_range = float(returns.max() - returns.min())
        if not return_range > 0:
            raise ConfigError(f"reward transform 'return_range' on {data.dataset_id!r} needs episodes with "
                              f"different returns; max - min = {return_range}")
        return 1000.0 / return_range, 0.0, {"return_range": return_range}
    raise ConfigError(f"unknown reward transform {kind!r}; accepted: {', '.join(REWARD_TRANSFORMS)}")


@torch.no_grad()
def apply_reward_transform(data: OfflineData, kind: str, scale: float = 1.0, shift: float = 0.0) -> dict:
    """Transform ``data.rewards`` in place: the ``kind`` (module docstring), then ``* scale + shift``.

    Returns:
        What was applied, for logs: ``kind``, ``scale``, ``shift``, the overall
        ``multiplier`` and ``offset`` (``r' = multiplier * r + offset``) and, for "return_range",
        the ``return_range`` used.
    """
    kind_multiplier, kind_offset, details = _kind_affine(data, kind)
    multiplier = kind_multiplier * scale
    offset = kind_offset * scale + shift
    data.rewards.mul_(multiplier).add_(offset)
    return {"kind": kind, "scale": scale, "shift": shift, "multiplier": multiplier, "offset": offset, **details}
