r"""Batch Renormalization (Ioffe 2017) and the stacked CrossQ critic built on it.

For a batch of activations ``x`` (statistics per feature, over the batch rows), with running
statistics ``mu`` and ``sigma = sqrt(running_var + eps)``::

    mu_B = mean(x),  sigma_B = sqrt(var(x) + eps)              (biased variance, as BatchNorm)
    r = sg(clip(sigma_B / sigma, 1 / r_max, r_max))
    d = sg(clip((mu_B - mu) / sigma, -d_max, d_max))
    y = weight * ((x - mu_B) / sigma_B * r + d) + bias

``r`` and ``d`` are constants for the gradient, which flows through ``mu_B`` and ``sigma_B`` exactly
as in BatchNorm. During the first ``warmup_steps`` training forwards ``r = 1`` and ``d = 0``, so
the layer *is* BatchNorm (train mode) while the running statistics settle; afterwards the
corrections pull the training output towards what the running statistics give at evaluation.
Every training forward updates the running statistics like ``nn.BatchNorm1d`` (``momentum`` is the
weight of the new batch, PyTorch's convention; the variance is the unbiased batch variance)::

    running_mean <- (1 - momentum) * running_mean + momentum * mu_B
    running_var  <- (1 - momentum) * running_var  + momentum * var_unbiased(x)

In evaluation mode ``y = weight * (x - running_mean) / sqrt(running_var + eps) + bias``.
``r_max`` and ``d_max`` are constants (CrossQ's choice: a warm-up, then fixed bounds), not the
paper's gradual ramp. The warm-up switch is a tensor comparison, so no forward synchronises with
the host.

CrossQ (Bhatt et al. 2024) critic: ``BRN -> [Linear -> activation -> BRN] x hidden -> Linear``,
i.e. a BRN layer on the (observation, action) input and after each hidden activation; see
:class:`BRNMLP`. :class:`StackedBRNMLP` evaluates K such critics in one batched call, with
per-member weights ``[K, in, out]`` and per-member statistics ``[K, 1, features]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rltrain.modules.mlp import MLP, activation_class as _activation_class


def batch_renorm(x: torch.Tensor, dim: int, running_mean: torch.Tensor, running_var: torch.Tensor,
                 steps: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, training: bool,
                 momentum: float, eps: float, warmup_steps: float, r_max: float, d_max: float) -> torch.Tensor:
    """Batch renormalization of ``x`` with statistics over ``dim``; updates the running statistics.

    The statistics tensors either drop ``dim`` (``[F]`` for ``x: [N, F]``) or keep it as a size-1
    dim (``[K, 1, F]`` for ``x: [K, N, F]``); ``steps`` counts the training forwards so far.
    """
    if not training:
        scale = weight * torch.rsqrt(running_var + eps)
        return torch.addcmul(bias, x - running_mean, scale)
    rows = x.shape[dim]
    if rows < 2:
        raise ValueError(f"batch renormalization needs more than one row per batch in training mode, got {rows}")
    var, mean = torch.var_mean(x, dim=dim, keepdim=running_mean.dim() == x.dim(), correction=0)
    std = (var + eps).sqrt()
    with torch.no_grad():
        running_std = (running_var + eps).sqrt()
        warmed_up = steps >= warmup_steps
        r = torch.where(warmed_up, (std / running_std).clamp(1.0 / r_max, r_max), 1.0)
        d = torch.where(warmed_up, ((mean - running_mean) / running_std).clamp(-d_max, d_max), 0.0)
        running_mean.lerp_(mean, momentum)
        running_var.lerp_(var * (rows / (rows - 1)), momentum)
        steps.add_(1)
    return torch.addcmul(torch.addcmul(bias, weight, d), x - mean, weight * r / std)


def _check_settings(momentum: float, eps: float, warmup_steps: float, r_max: float, d_max: float) -> None:
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1] (weight of the new batch), got {momentum}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if r_max < 1.0:
        raise ValueError(f"r_max must be >= 1, got {r_max}")
    if d_max < 0.0:
        raise ValueError(f"d_max must be >= 0, got {d_max}")


class BatchRenorm1d(nn.Module):
    """Batch Renormalization over the last dim of ``[N, num_features]`` (or ``[*, num_features]``) inputs.

    Args:
        num_features: number of features (the last dim).
        momentum: weight of the new batch in the running statistics (0.01 in CrossQ).
        eps: added to the variances.
        warmup_steps: training forwards during which the layer is plain BatchNorm (``r = 1, d = 0``).
        r_max: bound of the scale correction ``r`` (clipped to ``[1 / r_max, r_max]``).
        d_max: bound of the shift correction ``d`` (clipped to ``[-d_max, d_max]``).
    """

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-3,
                 warmup_steps: int = 100_000, r_max: float = 3.0, d_max: float = 5.0):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        _check_settings(momentum, eps, warmup_steps, r_max, d_max)
        self.num_features = num_features
        self.momentum, self.eps, self.warmup_steps = momentum, eps, warmup_steps
        self.r_max, self.d_max = r_max, d_max
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"BatchRenorm1d expected {self.num_features} features on the last dim, got {x.shape[-1]}")
        flat = x.reshape(-1, self.num_features)
        y = batch_renorm(flat, 0, self.running_mean, self.running_var, self.num_batches_tracked, self.weight,
                         self.bias, training=self.training, momentum=self.momentum, eps=self.eps,
                         warmup_steps=self.warmup_steps, r_max=self.r_max, d_max=self.d_max)
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, momentum={self.momentum}, eps={self.eps}, warmup_steps={self.warmup_steps}, "
                f"r_max={self.r_max}, d_max={self.d_max}")


class BRNMLP(nn.Sequential):
    """The CrossQ critic: ``BRN -> [Linear -> activation -> BRN] x len(num_cells) -> Linear``.

    Several inputs (observation, action) are concatenated on the last dim.

    Args:
        in_features: input size (after concatenation).
        out_features: output size (1 for a Q value).
        num_cells: hidden sizes (CrossQ: ``(2048, 2048)``).
        activation_class: activation after each hidden Linear (class or name).
        momentum, eps, warmup_steps, r_max, d_max: the :class:`BatchRenorm1d` settings.
    """

    def __init__(self, in_features: int, out_features: int, num_cells: Sequence[int] = (2048, 2048),
                 activation_class: type[nn.Module] | str = nn.ReLU, *, momentum: float = 0.01, eps: float = 1e-3,
                 warmup_steps: int = 100_000, r_max: float = 3.0, d_max: float = 5.0):
        act = _activation_class(activation_class)
        settings = dict(momentum=momentum, eps=eps, warmup_steps=warmup_steps, r_max=r_max, d_max=d_max)
        sizes = [in_features, *num_cells]
        layers: list[nn.Module] = [BatchRenorm1d(in_features, **settings)]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), act(), BatchRenorm1d(n_out, **settings)]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        return super().forward(x)


_NORM_SETTINGS = ("momentum", "eps", "warmup_steps", "r_max", "d_max")


def _norm_settings(layer: nn.Module) -> tuple[float, ...]:
    """The batch-renorm settings of a norm layer; a BatchNorm1d is a BRN that never leaves warm-up."""
    if isinstance(layer, BatchRenorm1d):
        return tuple(getattr(layer, name) for name in _NORM_SETTINGS)
    return (layer.momentum, layer.eps, math.inf, 1.0, 0.0)


def _is_norm(layer: nn.Module) -> bool:
    if isinstance(layer, BatchRenorm1d):
        return True
    return (isinstance(layer, nn.BatchNorm1d) and layer.affine and layer.track_running_stats
            and layer.momentum is not None)


def brn_layer_plan(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(kind, layer)]`` with kind ``"linear"``, ``"norm"`` or ``"act"``, or TypeError with the reason.

    Accepted: an ``nn.Sequential`` (or :class:`~rltrain.modules.MLP` / :class:`BRNMLP`) of Linear
    layers with bias, :class:`BatchRenorm1d` (or affine ``nn.BatchNorm1d`` with running statistics
    and a momentum) and parameter-free activations that follow a Linear or a norm layer.
    """
    accepted = ("an nn.Sequential / MLP / BRNMLP of Linear (with bias), BatchRenorm1d or affine BatchNorm1d "
                "with running statistics, and parameter-free activations")
    if not isinstance(module, nn.Sequential) or type(module).forward not in (
            nn.Sequential.forward, MLP.forward, BRNMLP.forward):
        raise TypeError(f"cannot stack critic {type(module).__name__}: expected {accepted}")
    plan: list[tuple[str, nn.Module]] = []
    for layer in module:
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            plan.append(("linear", layer))
        elif _is_norm(layer):
            plan.append(("norm", layer))
        elif (not isinstance(layer, nn.Dropout) and plan and plan[-1][0] != "act"
              and not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers())):
            plan.append(("act", layer))
        else:
            raise TypeError(f"cannot stack critic layer {layer!r}: expected {accepted}")
    if not any(kind == "linear" for kind, _ in plan):
        raise TypeError(f"cannot stack critic {type(module).__name__} without a Linear layer: expected {accepted}")
    return plan


class StackedBRNMLP(nn.Module):
    """K critics with batch renormalization evaluated in one batched call.

    Linear ``i`` holds ``weight_{i}: [K, in, out]``, ``bias_{i}: [K, 1, out]`` (one ``baddbmm``);
    norm ``j`` holds ``norm_weight_{j}``, ``norm_bias_{j}`` and the buffers ``running_mean_{j}``,
    ``running_var_{j}``: ``[K, 1, F]`` and ``num_batches_tracked_{j}: [K, 1, 1]``, each member
    normalising over its own rows. Members must share the architecture and norm settings.

    Args:
        members: the K critics (see :func:`brn_layer_plan` for the accepted form); their current
            weights and statistics are copied.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("StackedBRNMLP needs at least one member")
        plans = [brn_layer_plan(m) for m in members]
        if len({len(plan) for plan in plans}) > 1:
            raise ValueError("StackedBRNMLP members must share one architecture (layer types and sizes)")
        self.num_members = len(members)
        self._ops: list[tuple[str, object]] = []
        n_linear = n_norm = 0
        for position, (kind, layer) in enumerate(plans[0]):
            column = [plan[position][1] for plan in plans]
            if any(type(other) is not type(layer) or _shape(other) != _shape(layer) for other in column):
                raise ValueError("StackedBRNMLP members must share one architecture (layer types and sizes)")
            if kind == "linear":
                self._param(f"weight_{n_linear}", [lin.weight.detach().t() for lin in column])
                self._param(f"bias_{n_linear}", [lin.bias.detach().unsqueeze(0) for lin in column])
                self._ops.append(("linear", n_linear))
                n_linear += 1
            elif kind == "norm":
                settings = _norm_settings(layer)
                if any(_norm_settings(other) != settings for other in column):
                    raise ValueError("StackedBRNMLP members must share their norm settings (momentum, eps, ...)")
                self._param(f"norm_weight_{n_norm}", [n.weight.detach().unsqueeze(0) for n in column])
                self._param(f"norm_bias_{n_norm}", [n.bias.detach().unsqueeze(0) for n in column])
                for stat in ("running_mean", "running_var"):
                    stacked = torch.stack([getattr(n, stat).unsqueeze(0) for n in column])
                    self.register_buffer(f"{stat}_{n_norm}", stacked)
                self.register_buffer(f"num_batches_tracked_{n_norm}",
                                     torch.stack([n.num_batches_tracked.reshape(1, 1) for n in column]).long())
                self._ops.append(("norm", (n_norm, dict(zip(_NORM_SETTINGS, settings)))))
                n_norm += 1
            else:
                self._ops.append(("act", layer))

    def _param(self, name: str, tensors: list[torch.Tensor]) -> None:
        self.register_parameter(name, nn.Parameter(torch.stack(tensors).clone().contiguous()))

    def forward(self, *inputs: torch.Tensor, detach: bool = False, per_member: bool = False,
                batch_stats: bool | None = None) -> torch.Tensor:
        """Evaluate the K members; ``inputs`` are concatenated on the last dim -> ``[K, *batch, out]``.

        Args:
            detach: use detached weights (a critic read by the actor loss: no gradient to the critic).
            per_member: inputs already carry a leading ``K`` dim (one batch per member).
            batch_stats: normalise with batch statistics and update the running ones (train mode)
                or with the running statistics (eval mode); default: ``self.training``.
        """
        training = self.training if batch_stats is None else batch_stats

        def read(name: str) -> torch.Tensor:
            tensor = getattr(self, name)
            return tensor.detach() if detach else tensor

        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        count = self.num_members
        batch_shape = x.shape[1:-1] if per_member else x.shape[:-1]
        x = x.reshape(count if per_member else 1, -1, x.shape[-1])
        if not per_member:
            x = x.expand(count, -1, -1)
        for kind, op in self._ops:
            if kind == "linear":
                x = torch.baddbmm(read(f"bias_{op}"), x, read(f"weight_{op}"))
            elif kind == "norm":
                j, settings = op
                x = batch_renorm(x, 1, getattr(self, f"running_mean_{j}"), getattr(self, f"running_var_{j}"),
                                 getattr(self, f"num_batches_tracked_{j}"), read(f"norm_weight_{j}"),
                                 read(f"norm_bias_{j}"), training=training, **settings)
            else:
                x = op(x)
        return x.reshape(count, *batch_shape, x.shape[-1])


def _shape(layer: nn.Module) -> tuple:
    if isinstance(layer, nn.Linear):
        return (layer.in_features, layer.out_features)
    if isinstance(layer, (BatchRenorm1d, nn.BatchNorm1d)):
        return (layer.num_features,)
    return ()
