r"""Generative Adversarial Imitation Learning, GAIL (Ho & Ermon 2016): the discriminator's loss and
the policy's reward.

Notation: discriminator logit ``z = D_w(s, a)`` (``sigmoid(z)`` = the probability that ``(s, a)`` is
expert data); expert pairs ``(s_E, a_E)``, collector (policy) pairs ``(s_C, a_C)``, one of each per
row; ``R`` = the reduction over the batch; ``softplus(x) = log(1 + e^x)``.

**Discriminator loss** (expert label 1, collector label 0), binary cross-entropy written on the
logits, which is finite for any logit (``BCE(sigmoid(z), 1) = softplus(-z)``, ``BCE(sigmoid(z), 0) =
softplus(z)``)::

    l = softplus(-D_w(s_E, a_E)) + softplus(D_w(s_C, a_C))          per row
    loss = R( l + gp )

**Gradient penalty** (``use_grad_penalty``; WGAN-GP style), one ``eta ~ U(0, 1)`` per row, broadcast
over the features::

    s_hat = eta * s_C + (1 - eta) * s_E,    a_hat = eta * a_C + (1 - eta) * a_E
    g  = grad of sum D_w(s_hat, a_hat) w.r.t. [s_hat, a_hat]      (create_graph: trains w)
    gp = gp_lambda * mean_rows( (||g||_2 - 1)^2 )                   (one scalar, added to every row)

Discrete actions are interpolated as one-hot vectors (:meth:`Discriminator.encode_action`).
``gp_loss`` is the detached ``gp``. The data carry no gradient, so the only term, ``loss``, trains the
discriminator (group ``discriminator``) and nothing else.

**Policy reward** (:func:`gail_reward`)::

    r(s, a) = -log(1 - sigmoid(z) + 1e-8)

computed as ``-logaddexp(-softplus(z), log 1e-8)``, since ``1 - sigmoid(z) = exp(-softplus(z))``:
``softplus(z)`` for moderate logits, capped at ``-log 1e-8 ~ 18.4`` for very expert-like pairs,
never ``inf`` or ``nan``.

**A discriminator that outputs probabilities** (``discriminator_output="probs"``, the reference's
convention, ``p = D_w(s, a)`` in [0, 1]): the same loss written on ``p``, each log clamped at -100
as ``torch.nn.BCELoss`` does, the penalty on the gradient of ``p``, and the reward ``-log(1 - p + 1e-8)``::

    l = -max(log p_E, -100) - max(log(1 - p_C), -100)

Differences from TorchRL (decided in the spec): by default the network outputs logits, not
probabilities, and the loss is BCE-with-logits (finite for any output, where ``log p`` saturates);
``eta`` is drawn per row, not per element.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import call_tensors
from rltrain.objectives.common import LossModule, NestedKey, loss_output

REWARD_EPS = 1e-8
_LOG_REWARD_EPS = math.log(REWARD_EPS)


def gail_reward(d_logits: torch.Tensor) -> torch.Tensor:
    """``-log(1 - sigmoid(z) + 1e-8)`` in the stable softplus form (see the module docstring)."""
    return -torch.logaddexp(-F.softplus(d_logits), torch.full_like(d_logits, _LOG_REWARD_EPS))


def discriminator_bce(expert_logits: torch.Tensor, collector_logits: torch.Tensor) -> torch.Tensor:
    """Per-row ``BCE(expert, 1) + BCE(collector, 0)`` on logits: ``softplus(-z_E) + softplus(z_C)``."""
    return F.softplus(-expert_logits) + F.softplus(collector_logits)


BCE_LOG_MIN = -100.0  # torch.nn.BCELoss's clamp of each log


def discriminator_bce_from_probs(expert_probs: torch.Tensor, collector_probs: torch.Tensor) -> torch.Tensor:
    """Per-row ``BCE(expert, 1) + BCE(collector, 0)`` on probabilities (logs clamped at -100)."""
    return -expert_probs.log().clamp_min(BCE_LOG_MIN) - torch.log1p(-collector_probs).clamp_min(BCE_LOG_MIN)


def gail_reward_from_probs(d_probs: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p + 1e-8)`` for a discriminator that outputs probabilities."""
    return -torch.log1p(REWARD_EPS - d_probs)


DISCRIMINATOR_OUTPUTS = ("logits", "probs")


class GAILLoss(LossModule):
    """The GAIL discriminator objective (see the module docstring for the math).

    Args:
        discriminator_network: a :class:`~rltrain.modules.Discriminator`, or any TensorDict module
            reading the expert observation and action keys and writing one logit ``[*B, 1]``.
        use_grad_penalty: add the gradient penalty.
        gp_lambda: its weight (>= 0).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-row ``[*B]``).
        discriminator_output: ``"logits"`` (default: ``sigmoid`` of the output is the probability
            of expert data) or ``"probs"`` (the output is that probability, e.g. a final Sigmoid
            layer, as the reference's example discriminators are written).
        actor_network: accepted because the reference page passes it; the discriminator loss does
            not use the policy, so it is ignored (the policy is trained by PPO or SAC on
            :func:`gail_reward`).

    Keys (``set_keys``): ``expert_observation`` / ``expert_action`` (``"observation"``, ``"action"``),
    ``collector_observation`` / ``collector_action`` (``"collector_observation"``,
    ``"collector_action"``), ``discriminator_pred`` (``"d_logits"``, where the TensorDict API of the
    discriminator writes). Expert and collector batches must have the same batch shape (``[B]`` or
    ``[B, T]``).

    Output: ``loss`` and, with the penalty, the detached ``gp_loss``.
    """

    @dataclasses.dataclass
    class _AcceptedKeys:
        expert_action: NestedKey = "action"
        expert_observation: NestedKey = "observation"
        collector_action: NestedKey = "collector_action"
        collector_observation: NestedKey = "collector_observation"
        discriminator_pred: NestedKey = "d_logits"

    loss_groups = {"loss": "discriminator"}

    def __init__(self, discriminator_network: nn.Module, *, use_grad_penalty: bool = False, gp_lambda: float = 10.0,
                 reduction: str | None = None, actor_network: nn.Module | None = None,
                 discriminator_output: str = "logits"):
        super().__init__()
        if not (hasattr(discriminator_network, "logits") or hasattr(discriminator_network, "in_keys")):
            raise ValueError("GAILLoss needs a discriminator: a rltrain.modules.Discriminator or a TensorDict module "
                             "reading (observation, action) and writing a logit, got "
                             f"{type(discriminator_network).__name__}")
        if gp_lambda < 0:
            raise ValueError(f"gp_lambda must be >= 0, got {gp_lambda}")
        if discriminator_output not in DISCRIMINATOR_OUTPUTS:
            raise ValueError(f"GAILLoss: discriminator_output must be one of {DISCRIMINATOR_OUTPUTS}, got "
                             f"{discriminator_output!r}")
        self.discriminator_output = discriminator_output
        self._init_common(loss_function="l2", reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.discriminator_network = discriminator_network
        self.use_grad_penalty = bool(use_grad_penalty)
        self.gp_lambda = float(gp_lambda)
        # actor_network is not stored: the policy is not part of this loss, and keeping it out of the
        # module keeps its parameters out of the discriminator's group and state_dict.

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": list(self.discriminator_network.parameters())}

    # ---- the discriminator on plain tensors --------------------------------------------------------
    def discriminate(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit ``[*B, 1]`` for one batch of pairs."""
        net = self.discriminator_network
        if hasattr(net, "logits"):
            return net.logits(observation, action)
        keys = self._tensor_keys
        by_key = {keys.expert_observation: observation, keys.expert_action: action}
        unknown = [k for k in net.in_keys if k not in by_key]
        if unknown:
            raise ValueError(f"GAILLoss: the discriminator reads {unknown}, which are not the expert keys "
                             f"{list(by_key)}; give it in_keys=[observation key, action key] or set_keys(...)")
        return call_tensors(net, *(by_key[k] for k in net.in_keys))[0]

    def policy_reward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The policy's reward ``-log(1 - D(s, a) + 1e-8)`` ``[*B, 1]``, for either discriminator output."""
        output = self.discriminate(observation, action)
        return gail_reward(output) if self.discriminator_output == "logits" else gail_reward_from_probs(output)

    def _float_action(self, action: torch.Tensor, batch_dims: int) -> torch.Tensor:
        encode = getattr(self.discriminator_network, "encode_action", None)
        if encode is not None:
            return encode(action, batch_dims)
        if not action.is_floating_point():
            raise ValueError("GAILLoss: the gradient penalty interpolates actions, so integer actions need a "
                             "discriminator that one-hot encodes them (rltrain.modules.Discriminator(num_actions=...))")
        return action

    def gradient_penalty(self, expert_obs: torch.Tensor, expert_action: torch.Tensor, collector_obs: torch.Tensor,
                         collector_action: torch.Tensor, batch_dims: int) -> torch.Tensor:
        """``gp_lambda * mean((||grad D(x_hat)||_2 - 1)^2)`` with one ``eta ~ U(0, 1)`` per row."""
        expert_action = self._float_action(expert_action, batch_dims)
        collector_action = self._float_action(collector_action, batch_dims)
        eta = torch.rand((*expert_obs.shape[:batch_dims], 1), dtype=expert_obs.dtype, device=expert_obs.device)
        obs_hat = torch.lerp(expert_obs, collector_obs, eta).detach().requires_grad_(True)
        action_hat = torch.lerp(expert_action, collector_action, eta).detach().requires_grad_(True)
        logits = self.discriminate(obs_hat, action_hat)
        grads = torch.autograd.grad(logits.sum(), [obs_hat, action_hat], create_graph=True)
        norm = torch.cat(grads, dim=-1).norm(2, dim=-1)
        return self.gp_lambda * (norm - 1).pow(2).mean()

    def _expert_and_collector_logits(self, expert_obs, expert_action, collector_obs, collector_action):
        if expert_action.shape != collector_action.shape or expert_action.dtype != collector_action.dtype:
            # e.g. discrete indices stored as [B] on one side and [B, 1] on the other
            return self.discriminate(expert_obs, expert_action), self.discriminate(collector_obs, collector_action)
        # One discriminator call on the expert rows followed by the collector rows.
        rows = expert_obs.shape[0]
        logits = self.discriminate(torch.cat([expert_obs, collector_obs]), torch.cat([expert_action, collector_action]))
        return logits[:rows], logits[rows:]

    # ---- the loss ------------------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        expert_obs, expert_action = batch.get(keys.expert_observation), batch.get(keys.expert_action)
        collector_obs, collector_action = batch.get(keys.collector_observation), batch.get(keys.collector_action)
        if expert_obs.shape != collector_obs.shape:
            raise ValueError(f"GAILLoss: expert and collector observations must have one shape (one pair per row), got "
                             f"{tuple(expert_obs.shape)} and {tuple(collector_obs.shape)}")
        bce = discriminator_bce if self.discriminator_output == "logits" else discriminator_bce_from_probs
        loss = bce(*self._expert_and_collector_logits(expert_obs, expert_action, collector_obs,
                                                      collector_action)).squeeze(-1)
        out = {}
        if self.use_grad_penalty:
            gp = self.gradient_penalty(expert_obs, expert_action, collector_obs, collector_action, batch.batch_dims)
            loss = loss + gp
            out["gp_loss"] = gp.detach()
        return loss_output({"loss": self._reduce(loss), **out})
