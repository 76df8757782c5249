r"""TD3+BC (Fujimoto & Gu 2021): TD3 with a behaviour-cloning term in the actor loss, for offline RL.

Notation as in :mod:`rltrain.objectives.td3`: deterministic policy :math:`\mu_\theta`, critics
:math:`Q_{\phi_k}` and their targets, :math:`sg` = stop-gradient, ``R`` = the reduction (``mean``
weighted by ``priority_weight`` when the batch has it); ``a`` is the dataset action.

**Critic**: exactly TD3's (target policy smoothing, clipped double Q; see
:class:`~rltrain.objectives.td3.TD3Loss`).

**Actor**: the deterministic policy gradient through the first critic, normalised so that its
scale does not depend on the scale of the returns, plus a mean squared error to the dataset
action::

    Q_1    = Q_{sg(phi_1)}(s, mu_theta(s))
    lambda = alpha / sg(mean_B |Q_1|)
    bc     = mean_{B, A} (mu_theta(s) - a)^2                    (one scalar for the batch)
    loss_actor = R( -lambda * Q_1 + bc )

``bc`` is added to every sample's term before the reduction, so for ``"mean"``
``loss_actor = -lambda * mean(Q_1) + bc`` (the paper's loss) and for ``"sum"`` it counts ``B`` times.

Each term's gradient reaches only its own group: actor -> ``actor``, critic -> ``qvalue``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from rltrain.modules.actors import Actor, ValueOperator, call_tensors
from rltrain.modules.specs import Bounded
from rltrain.objectives.td3 import TD3Loss


class TD3BCLoss(TD3Loss):
    """TD3+BC objective: TD3's critics and a Q-normalised actor loss with behaviour cloning.

    Args:
        actor_network, qvalue_network, action_spec, bounds, num_qvalue_nets, policy_noise,
        noise_clip, loss_function, delay_actor, delay_qvalue, gamma, priority_key,
        separate_losses, reduction, deactivate_vmap, use_prioritized_weights: as for
            :class:`~rltrain.objectives.td3.TD3Loss`.
        alpha: weight of the Q term against the behaviour-cloning term (the paper: 2.5).

    Output: ``loss_actor``, ``loss_qvalue``, and detached metadata: ``bc_loss`` (the scalar ``bc``),
    ``lmbd`` (lambda), ``pred_value`` ``[K, *B]``, ``state_action_value_actor`` ``[*B]`` (``Q_1``),
    ``next_state_value`` ``[*B]`` and ``target_value`` ``[*B]``. The priority is written into the
    input batch as TD3 does.
    """

    def __init__(
        self,
        actor_network: Actor,
        qvalue_network: ValueOperator | list[ValueOperator],
        *,
        action_spec: Bounded | None = None,
        bounds: tuple | None = None,
        num_qvalue_nets: int = 2,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        alpha: float = 2.5,
        loss_function: str = "smooth_l1",
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        gamma: float | None = None,
        priority_key: str | None = None,
        separate_losses: bool = False,
        reduction: str | None = None,
        deactivate_vmap: bool = False,
        use_prioritized_weights: str | bool = "auto",
    ):
        super().__init__(
            actor_network, qvalue_network, action_spec=action_spec, bounds=bounds, num_qvalue_nets=num_qvalue_nets,
            policy_noise=policy_noise, noise_clip=noise_clip, loss_function=loss_function, delay_actor=delay_actor,
            delay_qvalue=delay_qvalue, gamma=gamma, priority_key=priority_key, separate_losses=separate_losses,
            reduction=reduction, deactivate_vmap=deactivate_vmap, use_prioritized_weights=use_prioritized_weights,
        )
        self.alpha = float(alpha)

    def forward_terms(self, batch: TensorDictBase, terms: frozenset[str]) -> TensorDict:
        """TD3's critic terms always; the actor term (and its metadata) only if ``loss_actor`` is asked for."""
        out = super().forward_terms(batch, terms - {"loss_actor"})
        if "loss_actor" in terms:
            out.update(self._actor_terms(batch))
        return out

    def _actor_terms(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        state = self._read_state(batch, next_state=False)
        action = call_tensors(self.actor_network, *(state[k] for k in self.obs_keys))[0]
        q_actor = self.qvalue_network(*self._qvalue_inputs(state, action), detach=True, members=slice(0, 1))
        q_actor = q_actor[0].squeeze(-1)
        lmbd = self.alpha / q_actor.abs().mean().detach()
        bc = (action - batch.get(self._tensor_keys.action)).pow(2).mean()
        return {
            "loss_actor": self._reduce(-lmbd * q_actor + bc, self._priority_weight(batch)),
            "bc_loss": bc.detach(),
            "lmbd": lmbd,
            "state_action_value_actor": q_actor.detach(),
        }
