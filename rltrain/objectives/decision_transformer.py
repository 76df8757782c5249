r"""Decision Transformer (Chen et al. 2021) and Online Decision Transformer (Zheng et al. 2022).

Notation: a batch of context windows, batch shape ``[B, T]``; ``a_t`` the dataset action at step ``t``
(``tensor_keys.action_target``, never differentiated); the actor reads the whole window
(observation, action, return_to_go, timestep, pad_mask) and predicts every step causally.
``valid_t = not pad_mask_t`` (``tensor_keys.pad_mask``, True = a left-padding step; a batch without
it counts every step). ``M`` is the masked reduction over the loss's elements::

    "mean": sum over valid elements / number of valid elements (0 if none)
    "sum":  sum over valid elements
    "none": the elementwise loss, padded elements set to 0

Padded steps are masked out of every term, as the papers' code does (TorchRL averages them in).

**DTLoss.** With the deterministic prediction ``a^_t = mu_theta(context)_t`` and the distance ``d`` of
``loss_function`` (``"l2"``: ``(x - y)^2``), over the ``[B, T, A]`` elements::

    loss = M( d(a^_t, sg(a_t)) )                                                     -> group actor

**OnlineDTLoss.** ``pi_theta(.|context)_t`` is a TanhNormal per step, ``alpha = exp(log_alpha)``
(clamped to ``[min_alpha, max_alpha]``), ``H*`` = ``target_entropy`` (``"auto"``: ``-dim A``)::

    ll_t  = log pi_theta(a_t | .)      (TanhNormal.log_prob clamps a_t inside (-1+1e-6, 1-1e-6) of
                                        the bounds before atanh, so dataset actions at a bound stay finite)
    H_t   = -(1/S) sum_s log pi_theta(a~_s | .),  a~_s ~ pi_theta reparameterised, S = samples_mc_entropy

    loss_log_likelihood = M( -ll_t )                                                 -> group actor
    loss_entropy        = M( -sg(alpha) * H_t )                                      -> group actor
    loss_alpha          = M( exp(log_alpha) * sg(H_t - H*) )                         -> group alpha

(with ``"mean"``: ``-sg(alpha) M(H_t)`` and ``exp(log_alpha) sg(M(H_t) - H*)``). Metrics, without
gradient: ``alpha`` and ``entropy = M(H_t)``. The likelihood and the entropy train the actor only
(alpha is detached); the alpha loss reaches ``log_alpha`` only (the entropy is detached).
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import ProbabilisticActor
from rltrain.modules.distributions import TanhNormal
from rltrain.modules.transformer import OnlineDTActor
from rltrain.objectives.common import (
    LossModule, NestedKey, TemperatureMixin, loss_output, reduce_loss, resolve_target_entropy,
)


def masked_reduce(loss: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce ``loss [B, T, ...]`` over the elements of valid steps (``valid [B, T]``, None = all)."""
    if valid is None:
        return reduce_loss(loss, reduction)
    keep = valid.reshape(*valid.shape, *([1] * (loss.dim() - valid.dim()))).expand_as(loss)
    masked = torch.where(keep, loss, 0.0)
    if reduction == "none":
        return masked
    total = masked.sum()
    return total if reduction == "sum" else total / keep.sum().clamp_min(1)


def _sample_log_prob(dist: torch.distributions.Distribution, samples: int) -> torch.Tensor:
    """``log pi(a~)`` of ``samples`` reparameterised draws ``[S, *batch]``."""
    if isinstance(dist, TanhNormal):
        return dist.rsample_and_log_prob(torch.Size([samples]))[1]
    log_prob = dist.log_prob(dist.rsample(torch.Size([samples])))
    return log_prob if log_prob.dim() == len(dist.batch_shape) + 1 else log_prob.sum(-1)


@dataclasses.dataclass
class _SequenceKeys:
    action_target: NestedKey = "action"
    action_pred: NestedKey = "action"
    pad_mask: NestedKey = "pad_mask"


class _SequenceLoss(LossModule):
    """What both objectives share: the actor, the valid-step mask, the actor's inputs."""

    _AcceptedKeys = _SequenceKeys
    loss_groups = {}

    def _valid_steps(self, batch: TensorDictBase) -> torch.Tensor | None:
        pad = batch.get(self._tensor_keys.pad_mask, None)
        return None if pad is None else ~pad.bool()

    def _actor_inputs(self, batch: TensorDictBase) -> list[torch.Tensor | None]:
        return self.actor_network.inputs(batch)

    def _target(self, batch: TensorDictBase) -> torch.Tensor:
        return batch.get(self._tensor_keys.action_target).detach()


class DTLoss(_SequenceLoss):
    """Decision Transformer's objective: a regression of the predicted actions on the dataset's.

    Args:
        actor_network: a :class:`~rltrain.modules.DTActor` (an OnlineDTActor's mode works too), or any
            TensorDict module writing its prediction at ``action_pred``.
        loss_function: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (masked, module docstring).
        device: move the objective (and the actor) there.

    Keys (``set_keys``): ``action_target`` (dataset actions), ``action_pred`` (the actor's output
    key), ``pad_mask`` (True = padded step). Output: ``loss`` (group ``actor``).
    """

    loss_groups = {"loss": "actor"}

    def __init__(self, actor_network: nn.Module, *, loss_function: str = "l2", reduction: str | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        self._init_common(loss_function=loss_function, reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.actor_network = actor_network
        if device is not None:
            self.to(device)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters())}

    def _prediction(self, batch: TensorDictBase) -> torch.Tensor:
        key, actor = self._tensor_keys.action_pred, self.actor_network
        if key not in actor.out_keys:
            raise RuntimeError(f"DTLoss: the actor writes {list(actor.out_keys)}, not the prediction key {key!r}; "
                               "set_keys(action_pred=...) to one of them")
        if hasattr(actor, "act") and hasattr(actor, "inputs"):
            return actor.act(*actor.inputs(batch), deterministic=True)
        return actor(batch.copy()).get(key)

    def forward(self, batch: TensorDictBase) -> TensorDict:
        target = self._target(batch)
        loss = self._distance(self._prediction(batch), target)
        return loss_output({"loss": masked_reduce(loss, self._valid_steps(batch), self.reduction)})


class OnlineDTLoss(TemperatureMixin, _SequenceLoss):
    """Online Decision Transformer's objective: log-likelihood, entropy bonus and temperature.

    Args:
        actor_network: an :class:`~rltrain.modules.OnlineDTActor`, or a
            :class:`~rltrain.modules.ProbabilisticActor` over a sequence module (what the reference's
            example builds: a module writing ``loc``/``scale`` per context step and a TanhNormal).
            Either gives the per-step distribution with ``get_dist(batch)``.
        alpha_init, min_alpha, max_alpha, fixed_alpha: the temperature, as in SACLoss.
        target_entropy: ``"auto"`` (``-dim A``, from ``actor_network.spec``) or a number.
        samples_mc_entropy: reparameterised samples per step for the entropy estimate.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (masked, module docstring).
        scalar_output_mode: with ``reduction="none"``: ``None`` (warn) or ``"exclude"``.

    Keys: ``action_target``, ``action_pred``, ``pad_mask``. Output: ``loss_log_likelihood``,
    ``loss_entropy`` (group ``actor``), ``loss_alpha`` (group ``alpha``), ``alpha``, ``entropy``.
    """

    loss_groups = {"loss_log_likelihood": "actor", "loss_entropy": "actor", "loss_alpha": "alpha"}

    def __init__(self, actor_network: nn.Module, *, alpha_init: float = 1.0, min_alpha: float | None = None,
                 max_alpha: float | None = None, fixed_alpha: bool = False, target_entropy: str | float = "auto",
                 samples_mc_entropy: int = 1, reduction: str | None = None, scalar_output_mode: str | None = None):
        super().__init__()
        if not isinstance(actor_network, (OnlineDTActor, ProbabilisticActor)):
            raise TypeError("OnlineDTLoss needs a stochastic sequence actor whose distribution it can score and "
                            "sample with gradient: a rltrain.modules.OnlineDTActor or a rltrain.modules."
                            "ProbabilisticActor (e.g. TanhNormal) over a module that reads the context; got "
                            f"{type(actor_network).__name__}")
        if samples_mc_entropy < 1:
            raise ValueError(f"samples_mc_entropy must be at least 1, got {samples_mc_entropy}")
        self._init_common(loss_function="l2", reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.actor_network = actor_network
        self.samples_mc_entropy = samples_mc_entropy
        self.scalar_output_mode = scalar_output_mode
        self._init_alpha(alpha_init, min_alpha, max_alpha, fixed_alpha)
        spec = getattr(actor_network, "spec", None)
        self.register_buffer("target_entropy", torch.tensor(resolve_target_entropy(target_entropy, spec)))

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters()), "alpha": self._alpha_group()}

    def _distribution(self, batch: TensorDictBase) -> torch.distributions.Distribution:
        """The per-step policy; a ProbabilisticActor writes its parameters into a shallow copy."""
        if isinstance(self.actor_network, OnlineDTActor):
            return self.actor_network.distribution(*self._actor_inputs(batch))
        return self.actor_network.get_dist(batch.copy())

    def forward(self, batch: TensorDictBase) -> TensorDict:
        alpha = self._alpha
        valid = self._valid_steps(batch)
        dist = self._distribution(batch)
        target = self._target(batch)
        log_likelihood = dist.log_prob(target)                                               # [B, T]
        if log_likelihood.dim() == target.dim():  # a distribution without an event dim (a plain Normal)
            log_likelihood = log_likelihood.sum(-1)
        sample_log_prob = _sample_log_prob(dist, self.samples_mc_entropy)
        entropy = -sample_log_prob.mean(0)                                                   # [B, T]

        out = {
            "loss_log_likelihood": masked_reduce(-log_likelihood, valid, self.reduction),
            "loss_entropy": masked_reduce(-alpha * entropy, valid, self.reduction),
            "loss_alpha": masked_reduce(self.log_alpha.exp() * (entropy.detach() - self.target_entropy), valid,
                                        self.reduction),
        }
        if self._scalar_outputs_allowed():
            out["alpha"] = alpha
            out["entropy"] = masked_reduce(entropy.detach(), valid, "mean")
        return loss_output(out)
