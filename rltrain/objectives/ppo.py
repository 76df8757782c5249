r"""Proximal Policy Optimization with the clipped surrogate, PPO-Clip (Schulman et al. 2017), and
generalized advantage estimation, GAE (Schulman et al. 2016).

Notation: policy :math:`\pi_\theta` (the actor), its behaviour copy :math:`\pi_{old}` (the policy
that collected the rollout; only its stored log-probability ``log pi_old(a|s)`` is used), critic
:math:`V_\psi`; ``eps`` = ``clip_epsilon``; ``R`` = the reduction over the batch; ``sg`` =
stop-gradient; ``d`` = the distance of ``loss_critic_type``.

**Advantages** (:func:`generalized_advantage_estimate`, computed once per rollout, no gradient),
over a time-major rollout ``[T, N]``::

    delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},     A_T = 0
    value_target_t = A_t + V(s_t)

Bootstrapping is cut by *terminated* only; *done* (terminated or truncated) cuts the recursion, so a
truncated step bootstraps from the value of its true final observation without carrying the next
episode's advantage. The rollout's last step bootstraps from ``V(s'_{T-1})``.

**Policy** (gradient into the actor only; ``A`` is data)::

    log w = log pi_theta(a|s) - log pi_old(a|s)
    loss_objective = R( -min(w * A, clip(w, 1 - eps, 1 + eps) * A) )
    clip_fraction  = fraction of rows where clip changed w             (metric)
    kl_approx      = mean(log pi_old(a|s) - log pi_theta(a|s))        (metric)

With ``normalize_advantage``, ``A`` is standardised over the minibatch first:
``(A - mean(A)) / max(std(A), 1e-6)``.

**Entropy bonus** (gradient into the actor only)::

    loss_entropy = R( -entropy_coeff * H(pi_theta(.|s)) )

``H`` is exact where the distribution has ``entropy()`` (categorical), else a Monte-Carlo estimate
``-mean_k log pi_theta(a_k|s)`` over ``samples_mc_entropy`` reparameterised samples ``a_k`` (the
:class:`~rltrain.modules.TanhNormal` has no closed form). ``entropy`` is its detached mean.

**Critic** (gradient into the critic only)::

    loss_critic = R( critic_coeff * d(V_psi(s), value_target) )

With ``clip_value = c``, the prediction may move at most ``c`` from the rollout's value ``V_old``:
``V_clip = V_old + clip(V_psi(s) - V_old, -c, c)`` and the per-row loss is
``max(d(V_psi(s), y), d(V_clip, y))``.

The stored action is re-scored with the distribution's ``log_prob``; the collector
(:class:`rltrain.onpolicy.RolloutSource`) stores ``log pi_old`` computed the same way, so the first
update of a rollout sees ``w = 1`` exactly. Groups: ``loss_objective`` and ``loss_entropy`` ->
``actor``; ``loss_critic`` -> ``critic``. The actor and the critic must not share parameters.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.actors import ValueOperator, call_tensors, default_log_prob_key
from rltrain.objectives.common import LOSS_FUNCTIONS, LossModule, NestedKey, loss_output, next_key
from rltrain.objectives.value_estimators import (
    ValueEstimators, generalized_advantage_estimate, parse_value_estimator, td_lambda_return,
)

ADVANTAGE_STD_MIN = 1e-6


def standardize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / max(std, 1e-6)``; a single element is returned unchanged."""
    if x.numel() <= 1:
        return x
    return (x - x.mean()) / x.std().clamp_min(ADVANTAGE_STD_MIN)


def action_log_prob(dist: torch.distributions.Distribution, action: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` of a stored action, one value per row ``[*B]``.

    A categorical distribution takes an int64 index ``[*B]`` or ``[*B, 1]`` or a one-hot vector; a
    distribution without an event dim (a plain ``Normal``) is summed over the action dims.
    """
    if isinstance(dist, torch.distributions.Categorical):
        batch_dims = dist.logits.dim() - 1
        if action.dim() > batch_dims:
            action = action.argmax(-1) if action.is_floating_point() else action.squeeze(-1)
        return dist.log_prob(action)
    log_prob = dist.log_prob(action)
    return log_prob.sum(-1) if log_prob.dim() == action.dim() else log_prob


def policy_entropy(dist: torch.distributions.Distribution, samples_mc_entropy: int) -> torch.Tensor:
    """``H(pi(.|s))`` per row: exact when the distribution has ``entropy()``, else a Monte-Carlo
    estimate from reparameterised samples (differentiable)."""
    try:
        entropy = dist.entropy()
    except NotImplementedError:
        if hasattr(dist, "rsample_and_log_prob"):
            _, log_prob = dist.rsample_and_log_prob((samples_mc_entropy,))
        else:
            sample = dist.rsample((samples_mc_entropy,))
            log_prob = dist.log_prob(sample)
            if log_prob.dim() == sample.dim():
                log_prob = log_prob.sum(-1)
        return -log_prob.mean(0)
    batch_dims = len(dist.batch_shape)
    return entropy.sum(-1) if entropy.dim() > batch_dims else entropy


def _shared_parameters(a: nn.Module, b: nn.Module) -> bool:
    ids = {id(p) for p in a.parameters()}
    return any(id(p) in ids for p in b.parameters())


class PPOLoss(LossModule):
    """PPO-Clip objective with an entropy bonus and a (optionally clipped) critic loss.

    Args:
        actor_network: a stochastic actor with a ``distribution(*obs)`` method: a
            :class:`~rltrain.modules.ProbabilisticActor` (e.g. TanhNormal) or a
            :class:`~rltrain.modules.CategoricalActor`. Its parameters are used as they are.
        critic_network: a :class:`~rltrain.modules.ValueOperator` ``V(s)`` (``[*B, 1]``); no target copy.
        clip_epsilon: eps of the ratio clip ``[1 - eps, 1 + eps]``, in (0, 1).
        entropy_bonus: add ``loss_entropy``; ``False`` leaves the term (and the ``entropy`` metric) out.
        samples_mc_entropy: samples of the Monte-Carlo entropy estimate (distributions without
            ``entropy()``).
        entropy_coeff: weight of the entropy bonus (>= 0).
        critic_coeff: weight of the critic loss (>= 0).
        loss_critic_type: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        normalize_advantage: standardise the advantage over each minibatch.
        clip_value: ``None``/``False`` (no value clipping), ``True`` (clip at ``clip_epsilon``) or a
            positive float.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample terms ``[*B]``; the
            metrics stay scalars).
        shared_encoder: the actor and the critic share an encoder (CleanRL's Atari PPO): every term
            then trains one parameter group, ``model``, with one optimizer. Without it shared
            parameters are refused (the critic loss would train the actor).

    Keys (``set_keys``): ``advantage``, ``value_target``, ``value`` (the rollout's ``V_old(s)``,
    read for value clipping), ``sample_log_prob`` (``log pi_old``; default the actors' own key),
    ``action``, and ``reward``/``done``/``terminated`` (read by :meth:`compute_advantage`).

    Output: ``loss_objective``, ``loss_critic``, ``loss_entropy`` and the detached metrics
    ``entropy``, ``clip_fraction``, ``kl_approx``, ``explained_variance`` (and ``value_clip_fraction``
    with value clipping).
    """

    @dataclasses.dataclass
    class _AcceptedKeys:
        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"
        value: NestedKey = "state_value"
        sample_log_prob: NestedKey = default_log_prob_key("action")
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    loss_groups = {"loss_objective": "actor", "loss_entropy": "actor", "loss_critic": "critic"}

    def __init__(
        self,
        actor_network: nn.Module,
        critic_network: ValueOperator,
        *,
        clip_epsilon: float = 0.2,
        entropy_bonus: bool = True,
        samples_mc_entropy: int = 1,
        entropy_coeff: float = 0.01,
        critic_coeff: float = 1.0,
        loss_critic_type: str = "smooth_l1",
        normalize_advantage: bool = False,
        clip_value: bool | float | None = None,
        reduction: str | None = None,
        shared_encoder: bool = False,
    ):
        super().__init__()
        if not hasattr(actor_network, "distribution"):
            raise ValueError("PPOLoss needs a stochastic actor with a distribution (rltrain.modules.ProbabilisticActor "
                             f"or CategoricalActor), got {type(actor_network).__name__}")
        if critic_network is None or not hasattr(critic_network, "in_keys"):
            raise ValueError("PPOLoss needs a critic: a rltrain.modules.ValueOperator V(s)")
        self.shared_encoder = bool(shared_encoder)
        if _shared_parameters(actor_network, critic_network) and not self.shared_encoder:
            raise ValueError("PPOLoss: the actor and the critic share parameters, so the critic loss would train the "
                             "actor; give them separate networks")
        if not 0.0 < clip_epsilon < 1.0:
            raise ValueError(f"clip_epsilon must lie in (0, 1), got {clip_epsilon} (the paper uses 0.2)")
        if samples_mc_entropy < 1:
            raise ValueError(f"samples_mc_entropy must be >= 1, got {samples_mc_entropy}")
        if entropy_coeff < 0 or critic_coeff < 0:
            raise ValueError(f"entropy_coeff and critic_coeff must be >= 0, got {entropy_coeff} and {critic_coeff}")
        if loss_critic_type not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown loss_critic_type {loss_critic_type!r}; accepted: {LOSS_FUNCTIONS}")
        self._init_common(loss_function=loss_critic_type, reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.actor_network = actor_network
        self.critic_network = critic_network
        self.obs_keys = list(actor_network.in_keys)
        self.critic_in_keys = list(critic_network.in_keys)
        self.clip_epsilon = float(clip_epsilon)
        self.entropy_bonus = bool(entropy_bonus)
        self.samples_mc_entropy = int(samples_mc_entropy)
        self.entropy_coeff = float(entropy_coeff)
        self.critic_coeff = float(critic_coeff)
        self.loss_critic_type = loss_critic_type
        self.normalize_advantage = bool(normalize_advantage)
        self.clip_value = self._resolve_clip_value(clip_value)
        self._log_clip_bounds = (math.log1p(-self.clip_epsilon), math.log1p(self.clip_epsilon))
        if not self.entropy_bonus:
            self.loss_groups = {k: g for k, g in type(self).loss_groups.items() if k != "loss_entropy"}
        if self.shared_encoder:  # one optimizer over both networks, as CleanRL's Atari PPO
            self.loss_groups = {term: "model" for term in self.loss_groups}
        self.value_type = ValueEstimators.GAE
        self.register_buffer("lmbda", torch.tensor(0.95))
        self.average_gae = False

    def _resolve_clip_value(self, clip_value: bool | float | None) -> float | None:
        if clip_value is None or clip_value is False:
            return None
        if clip_value is True:
            return self.clip_epsilon
        if not isinstance(clip_value, (int, float)) or clip_value <= 0:
            raise ValueError(f"clip_value must be None, a bool or a positive float, got {clip_value!r}")
        return float(clip_value)

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        if self.shared_encoder:
            return {"model": list(dict.fromkeys([*self.actor_network.parameters(), *self.critic_network.parameters()]))}
        return {"actor": list(self.actor_network.parameters()), "critic": list(self.critic_network.parameters())}

    # ---- value estimator -----------------------------------------------------------------------------
    supported_value_estimators = (ValueEstimators.GAE, ValueEstimators.TD0, ValueEstimators.TD1,
                                  ValueEstimators.TDLambda)

    def make_value_estimator(self, value_type: str | None = None, *, gamma: float | None = None,
                             lmbda: float | None = None, average_gae: bool | None = None,
                             **hyperparams) -> PPOLoss:
        """Choose GAE and its ``gamma``, ``lmbda`` and ``average_gae`` (standardise the rollout's
        advantages once, after computing them). Defaults: 0.99, 0.95, False."""
        if value_type is not None:
            self.value_type = parse_value_estimator(value_type, "PPOLoss", self.supported_value_estimators)
        if hyperparams:
            raise TypeError(f"unexpected value-estimator arguments {sorted(hyperparams)}; GAE takes gamma, lmbda, "
                            "average_gae")
        if gamma is not None:
            if not 0.0 <= gamma <= 1.0:
                raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
            self.gamma.fill_(float(gamma))
        if lmbda is not None:
            if not 0.0 <= lmbda <= 1.0:
                raise ValueError(f"lmbda must lie in [0, 1], got {lmbda}")
            self.lmbda.fill_(float(lmbda))
        if average_gae is not None:
            self.average_gae = bool(average_gae)
        return self

    def _state_value(self, batch: TensorDictBase, next_state: bool = False) -> torch.Tensor:
        inputs = [batch.get(next_key(k) if next_state else k) for k in self.critic_in_keys]
        return call_tensors(self.critic_network, *inputs)[0]

    @torch.no_grad()
    def compute_advantage(self, rollout: TensorDictBase) -> TensorDictBase:
        """Write ``advantage`` and ``value_target`` (``[T, *B, 1]``) into a time-major rollout
        ``[T, *B]``, using the critic without gradient. ``value`` (``V(s)``) is computed and written
        when the rollout lacks it; ``V(s')`` is always computed from ``("next", observation)``."""
        keys = self._tensor_keys
        if rollout.batch_dims < 1:
            raise ValueError("compute_advantage needs a time-major rollout with batch shape [T, ...]")
        value = rollout.get(keys.value, None)
        if value is None:
            value = self._state_value(rollout)
            rollout.set(keys.value, value)
        next_value = self._state_value(rollout, next_state=True)
        terminated = rollout.get(next_key(keys.terminated), None)
        done = rollout.get(next_key(keys.done))
        terminated = done if terminated is None else terminated
        reward = rollout.get(next_key(keys.reward))
        if self.value_type is ValueEstimators.GAE:
            advantage, value_target = generalized_advantage_estimate(
                self.gamma, self.lmbda, value, next_value, reward, done, terminated)
        else:  # TD(0) = TD(lambda=0), TD(1) = TD(lambda=1): the advantage is the return minus V(s)
            lmbda = {ValueEstimators.TD0: 0.0, ValueEstimators.TD1: 1.0}.get(self.value_type, float(self.lmbda))
            value_target = td_lambda_return(reward, done, terminated, next_value, self.gamma, lmbda, time_dim=0)
            advantage = value_target - value
        if self.average_gae:
            advantage = standardize(advantage)
        rollout.set(keys.advantage, advantage)
        rollout.set(keys.value_target, value_target)
        return rollout

    # ---- loss terms -------------------------------------------------------------------------------------
    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        advantage = batch.get(keys.advantage, None)
        if advantage is None:
            raise KeyError(f"PPOLoss: the batch has no {keys.advantage!r}; call loss.compute_advantage(rollout) on the "
                           "rollout first (rltrain.onpolicy.RolloutSource does)")
        advantage = advantage.squeeze(-1) if advantage.dim() > batch.batch_dims else advantage
        if self.normalize_advantage:
            advantage = standardize(advantage)
        dist = self.actor_network.distribution(*(batch.get(k) for k in self.obs_keys))
        out: dict[str, torch.Tensor] = self._objective_terms(dist, batch, advantage)
        if self.entropy_bonus:
            entropy = policy_entropy(dist, self.samples_mc_entropy)
            out["loss_entropy"] = self._reduce(-self.entropy_coeff * entropy)
            out["entropy"] = entropy.detach().mean()
        out.update(self._critic_terms(batch))
        return loss_output(out)

    def _objective_terms(self, dist, batch: TensorDictBase, advantage: torch.Tensor) -> dict[str, torch.Tensor]:
        log_prob = action_log_prob(dist, batch.get(self._tensor_keys.action))
        old_log_prob = batch.get(self._tensor_keys.sample_log_prob).detach()
        if old_log_prob.dim() > log_prob.dim():
            old_log_prob = old_log_prob.squeeze(-1)
        log_weight = log_prob - old_log_prob
        log_weight_clipped = log_weight.clamp(*self._log_clip_bounds)
        gain = torch.minimum(log_weight.exp() * advantage, log_weight_clipped.exp() * advantage)
        return {
            "loss_objective": self._reduce(-gain),
            "clip_fraction": (log_weight_clipped != log_weight).float().mean().detach(),
            "kl_approx": (old_log_prob - log_prob).mean().detach(),
        }

    def _critic_terms(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        keys = self._tensor_keys
        target = batch.get(keys.value_target).squeeze(-1)
        value = self._state_value(batch).squeeze(-1)
        loss = self._distance(value, target)
        out = {}
        if self.clip_value is not None:
            old_value = batch.get(keys.value).squeeze(-1).detach()
            clipped = old_value + (value - old_value).clamp(-self.clip_value, self.clip_value)
            loss = torch.maximum(loss, self._distance(clipped, target))
            out["value_clip_fraction"] = (clipped != value).float().mean().detach()
        out["loss_critic"] = self._reduce(self.critic_coeff * loss)
        out["explained_variance"] = _explained_variance(value.detach(), target)
        return out


def _explained_variance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Var(target - prediction) / Var(target)`` (a metric; NaN-free: 0 variance gives 0)."""
    if target.numel() <= 1:
        return torch.zeros((), device=target.device)
    var_target = target.var()
    return torch.where(var_target > 0, 1 - (target - prediction).var() / var_target.clamp_min(1e-12),
                       torch.zeros_like(var_target))


ClipPPOLoss = PPOLoss
