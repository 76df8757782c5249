r"""Value estimators: the bootstrapped return an objective regresses on, over trajectory batches.

Notation (every tensor shaped alike, with a time dimension ``t = 0 .. T-1``): reward ``r_t``, the
value of the next state ``v_t = V(s_{t+1})`` (whatever the objective bootstraps from: a target
critic, ``min_k Q``, a soft value), ``term_t`` (the episode ended in a terminal state: no bootstrap),
``done_t`` (the episode ended, terminated or truncated: the next row starts another episode),
discount ``g`` (``gamma``, or ``gamma^n`` per row for n-step data). ``v_t`` is masked with
``where`` wherever ``term_t``, so a non-finite value there (a NaN observation after the end) does
not leak.

**TD(0)**: one step::

    G_t = r_t + g * (1 - term_t) * v_t

**TD(lambda)** (``lmbda`` in [0, 1]), backwards from the last row, which bootstraps from ``v_{T-1}``::

    G_t = r_t + g * (1 - term_t) * ( (1 - lambda) * v_t + lambda * N_t )
    N_t = v_t             if done_t or t = T-1      (the episode, or the batch, ends here)
          G_{t+1}          otherwise

A terminated row is ``r_t`` whatever lambda; a truncated row bootstraps from ``v_t`` (its true
next state), never from the next episode. ``lambda = 0`` is TD(0).

**TD(1)**: TD(lambda) with ``lambda = 1``: the discounted sum of the rewards to the end of the
episode (or of the batch), bootstrapped from the value of the state where it stops.

**GAE** (Schulman et al. 2016), given also ``V(s_t)``::

    delta_t = r_t + g * (1 - term_t) * v_t - V(s_t)
    A_t     = delta_t + g * lambda * (1 - done_t) * A_{t+1},   A_T = 0
    value_target_t = A_t + V(s_t)

These match the reference's TD0/TD1/TDLambda/GAE estimators (its ``value/functional.py``).
"""

from __future__ import annotations

import enum

import torch


class ValueEstimators(enum.Enum):
    """The value estimators an objective can be given with ``make_value_estimator``."""

    TD0 = "td0"
    TD1 = "td1"
    TDLambda = "td_lambda"
    GAE = "gae"


_ALIASES = {"td0": "td0", "td1": "td1", "td_lambda": "td_lambda", "tdlambda": "td_lambda", "gae": "gae"}


def parse_value_estimator(value_type: ValueEstimators | str, owner: str,
                          supported: tuple[ValueEstimators, ...]) -> ValueEstimators:
    """A :class:`ValueEstimators` member from the enum or its name (``"td0"``, ``"td_lambda"``, ...)."""
    if isinstance(value_type, ValueEstimators):
        estimator = value_type
    else:
        name = _ALIASES.get(str(getattr(value_type, "value", value_type)).lower())
        estimator = ValueEstimators(name) if name else None
    if estimator not in supported:
        raise ValueError(f"{owner} supports the value estimators {[v.value for v in supported]}, got {value_type!r}")
    return estimator


def _masked_next_value(terminated: torch.Tensor, next_value: torch.Tensor) -> torch.Tensor:
    return torch.where(terminated.bool(), torch.zeros_like(next_value), next_value)


def td0_return(reward: torch.Tensor, terminated: torch.Tensor, next_value: torch.Tensor,
               gamma: float | torch.Tensor) -> torch.Tensor:
    """``r + g * (1 - terminated) * v`` (module docstring); any shape."""
    return torch.where(terminated.bool(), reward, reward + gamma * next_value)


def td_lambda_return(reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor, next_value: torch.Tensor,
                     gamma: float | torch.Tensor, lmbda: float, time_dim: int = -1) -> torch.Tensor:
    """TD(lambda) returns along ``time_dim`` (module docstring); all inputs share one shape (``gamma``
    may also be a number)."""
    gamma = torch.as_tensor(gamma, dtype=reward.dtype, device=reward.device).expand_as(reward)
    reward, done, terminated, next_value, gamma = (
        x.movedim(time_dim, 0) for x in (reward, done, terminated, next_value, gamma))
    value = _masked_next_value(terminated, next_value)
    done = done.bool() | terminated.bool()
    returns = torch.empty_like(reward)
    following = value[-1]
    for t in range(reward.shape[0] - 1, -1, -1):
        tail = torch.where(done[t], value[t], following)
        returns[t] = reward[t] + gamma[t] * ((1.0 - lmbda) * value[t] + lmbda * tail)
        following = returns[t]
    return returns.movedim(0, time_dim)


def td1_return(reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor, next_value: torch.Tensor,
               gamma: float | torch.Tensor, time_dim: int = -1) -> torch.Tensor:
    """TD(1) returns: TD(lambda) with lambda = 1."""
    return td_lambda_return(reward, done, terminated, next_value, gamma, 1.0, time_dim)


def generalized_advantage_estimate(gamma: float | torch.Tensor, lmbda: float | torch.Tensor,
                                   state_value: torch.Tensor, next_state_value: torch.Tensor, reward: torch.Tensor,
                                   done: torch.Tensor, terminated: torch.Tensor,
                                   time_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE along ``time_dim`` (default 0: time-major rollouts ``[T, *B, 1]``); returns
    ``(advantage, value_target)``."""
    shapes = {t.shape for t in (state_value, next_state_value, reward, done, terminated)}
    if len(shapes) != 1:
        raise ValueError("generalized_advantage_estimate: state_value, next_state_value, reward, done and terminated "
                         f"must share one shape [T, *B, 1]; got {sorted(tuple(s) for s in shapes)}")
    state_value, next_state_value, reward, done, terminated = (
        x.movedim(time_dim, 0) for x in (state_value, next_state_value, reward, done, terminated))
    done = done.bool()
    delta = reward + gamma * _masked_next_value(terminated, next_state_value) - state_value
    advantage = torch.empty_like(delta)
    running = torch.zeros_like(delta[0])
    for t in range(delta.shape[0] - 1, -1, -1):
        running = delta[t] + torch.where(done[t], torch.zeros_like(running), gamma * lmbda * running)
        advantage[t] = running
    return advantage.movedim(0, time_dim), (advantage + state_value).movedim(0, time_dim)
