r"""A DDPM action denoiser (Ho et al. 2020) for diffusion behaviour cloning (Chi et al. 2023).

Actions live in normalized units ``x in [-1, 1]`` (:class:`ActionScaler` maps the env's box onto it).
With ``T = num_steps`` and ``t = 0 .. T-1``:

    betas       beta_t   = linspace(beta_start, beta_end, T)
    alphas      alpha_t  = 1 - beta_t
    alphas_cumprod  abar_t = prod_{s <= t} alpha_s

Forward (noising) process, used by the loss::

    x_t = sqrt(abar_t) * a + sqrt(1 - abar_t) * eps,      eps ~ N(0, I)

The denoiser ``eps_hat(x_t, s, t)`` is an MLP over ``cat[x_t, s, emb(t)]``, where ``emb`` is the
sinusoidal timestep embedding of the Transformer / DDPM papers.

Reverse (sampling) process: the full chain ``t = T-1 .. 0``, from ``x_T ~ N(0, I)``::

    x0_hat  = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t),  clipped to [-1, 1]
    mean_t  = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * x0_hat
              + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) * x_t          (abar_{-1} = 1)
    x_{t-1} = mean_t + sigma_t * z,    z ~ N(0, I),  no noise at t = 0
    sigma_t^2 = (1 - abar_{t-1}) / (1 - abar_t) * beta_t     (the posterior variance, "fixed small")

Without the clip, ``mean_t`` is exactly the spec's ``1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t)
eps_hat)``; clipping the estimate of the clean action (rather than ``x_t`` itself) keeps every
intermediate ``x_t`` distributed as in training while the result stays in ``[-1, 1]`` (what DDPM's
and Diffusion Policy's samplers do; ``clip_denoised=False`` turns it off). The final sample is
clamped to ``[-1, 1]`` either way. Deterministic sampling (``deterministic=True``, the spec's
DETERMINISTIC mode) starts from ``x_T = 0`` and adds no noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase
from tensordict.nn.probabilistic import interaction_type  # tensordict.nn re-exports it only from 0.15.2
from torch import nn

from rltrain.modules.mlp import MLP
from rltrain.modules.specs import Bounded

NestedKey = str | tuple[str, ...]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """``[*B] -> [*B, dim]``: ``cat[sin(t * f_k), cos(t * f_k)]`` with ``f_k = max_period^(-k / (dim/2))``."""
    if dim < 2 or dim % 2:
        raise ValueError(f"the timestep embedding size must be an even number >= 2, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32).unsqueeze(-1) * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class ActionScaler(nn.Module):
    """Affine map between a finite action box ``[low, high]`` and ``[-1, 1]`` (bounds as buffers)."""

    def __init__(self, spec: Bounded | None, action_dim: int):
        super().__init__()
        if spec is None:
            low, high = -torch.ones(action_dim), torch.ones(action_dim)
        else:
            low, high = spec.low.reshape(-1).float(), spec.high.reshape(-1).float()
        if low.numel() != action_dim:
            raise ValueError(f"the action spec has {low.numel()} dimensions but the network predicts {action_dim}")
        if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
            raise ValueError(f"actions must lie in a finite box with high > low, got low={low.tolist()} "
                             f"high={high.tolist()}; give a Bounded spec with finite bounds")
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        """Env units -> ``[-1, 1]``."""
        return 2.0 * (action - self.low) / (self.high - self.low) - 1.0

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> env units."""
        return self.low + (x + 1.0) * 0.5 * (self.high - self.low)


class DDPM(nn.Module):
    """The noise schedule, the denoiser ``eps_hat(x_t, s, t)`` and the reverse chain (module docstring).

    Args:
        action_dim, obs_dim: sizes of the action and observation vectors.
        num_steps: number of diffusion steps ``T``.
        beta_start, beta_end: the linear beta schedule's end points.
        num_cells, activation: hidden sizes and activation of the denoiser MLP.
        time_embed_dim: size of the sinusoidal timestep embedding.
        clip_denoised: clip the clean-action estimate to ``[-1, 1]`` at each reverse step.
    """

    def __init__(self, action_dim: int, obs_dim: int, *, num_steps: int = 100, beta_start: float = 1e-4,
                 beta_end: float = 0.02, num_cells: Sequence[int] = (256, 256), activation: str = "silu",
                 time_embed_dim: int = 16, clip_denoised: bool = True):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"the beta schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        sinusoidal_embedding(torch.zeros(1), time_embed_dim)  # validates the size
        self.action_dim, self.obs_dim = action_dim, obs_dim
        self.num_steps, self.time_embed_dim = num_steps, time_embed_dim
        self.clip_denoised = clip_denoised
        self.score_network = MLP(action_dim + obs_dim + time_embed_dim, action_dim, num_cells, activation)
        self._register_schedule(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    def _register_schedule(self, betas: torch.Tensor) -> None:
        """The schedule's buffers, computed in float64 and stored in float32."""
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        previous = torch.cat([torch.ones(1, dtype=betas.dtype), alphas_cumprod[:-1]])
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "posterior_variance": betas * (1.0 - previous) / (1.0 - alphas_cumprod),
            "posterior_coef_x0": betas * previous.sqrt() / (1.0 - alphas_cumprod),
            "posterior_coef_xt": alphas.sqrt() * (1.0 - previous) / (1.0 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float32))

    @staticmethod
    def _per_sample(schedule: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``schedule[t]`` with a trailing action dim, to broadcast against ``[*B, A]``."""
        return schedule[t].unsqueeze(-1)

    def add_noise(self, action: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps`` for normalized actions ``a [*B, A]``, ``t [*B]``."""
        abar = self._per_sample(self.alphas_cumprod, t)
        return abar.sqrt() * action + (1.0 - abar).sqrt() * eps

    def predict_noise(self, x_t: torch.Tensor, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps_hat(x_t, s, t)``: ``[*B, A]`` from ``x_t [*B, A]``, ``obs [*B, obs]``, ``t [*B]`` (int)."""
        return self.score_network(x_t, obs, sinusoidal_embedding(t, self.time_embed_dim))

    def reverse_step(self, x_t: torch.Tensor, obs: torch.Tensor, t: int,
                     noise: torch.Tensor | None) -> torch.Tensor:
        """``x_{t-1}`` from ``x_t``; ``noise`` is the ``z`` of the step (``None``: no noise)."""
        steps = torch.full(x_t.shape[:-1], t, dtype=torch.long, device=x_t.device)
        eps_hat = self.predict_noise(x_t, obs, steps)
        abar = self.alphas_cumprod[t]
        x0_hat = (x_t - (1.0 - abar).sqrt() * eps_hat) / abar.sqrt()
        if self.clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean = self.posterior_coef_x0[t] * x0_hat + self.posterior_coef_xt[t] * x_t
        if noise is None or t == 0:
            return mean
        return mean + self.posterior_variance[t].sqrt() * noise

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               deterministic: bool = False) -> torch.Tensor:
        """Normalized actions ``[*B, A]`` in ``[-1, 1]`` by the full reverse chain ``t = T-1 .. 0``."""
        shape = (*obs.shape[:-1], self.action_dim)
        if deterministic:
            x = obs.new_zeros(shape)
        else:
            x = torch.randn(shape, generator=generator, device=obs.device, dtype=obs.dtype)
        for t in reversed(range(self.num_steps)):
            noise = None if deterministic or t == 0 else torch.randn(
                shape, generator=generator, device=obs.device, dtype=obs.dtype)
            x = self.reverse_step(x, obs, t, noise)
        return x.clamp(-1.0, 1.0)


class DiffusionActor(TensorDictModuleBase):
    """A diffusion policy: reads ``"observation"``, writes ``"action"`` (in the spec's bounds).

    Args:
        module: the :class:`DDPM`.
        in_keys / out_keys: default ``["observation"]`` / ``["action"]``.
        spec: the action box (:class:`~rltrain.modules.Bounded`, finite bounds); ``None`` = ``[-1, 1]``.
        default_interaction_type: how :meth:`forward` acts outside ``set_interaction_type``:
            ``DETERMINISTIC`` (the chain from zeros, no noise) or ``RANDOM`` (a sample).

    :meth:`normalize_action` / :meth:`unnormalize_action` map between the env's box and the
    ``[-1, 1]`` units the DDPM works in (the loss noises normalized demonstration actions).
    """

    def __init__(self, module: DDPM, in_keys: Sequence[NestedKey] | None = None,
                 out_keys: Sequence[NestedKey] | None = None, *, spec: Bounded | None = None,
                 default_interaction_type: InteractionType = InteractionType.DETERMINISTIC):
        super().__init__()
        if not isinstance(module, DDPM):
            raise TypeError(f"DiffusionActor wraps a rltrain.modules.diffusion.DDPM, got {type(module).__name__}")
        self.module = module
        self.spec = spec
        self.scaler = ActionScaler(spec, module.action_dim)
        self.in_keys = list(in_keys) if in_keys is not None else ["observation"]
        self.out_keys = list(out_keys) if out_keys is not None else ["action"]
        if len(self.in_keys) != 1 or len(self.out_keys) != 1:
            raise ValueError(f"DiffusionActor reads one observation key and writes one action key, got "
                             f"in_keys={self.in_keys}, out_keys={self.out_keys}")
        self.default_interaction_type = default_interaction_type

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return self.scaler.normalize(action)

    def unnormalize_action(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaler.unnormalize(x)

    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions ``[*B, A]`` in the env's bounds by the full reverse chain."""
        return self.unnormalize_action(self.module.sample(obs, generator=generator, deterministic=deterministic))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mode = interaction_type() or self.default_interaction_type
        action = self.act(tensordict.get(self.in_keys[0]), deterministic=mode is not InteractionType.RANDOM)
        tensordict.set(self.out_keys[0], action)
        return tensordict
