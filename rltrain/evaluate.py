"""Deterministic evaluation: N episodes of the policy's mode on a separate eval env.

A policy is ``policy(obs) -> action``. A policy with a memory (a Decision Transformer's context, ACT's
temporal ensemble) also has ``reset(num_envs)``, called after every reset of the envs, and
``record(reward)``, called with the rewards of every step.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from rltrain.collect import observation_tensor


@torch.no_grad()
def evaluate(envs: gym.vector.VectorEnv, policy: Callable[[torch.Tensor], torch.Tensor],
             num_episodes: int, seed: int, device: torch.device) -> dict[str, float]:
    """Run ``num_episodes`` episodes, ``envs.num_envs`` at a time, each reset with its own seed.

    Returns mean/std/min/max of episode returns and the mean length. Seeds are ``seed + i`` for
    episode ``i``, so an evaluation is reproducible without saving the eval env's state.
    """
    returns: list[float] = []
    lengths: list[int] = []
    n = envs.num_envs
    for start in range(0, num_episodes, n):
        count = min(n, num_episodes - start)
        obs, _ = envs.reset(seed=[seed + start + i for i in range(n)])
        if hasattr(policy, "reset"):
            policy.reset(n)
        episode_return, episode_length = np.zeros(n), np.zeros(n, dtype=np.int64)
        running = np.arange(n) < count
        while running.any():
            action = policy(observation_tensor(obs, device)).cpu().numpy()
            obs, reward, terminated, truncated, _ = envs.step(action)
            if hasattr(policy, "record"):
                policy.record(torch.as_tensor(reward, dtype=torch.float32, device=device))
            episode_return += np.where(running, reward, 0.0)
            episode_length += running
            running &= ~(terminated | truncated)
        returns += episode_return[:count].tolist()
        lengths += episode_length[:count].tolist()
    values = np.asarray(returns)
    return {"return_mean": float(values.mean()), "return_std": float(values.std()),
            "return_min": float(values.min()), "return_max": float(values.max()),
            "length_mean": float(np.mean(lengths)), "episodes": len(returns)}
