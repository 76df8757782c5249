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
        scale_mapping: ``"biased_softplus_<b>"`` (softplus shifted so that a zero input gives
            scale ``b``; the default is ``b = 1``), ``"softplus"``, ``"exp"``, or
            ``"clamped_exp_<min>_<max>"`` (log-std clamped to ``[min, max]``, then exp).
        scale_lb: lower bound applied to the scale.
    """

    def __init__(self, scale_mapping: str = "biased_softplus_1.0", scale_lb: float = 1e-4):
        super().__init__()
        self.scale_mapping = scale_mapping
        self.scale_lb = scale_lb
        self._bias = 0.0
        self._log_std_range: tuple[float, float] | None = None
        if scale_mapping.startswith("biased_softplus_"):
            self._bias = _inverse_softplus(float(scale_mapping.rsplit("_", 1)[1]))
        elif scale_mapping.startswith("clamped_exp_"):
            low, high = scale_mapping[len("clamped_exp_"):].split("_")
            self._log_std_range = (float(low), float(high))
        elif scale_mapping not in ("softplus", "exp"):
            raise ValueError(
                f"unknown scale_mapping {scale_mapping!r}; accepted: 'biased_softplus_<b>', 'softplus', "
                "'exp', 'clamped_exp_<min>_<max>'"
            )

    def forward(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = params.chunk(2, dim=-1)
        if self._log_std_range is not None:
            scale = raw.clamp(*self._log_std_range).exp()
        elif self.scale_mapping == "exp":
            scale = raw.exp()
        else:
            scale = F.softplus(raw + self._bias)
        return loc, scale.clamp_min(self.scale_lb)
