r"""Calibrated Q-Learning, Cal-QL (Nakamoto et al. 2023): CQL whose conservative penalty cannot push
the values of the policy's actions below the value of the behaviour policy.

Everything is :class:`~rltrain.objectives.cql.CQLLoss` (critic, penalty, actor, temperature, optional
Lagrange multiplier) except one step of the penalty. With ``G(s)`` the Monte-Carlo return of the data
from state ``s`` (``mc_return``, the discounted return of the episode's remaining rewards, see
:mod:`rltrain.data.mc_returns`), the ``2N`` policy samples of each state (``N`` from
:math:`\pi(\cdot|s)`, ``N`` from :math:`\pi(\cdot|s')`, all evaluated at ``s``) are lower-bounded
before the importance-sampled logsumexp; the ``N`` uniform samples are not::

    Q~_k(s, a_j) = max(Q_{phi_k}(s, a_j), G(s))      for the policy samples a_j
    gap_k(s)     = T * logsumexp_j( (Q~_k(s, a_j) - log p(a_j)) / T ) - Q_{phi_k}(s, a_data)

Where ``Q`` already exceeds the reference value ``G(s)`` the penalty is CQL's; where CQL has pushed
it below, the bound removes the gradient that would push it further down, so the learned values stay
calibrated (at least the behaviour policy's) and fine-tuning online does not start with an
unlearning dip. The bound enters without gradient (``G`` is data). As in the authors' code, the
return of an episode cut by a time limit bootstraps nothing: ``G`` is the discounted sum of the
rewards recorded.

The batch must carry ``mc_return`` ``[*B, 1]`` (key ``mc_return``, configurable with ``set_keys``):
rltrain's dataset samplers add it for ``algo=cal_ql``, and the offline-to-online source labels online
episodes when they end.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDictBase

from rltrain.objectives.common import NestedKey
from rltrain.objectives.cql import CQLLoss


class CalQLLoss(CQLLoss):
    """Cal-QL: :class:`~rltrain.objectives.cql.CQLLoss` with the policy samples of the penalty
    lower-bounded by the Monte-Carlo return ``mc_return`` (module docstring). Same constructor,
    outputs and keys as CQLLoss, plus the key ``mc_return`` and the detached metric
    ``bound_rate``: the fraction of policy-sample values the bound raised."""

    @dataclasses.dataclass
    class _AcceptedKeys(CQLLoss._AcceptedKeys):
        mc_return: NestedKey = "mc_return"

    def bound_policy_values(self, batch: TensorDictBase, q_sampled: torch.Tensor) -> torch.Tensor:
        key = self._tensor_keys.mc_return
        mc_return = batch.get(key, None)
        if mc_return is None:
            raise KeyError(f"CalQLLoss needs the Monte-Carlo return {key!r} ([*B, 1]) in the batch; it has "
                           f"{sorted(map(str, batch.keys()))}")
        bound = mc_return.squeeze(-1).to(q_sampled.dtype)          # [*B]
        n = self.num_random
        policy = q_sampled[:, n:]                                   # [K, 2N, *B]
        bounded = torch.maximum(policy, bound.expand_as(policy))
        self._bound_rate = (policy.detach() < bound).float().mean()
        return torch.cat([q_sampled[:, :n], bounded], dim=1)

    def _critic_terms(self, batch: TensorDictBase, terms: frozenset[str], dist, alpha) -> dict[str, torch.Tensor]:
        out = super()._critic_terms(batch, terms, dist, alpha)
        if terms & {"loss_cql", "loss_alpha_prime"} and self._scalar_outputs_allowed():
            out["bound_rate"] = self._bound_rate
        return out
