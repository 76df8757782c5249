r"""Behaviour cloning: fit a policy to expert actions.

Notation: expert action ``a`` (the batch's ``tensor_keys.action``), observation ``s``, ``R`` = the
reduction over *all* loss elements (batch, time and action dims alike). The loss depends on
``loss_function`` and on the actor, first rule that applies:

1. ``loss_function`` given: a distance between the actor's prediction and ``a``, elementwise::

       "l2" / "mse": (p - a)^2     "l1": |p - a|     "smooth_l1": Huber, beta = 1
       "cross_entropy": -log softmax(p)[a]   (p are logits, a an index; a trailing dim of 1 is dropped)
       a callable f: f(p, a), elementwise

   The prediction ``p`` is the deterministic actor's action, a stochastic actor's mode, or a
   categorical actor's logits.
2. an integer expert action: cross-entropy on the actor's logits, ``-log softmax(logits)[a]``.
3. a stochastic actor: the negative log-likelihood ``-log pi(a|s)``.
4. otherwise (a deterministic actor): the squared error ``(mu(s) - a)^2``.

**Masks.** ``tensor_keys.pad_mask`` (True = padded, e.g. the padded steps of an action chunk) and
the collector's ``("collector", "mask")`` (True = valid) select the elements that count; a mask
shaped like the loss's leading dims (``[B, H]`` on a ``[B, H, A]`` loss) covers the trailing dims.
``"mean"`` divides by the number of elements kept (0 when none is); ``"sum"`` sums them; ``"none"``
returns the kept elements as a 1-D tensor when a pad mask applies, else the full loss with the
collector-masked elements set to 0.

The only term, ``loss_bc``, trains the actor (group ``actor``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rltrain.modules.actors import CategoricalActor, ProbabilisticActor, call_tensors
from rltrain.objectives.common import LossModule, NestedKey, distance_loss, loss_output

BC_LOSS_FUNCTIONS = ("l1", "l2", "mse", "smooth_l1", "cross_entropy")
COLLECTOR_MASK_KEY = ("collector", "mask")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[target]`` per element; ``target`` is an index (a trailing dim of 1
    is dropped) or a one-hot vector shaped like ``logits``."""
    log_probs = logits.log_softmax(-1)
    if target.shape == logits.shape:
        return -(log_probs * target.to(log_probs.dtype)).sum(-1)
    if target.dim() == logits.dim():
        target = target.squeeze(-1)
    return -log_probs.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)


def elementwise_loss(loss_function: str | Callable, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One of :data:`BC_LOSS_FUNCTIONS`, or a callable ``(prediction, target) -> elementwise loss``."""
    if callable(loss_function):
        return loss_function(prediction, target)
    if loss_function == "cross_entropy":
        return cross_entropy(prediction, target)
    return distance_loss(prediction, target, "l2" if loss_function == "mse" else loss_function)


def _align_mask(mask: torch.Tensor, loss: torch.Tensor, name: str) -> torch.Tensor:
    """``mask`` broadcast over the loss's trailing dims (trailing singleton dims of the mask dropped)."""
    while mask.dim() > loss.dim() and mask.shape[-1] == 1:
        mask = mask.squeeze(-1)
    if mask.dim() > loss.dim():
        raise RuntimeError(f"BCLoss: the {name} {tuple(mask.shape)} has more dimensions than the loss "
                           f"{tuple(loss.shape)}; a mask must cover the loss's leading dims")
    if tuple(mask.shape) != tuple(loss.shape[:mask.dim()]):
        raise RuntimeError(f"BCLoss: the {name} {tuple(mask.shape)} does not match the loss's leading dims "
                           f"{tuple(loss.shape)}")
    return mask.reshape(*mask.shape, *([1] * (loss.dim() - mask.dim()))).expand_as(loss)


class BCLoss(LossModule):
    """Behaviour-cloning objective (see the module docstring for the four losses and the masks).

    Args:
        actor_network: a deterministic :class:`~rltrain.modules.Actor` (or any TensorDict module
            writing the action), a :class:`~rltrain.modules.ProbabilisticActor`, or a
            :class:`~rltrain.modules.CategoricalActor`. Its parameters are used as they are.
        loss_function: ``None`` (pick by the actor and the action dtype), one of ``"l1"``,
            ``"l2"``/``"mse"``, ``"smooth_l1"``, ``"cross_entropy"``, or a callable
            ``(prediction, target) -> elementwise loss``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, over all loss elements.

    Keys (``set_keys``): ``action`` (the expert action, and where the actor is expected to write
    its prediction; an actor writing ``"action"`` instead is accepted with a FutureWarning) and
    ``pad_mask`` (``None``: no padding mask). The collector mask ``("collector", "mask")`` is
    honoured when present; set ``loss.loss_mask_key = None`` to ignore it.

    Output: ``loss_bc``.
    """

    @dataclasses.dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"
        pad_mask: NestedKey | None = None

    loss_groups = {"loss_bc": "actor"}

    def __init__(self, actor_network: nn.Module, *, loss_function: str | Callable | None = None,
                 reduction: str | None = None):
        super().__init__()
        if not isinstance(actor_network, TensorDictModuleBase):
            raise TypeError("BCLoss needs a TensorDict actor (rltrain.modules.Actor, ProbabilisticActor or "
                            f"CategoricalActor), got {type(actor_network).__name__}")
        if not (loss_function is None or callable(loss_function) or loss_function in BC_LOSS_FUNCTIONS):
            raise ValueError(f"unknown loss_function {loss_function!r}; accepted: None, {BC_LOSS_FUNCTIONS} "
                             "or a callable (prediction, target) -> elementwise loss")
        # The base class knows only the regression distances; BC keeps its own choice below.
        self._init_common(loss_function="l2", reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.loss_function = loss_function
        self.loss_mask_key: NestedKey | None = COLLECTOR_MASK_KEY
        self.actor_network = actor_network
        self.obs_keys = list(actor_network.in_keys)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters())}

    # ---- the actor's output ---------------------------------------------------------------------
    def _prediction_index(self) -> int:
        """Position of the prediction in the actor's ``out_keys``: at ``tensor_keys.action``, else at
        the legacy ``"action"`` (with a FutureWarning)."""
        written = list(self.actor_network.out_keys)
        key = self._tensor_keys.action
        if key in written:
            return written.index(key)
        if "action" in written:
            warnings.warn(f"BCLoss: the actor writes its prediction at 'action', not at the expert action key "
                          f"{key!r}; reading 'action'. Give the actor out_keys=[{key!r}] instead.",
                          FutureWarning, stacklevel=2)
            return written.index("action")
        raise RuntimeError(f"BCLoss: the actor did not write a prediction at {key!r} (its out_keys are {written}); "
                           "give the actor that out key or set_keys(action=...) to match it")

    def _prediction(self, obs: list[torch.Tensor]) -> torch.Tensor:
        """The deterministic action, a stochastic actor's mode, or a categorical actor's logits."""
        index = self._prediction_index()
        actor = self.actor_network
        if isinstance(actor, CategoricalActor):
            return actor.logits(*obs)
        if isinstance(actor, ProbabilisticActor):
            return actor.act(*obs, deterministic=True)
        return call_tensors(actor, *obs)[index]

    def _negative_log_likelihood(self, obs: list[torch.Tensor], expert: torch.Tensor) -> torch.Tensor:
        if isinstance(self.actor_network, CategoricalActor):
            return cross_entropy(self.actor_network.logits(*obs), expert)
        return -self.actor_network.distribution(*obs).log_prob(expert)

    def _elementwise(self, obs: list[torch.Tensor], expert: torch.Tensor) -> torch.Tensor:
        if self.loss_function is not None:
            return elementwise_loss(self.loss_function, self._prediction(obs), expert)
        if not expert.is_floating_point():
            return cross_entropy(self._prediction(obs), expert)
        if isinstance(self.actor_network, (ProbabilisticActor, CategoricalActor)):
            return self._negative_log_likelihood(obs, expert)
        return distance_loss(self._prediction(obs), expert, "l2")

    # ---- masks and reduction ----------------------------------------------------------------------
    def _masks(self, batch: TensorDictBase) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pad mask, collector mask)``: True = padded, True = valid; ``None`` when absent."""
        pad_key = self._tensor_keys.pad_mask
        pad = batch.get(pad_key, None) if pad_key is not None else None
        valid = batch.get(self.loss_mask_key, None) if self.loss_mask_key is not None else None
        return pad, valid

    def _masked_reduce(self, loss: torch.Tensor, pad: torch.Tensor | None,
                       valid: torch.Tensor | None) -> torch.Tensor:
        if pad is None and valid is None:
            return self._reduce(loss)
        keep = None if valid is None else _align_mask(valid.bool(), loss, "collector mask")
        if pad is not None:
            unpadded = _align_mask(~pad.bool(), loss, "pad mask")
            keep = unpadded if keep is None else keep & unpadded
        if self.reduction == "none":
            return loss[keep] if pad is not None else torch.where(keep, loss, 0.0)
        total = torch.where(keep, loss, 0.0).sum()
        return total if self.reduction == "sum" else total / keep.sum().clamp_min(1)

    def forward(self, batch: TensorDictBase) -> TensorDict:
        expert = batch.get(self._tensor_keys.action)
        obs = [batch.get(k) for k in self.obs_keys]
        loss = self._elementwise(obs, expert)
        return loss_output({"loss_bc": self._masked_reduce(loss, *self._masks(batch))})
