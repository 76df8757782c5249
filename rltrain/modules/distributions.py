"""Action distributions and the layer that turns network outputs into their parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class TanhNormal(D.Distribution):
    """A diagonal Gaussian squashed by tanh and affinely mapped onto ``[low, high]``.

    With ``u = loc + scale * eps`` and ``a = mid + half_range * tanh(u)``::

        log pi(a) = sum_i [ log N(u_i; loc_i, scale_i) - log(1 - tanh(u_i)^2) - log half_range_i ]

    with the stable form ``log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))``.
    :meth:`rsample_and_log_prob` computes the log-probability from the pre-tanh sample ``u``, so a
    sample is never re-scored through ``atanh`` (which loses precision where ``|a| -> 1``).
    :meth:`log_prob` of a given action (e.g. a dataset action) clamps before ``atanh``.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, low=-1.0, high=1.0, eps: float = 1e-6):
        self.loc, self.scale = loc, scale
        low = torch.as_tensor(low, dtype=loc.dtype, device=loc.device)
        high = torch.as_tensor(high, dtype=loc.dtype, device=loc.device)
        self.mid = (high + low) / 2
        self.half_range = (high - low) / 2
        self._eps = eps
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def _squash(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        return self.mid + self.half_range * torch.tanh(pre_tanh)

    def _log_prob_pre_tanh(self, pre_tanh: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        gaussian = -0.5 * noise.pow(2) - self.scale.log() - _HALF_LOG_2PI
        log_det_tanh = 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return (gaussian - log_det_tanh - self.half_range.log()).sum(-1)

    def rsample_and_log_prob(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-probability, computed from the pre-tanh sample."""
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        pre_tanh = self.loc + self.scale * noise
        return self._squash(pre_tanh), self._log_prob_pre_tanh(pre_tanh, noise)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self._squash(self.loc + self.scale * noise)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        squashed = ((value - self.mid) / self.half_range).clamp(-1 + self._eps, 1 - self._eps)
        pre_tanh = torch.atanh(squashed)
        return self._log_prob_pre_tanh(pre_tanh, (pre_tanh - self.loc) / self.scale)

    @property
    def mode(self) -> torch.Tensor:
        return self._squash(self.loc)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mode


class ScaledTanh(nn.Module):
    """``low + (high - low) * (tanh(x) + 1) / 2``: a deterministic actor's output on the action bounds."""

    def __init__(self, low, high):
        super().__init__()
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        self.register_buffer("mid", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.mid, self.half_range, torch.tanh(x))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class NormalParamExtractor(nn.Module):
    """Split the last dim in two halves: ``loc`` and a positive ``scale``.

    Args:
        scale_mapping: how the second half ``x`` becomes the scale:

            * ``"biased_softplus_<b>"`` (default ``b = 1``) and ``"biased_softplus_<b>_<m>"``:
              ``softplus(x + inv_softplus(b - m)) + m``, so a zero input gives scale ``b`` and the
              scale never falls below ``m`` (default ``m = 0.01``, the reference's floor);
            * ``"softplus"``: ``softplus(x)``; ``"exp"``: ``exp(x)``;
            * ``"clamped_exp_<min>_<max>"``: the log-std clamped to ``[min, max]``, then exp.
        scale_lb: lower bound applied to the scale afterwards (default 1e-4).
    """

    def __init__(self, scale_mapping: str = "biased_softplus_1.0", scale_lb: float = 1e-4):
        super().__init__()
        self.scale_mapping = scale_mapping
        self.scale_lb = scale_lb
        self._bias = 0.0
        self._floor = 0.0
        self._log_std_range: tuple[float, float] | None = None
        if scale_mapping.startswith("biased_softplus_"):
            self._bias, self._floor = _biased_softplus_parameters(scale_mapping)
        elif scale_mapping.startswith("clamped_exp_"):
            low, high = scale_mapping[len("clamped_exp_"):].split("_")
            self._log_std_range = (float(low), float(high))
        elif scale_mapping not in ("softplus", "exp"):
            raise ValueError(
                f"unknown scale_mapping {scale_mapping!r}; accepted: 'biased_softplus_<b>', "
                "'biased_softplus_<b>_<min>', 'softplus', 'exp', 'clamped_exp_<min>_<max>'"
            )

    def forward(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = params.chunk(2, dim=-1)
        if self._log_std_range is not None:
            scale = raw.clamp(*self._log_std_range).exp()
        elif self.scale_mapping == "exp":
            scale = raw.exp()
        else:
            scale = F.softplus(raw + self._bias) + self._floor
        return loc, scale.clamp_min(self.scale_lb)


DEFAULT_SCALE_FLOOR = 0.01


def _biased_softplus_parameters(scale_mapping: str) -> tuple[float, float]:
    """``(inv_softplus(b - m), m)`` of ``"biased_softplus_<b>"`` / ``"biased_softplus_<b>_<m>"``."""
    parts = scale_mapping[len("biased_softplus_"):].split("_")
    try:
        bias = float(parts[0])
        floor = float(parts[1]) if len(parts) == 2 else DEFAULT_SCALE_FLOOR
    except (ValueError, IndexError):
        parts = []
    if len(parts) not in (1, 2) or not bias > floor >= 0:
        raise ValueError(f"scale_mapping {scale_mapping!r}: expected 'biased_softplus_<b>' or "
                         "'biased_softplus_<b>_<min>' with b > min >= 0 (numbers)")
    return _inverse_softplus(bias - floor), floor
