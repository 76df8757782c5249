"""Monte-Carlo returns of recorded episodes (Cal-QL's lower bound on policy-action Q-values).

For an episode with (transformed) rewards ``r_0 .. r_{T-1}``::

    G_t = r_t + gamma * G_{t+1},   G_T = 0

The episode's end bootstraps nothing, whether it terminated or was cut by a time limit: the return
of a truncated episode is the discounted sum of the rewards it recorded (as Cal-QL's code does).
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, episode_starts: torch.Tensor, episode_lengths: torch.Tensor,
                       gamma: float) -> torch.Tensor:
    """``G_t`` ``[N]`` (float32) for the episodes laid back to back in ``rewards`` ``[N]``; computed
    in float64, one vectorized step per time index of the longest episode."""
    lengths = episode_lengths.long()
    num_episodes, longest = lengths.numel(), int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(longest)
    inside = steps.unsqueeze(0) < lengths.unsqueeze(1)                      # [E, L]
    rows = (episode_starts.long().unsqueeze(1) + steps.unsqueeze(0))[inside]  # the rows, episode by episode
    padded = torch.zeros(num_episodes, longest, dtype=torch.float64)
    padded[inside] = rewards.double()[rows]
    returns = torch.zeros(num_episodes, longest + 1, dtype=torch.float64)
    for t in range(longest - 1, -1, -1):
        returns[:, t] = padded[:, t] + gamma * returns[:, t + 1]
    out = torch.empty(rewards.shape[0], dtype=torch.float32)
    out[rows] = returns[:, :longest][inside].float()
    return out


def episode_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t`` of one whole episode's rewards ``[T]``."""
    return discounted_returns(rewards, torch.zeros(1, dtype=torch.long), torch.tensor([rewards.shape[0]]), gamma)
