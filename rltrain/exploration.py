"""Exploration for deterministic and Q-value policies during collection.

Each strategy wraps the policy's greedy action: ``explore(action, env_step) -> action``, and
``reset(mask)`` is called for the envs that start a new episode.

* :class:`GaussianNoise`: ``a = clip(mu(s) + sigma * h * N(0, I), low, high)``
* :class:`OrnsteinUhlenbeckNoise`: ``x <- x + theta * (-x) * dt + sigma * sqrt(dt) * N(0, I)``,
  ``a = clip(mu(s) + h * x, low, high)``, with ``x = 0`` at the start of each episode
* :class:`EpsilonGreedy`: with probability ``eps(t)`` a uniformly random action, where ``eps``
  decays linearly from ``eps_init`` to ``eps_end`` over ``annealing_steps`` env steps.

Noise scales are in units of the action half-range ``h = (high - low) / 2`` (the same convention
as TD3's target noise), so one setting means the same on every task. Random draws come from torch's
global generator, which checkpoints save: a resumed run explores exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rltrain.errors import ConfigError
from rltrain.modules.specs import Bounded


class GaussianNoise:
    """Independent Gaussian action noise, optionally annealed linearly from ``sigma`` to ``sigma_end``."""

    def __init__(self, action_spec: Bounded, sigma: float = 0.1, sigma_end: float | None = None,
                 annealing_steps: int = 0):
        self.low, self.high = action_spec.low, action_spec.high
        self.half_range = (self.high - self.low) / 2
        self.sigma, self.sigma_end, self.annealing_steps = sigma, sigma_end, annealing_steps

    def scale(self, env_step: int) -> float:
        if self.sigma_end is None or self.annealing_steps <= 0:
            return self.sigma
        fraction = min(env_step / self.annealing_steps, 1.0)
        return self.sigma + fraction * (self.sigma_end - self.sigma)

    def explore(self, action: torch.Tensor, env_step: int) -> torch.Tensor:
        noise = torch.randn_like(action) * self.scale(env_step) * self.half_range.to(action.device)
        return torch.clamp(action + noise, self.low.to(action.device), self.high.to(action.device))

    def reset(self, mask: np.ndarray) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OrnsteinUhlenbeckNoise:
    """Temporally correlated noise (Uhlenbeck & Ornstein 1930), one process per env, mean zero."""

    def __init__(self, action_spec: Bounded, num_envs: int, theta: float = 0.15, sigma: float = 0.2,
                 dt: float = 1e-2):
        self.low, self.high = action_spec.low, action_spec.high
        self.half_range = (self.high - self.low) / 2
        self.theta, self.sigma, self.dt = theta, sigma, dt
        self.state = torch.zeros(num_envs, *action_spec.shape)

    def explore(self, action: torch.Tensor, env_step: int) -> torch.Tensor:
        drift = -self.theta * self.state * self.dt
        self.state += drift + self.sigma * math.sqrt(self.dt) * torch.randn_like(self.state)
        noisy = action + (self.state * self.half_range).to(action.device)
        return torch.clamp(noisy, self.low.to(action.device), self.high.to(action.device))

    def reset(self, mask: np.ndarray) -> None:
        self.state[torch.as_tensor(mask)] = 0.0

    def state_dict(self) -> dict:
        """The processes' current values (a run stopped mid-episode resumes them)."""
        return {"state": self.state.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.state.copy_(state["state"])


class EpsilonGreedy:
    """Replace the greedy action by a uniformly random one with a linearly decaying probability."""

    def __init__(self, num_actions: int, eps_init: float = 1.0, eps_end: float = 0.05,
                 annealing_steps: int = 10_000):
        if not 0.0 <= eps_end <= 1.0 or not 0.0 <= eps_init <= 1.0:
            raise ConfigError(f"epsilon-greedy needs 0 <= eps <= 1, got eps_init={eps_init}, eps_end={eps_end}")
        self.num_actions = num_actions
        self.eps_init, self.eps_end, self.annealing_steps = eps_init, eps_end, annealing_steps

    def epsilon(self, env_step: int) -> float:
        if self.annealing_steps <= 0:
            return self.eps_end
        fraction = min(env_step / self.annealing_steps, 1.0)
        return self.eps_init + fraction * (self.eps_end - self.eps_init)

    def explore(self, action: torch.Tensor, env_step: int) -> torch.Tensor:
        random_action = torch.randint_like(action, self.num_actions)
        take_random = torch.rand(action.shape, device=action.device) < self.epsilon(env_step)
        return torch.where(take_random, random_action, action)

    def reset(self, mask: np.ndarray) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


EXPLORATION = {"gaussian": GaussianNoise, "ou": OrnsteinUhlenbeckNoise, "egreedy": EpsilonGreedy}
