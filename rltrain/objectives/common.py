"""The ``LossModule`` base class and the small pieces of math every objective shares.

An objective is an ``nn.Module``: ``objective(batch)`` returns a TensorDict of scalar loss terms
``loss_*`` plus detached metrics. Two promises let one generic Trainer drive every objective:

1. **Gradient isolation.** Each loss term sends gradient only into its own parameter group.
   :attr:`LossModule.loss_groups` maps term -> group (``{"loss_actor": "actor", ...}``) and
   :meth:`LossModule.group_parameters` lists a group's parameters, so the Trainer can sum all terms,
   call ``backward()`` once and step one optimizer per group.
2. **Targets are the objective's own.** Target networks are frozen copies held by the objective
   (:meth:`LossModule.register_target`); updaters find them through :meth:`LossModule.target_pairs`.

Shared math:

* distance ``d(x, y)``: ``"l2"`` -> ``(x - y)^2`` (no 1/2), ``"l1"`` -> ``|x - y|``,
  ``"smooth_l1"`` -> Huber with beta = 1;
* TD(0) target ``y = r + gamma^n * (1 - terminated) * V(s')`` -- bootstrapping is cut by
  *terminated* only, so a truncated step (a time limit) still bootstraps; ``n`` is
  ``steps_to_next_obs`` when the batch has it (n-step returns), else 1. Objectives that bootstrap
  also take TD(1) and TD(lambda) on trajectory batches ``[..., T]``
  (:mod:`rltrain.objectives.value_estimators`, chosen with ``make_value_estimator``);
* a batch that lacks a key the objective reads raises :class:`MissingKeyError` (a ``KeyError``)
  naming the key, the keys read and the configurable keys (:func:`report_missing_keys`, applied to
  every objective's ``forward`` and ``forward_terms``);
* reduction over the batch: ``"mean"`` (or ``None``), ``"sum"``, ``"none"``; with priority weights
  ``w`` (``batch["priority_weight"]``), mean is ``sum(w * l) / sum(w)`` and sum is ``sum(w * l)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.ensemble import frozen_copy
from rltrain.objectives.value_estimators import ValueEstimators, parse_value_estimator, td0_return, td_lambda_return

NestedKey = str | tuple[str, ...]

LOSS_FUNCTIONS = ("l1", "l2", "smooth_l1")
#: the estimators of objectives that bootstrap from a next-state value (the reference's TD0/TD1/TDLambda)
BOOTSTRAP_ESTIMATORS = (ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda)
REDUCTIONS = ("mean", "sum", "none")


@dataclasses.dataclass
class TransitionKeys:
    """The TensorDict keys every off-policy objective reads (reward, done, terminated, the priority
    weight) or writes (the priority); each objective's ``_AcceptedKeys`` adds its own."""

    priority: NestedKey = "td_error"
    reward: NestedKey = "reward"
    done: NestedKey = "done"
    terminated: NestedKey = "terminated"
    priority_weight: NestedKey = "priority_weight"


def next_key(key: NestedKey) -> tuple[str, ...]:
    """The key of ``key`` in the ``"next"`` sub-TensorDict."""
    return ("next", *((key,) if isinstance(key, str) else key))


def critic_inputs(batch: TensorDictBase, in_keys: list[NestedKey], action_key: NestedKey, action: torch.Tensor,
                  next_state: bool = False) -> list[torch.Tensor]:
    """A critic's inputs in ``in_keys`` order: ``action`` for the action key, the batch's (next)
    observations for the others."""
    return [action if key == action_key else batch.get(next_key(key) if next_state else key) for key in in_keys]


def distance_loss(x: torch.Tensor, y: torch.Tensor, loss_function: str) -> torch.Tensor:
    """Elementwise regression loss between prediction ``x`` and target ``y`` (shapes must match)."""
    if x.shape != y.shape:
        raise RuntimeError(f"distance_loss: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if loss_function == "l2":
        return (x - y).pow(2)
    if loss_function == "l1":
        return (x - y).abs()
    if loss_function == "smooth_l1":
        return F.smooth_l1_loss(x, y, reduction="none")
    raise ValueError(f"unknown loss_function {loss_function!r}; accepted: {LOSS_FUNCTIONS}")


def loss_output(terms: dict) -> TensorDict:
    """An objective's output: its loss terms and metrics in a TensorDict with batch size ``[]``
    (built without the constructor's checks, which cost as much as a small layer on CPU)."""
    return TensorDict._new_unsafe(terms, batch_size=torch.Size([]))


def td0_target(reward: torch.Tensor, terminated: torch.Tensor, next_value: torch.Tensor,
               gamma: float | torch.Tensor) -> torch.Tensor:
    """``r + gamma * (1 - terminated) * V(s')``; truncated steps bootstrap.

    Terminated rows are masked with ``where``, so a non-finite ``V(s')`` there (e.g. a NaN next
    observation after the end of an episode) does not leak into the target.
    """
    return td0_return(reward, terminated, next_value, gamma)


class MissingKeyError(KeyError):
    """A batch lacks a key an objective reads."""


class _KeyProbe(TensorDict):
    """A shallow view of a batch that records the keys read without a default (the required ones)."""

    def get(self, key, *default, **kwargs):
        if default or "default" in kwargs:
            return super().get(key, *default, **kwargs)
        self._read.setdefault(key, None)
        try:
            value = super().get(key)
        except KeyError:
            value = None
        if value is None:
            self._missing.setdefault(key, None)
        return value


def _probe_missing_keys(method, loss: LossModule, batch: TensorDictBase, args, kwargs):
    """Re-run ``method`` on a recording view of ``batch``: ``(missing keys, keys read)``."""
    probe = _KeyProbe._new_unsafe(source=dict(batch.items()), batch_size=batch.batch_size, device=batch.device)
    probe._read, probe._missing = {}, {}
    try:
        with torch.no_grad():
            method(loss, probe, *args, **kwargs)
    except Exception:  # noqa: BLE001 -- the probe run fails by design at the first missing key
        pass
    return list(probe._missing), list(probe._read)


def report_missing_keys(method):
    """Wrap an objective's ``forward``/``forward_terms``: when it fails on a batch that lacks a key it
    reads (tensordict returns None, and the math then fails on it), raise :class:`MissingKeyError`
    naming that key instead. Free on success; on failure the call is repeated once on a recording
    view of the batch to find the key."""

    @functools.wraps(method)
    def checked(self, batch, *args, **kwargs):
        try:
            return method(self, batch, *args, **kwargs)
        except (TypeError, AttributeError, KeyError) as err:
            if isinstance(err, MissingKeyError) or not isinstance(batch, TensorDictBase):
                raise
            missing, read = _probe_missing_keys(method, self, batch, args, kwargs)
            if not missing:
                raise
            configurable = {f.name: getattr(self._tensor_keys, f.name) for f in dataclasses.fields(self._tensor_keys)}
            raise MissingKeyError(
                f"{type(self).__name__}: the batch has no key {missing[0]!r}. The keys it expects (those read "
                f"before it stopped): {read}; its configurable keys (set_keys): {configurable}; the batch has "
                f"{sorted(batch.keys(True, True), key=str)}") from err

    checked.reports_missing_keys = True
    return checked


def reduce_loss(loss: torch.Tensor, reduction: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-sample loss over the batch, optionally with priority weights."""
    if reduction == "none":
        return loss if weight is None else loss * weight
    if weight is None:
        return loss.mean() if reduction == "mean" else loss.sum()
    weighted = (loss * weight).sum()
    return weighted / weight.sum() if reduction == "mean" else weighted


def _check_choice(name: str, value: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"unknown {name} {value!r}; accepted: {accepted}")
    return value


class LossModule(nn.Module):
    """Base class of every objective.

    Subclasses define a dataclass ``_AcceptedKeys`` (the configurable TensorDict keys), call
    :meth:`_init_common` in their constructor, declare ``loss_groups`` and implement
    :meth:`_group_members` and ``forward``.
    """

    @dataclasses.dataclass
    class _AcceptedKeys:
        pass

    loss_groups: ClassVar[dict[str, str]] = {}
    default_value_estimator: ClassVar[ValueEstimators] = ValueEstimators.TD0
    #: what ``make_value_estimator`` accepts; objectives that bootstrap add TD1 and TDLambda
    supported_value_estimators: ClassVar[tuple[ValueEstimators, ...]] = (ValueEstimators.TD0,)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "forward_terms"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "reports_missing_keys", False):
                setattr(cls, name, report_missing_keys(method))

    def _init_common(self, *, loss_function: str, reduction: str | None, gamma, priority_key,
                     use_prioritized_weights: bool | str = "auto") -> None:
        if gamma is not None:
            raise TypeError("passing gamma to the constructor is deprecated: call "
                            "loss.make_value_estimator(gamma=...) instead")
        if priority_key is not None:
            raise TypeError("passing priority_key to the constructor is deprecated: call "
                            "loss.set_keys(priority=...) instead")
        self.loss_function = _check_choice("loss_function", loss_function, LOSS_FUNCTIONS)
        self.reduction = _check_choice("reduction", reduction or "mean", REDUCTIONS)
        if use_prioritized_weights not in ("auto", True, False):
            raise ValueError(f"use_prioritized_weights must be 'auto', True or False, got {use_prioritized_weights!r}")
        self.use_prioritized_weights = use_prioritized_weights
        self._tensor_keys = self._AcceptedKeys()
        self._targets: list[tuple[str, str]] = []
        self._targets_version = 0
        self.value_type = self.default_value_estimator
        self.td_lambda = 0.95
        self.time_dim: int | None = None
        self.register_buffer("gamma", torch.tensor(0.99))

    # ---- keys ----------------------------------------------------------------------------
    @property
    def tensor_keys(self):
        return self._tensor_keys

    def set_keys(self, **keys: NestedKey | None) -> LossModule:
        """Rename input/output TensorDict keys; ``None`` restores a key's default."""
        accepted = {f.name: f.default for f in dataclasses.fields(self._AcceptedKeys)}
        for name, value in keys.items():
            if name not in accepted:
                raise ValueError(f"{type(self).__name__}.set_keys: unknown key {name!r}; accepted: {sorted(accepted)}")
            setattr(self._tensor_keys, name, accepted[name] if value is None else value)
        return self

    # ---- value estimator --------------------------------------------------------------------
    def make_value_estimator(self, value_type: ValueEstimators | str | None = None, *,
                             gamma: float | None = None, lmbda: float | None = None, time_dim: int | None = None,
                             **hyperparams) -> LossModule:
        """Choose the bootstrap estimator (``supported_value_estimators``) and its discount.

        ``lmbda`` is TD(lambda)'s lambda (default 0.95); ``time_dim`` the batch dimension that is time
        for TD(1)/TD(lambda) (default: the last batch dimension, which must then not be the only one:
        a flat replay sample is not a trajectory).
        """
        if value_type is not None:
            self.value_type = parse_value_estimator(value_type, type(self).__name__, self.supported_value_estimators)
        if hyperparams:
            raise TypeError(f"unexpected value-estimator arguments {sorted(hyperparams)}; accepted: gamma, lmbda, "
                            "time_dim")
        if gamma is not None:
            if not 0.0 <= gamma <= 1.0:
                raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
            self.gamma.fill_(float(gamma))
        if lmbda is not None:
            if not 0.0 <= lmbda <= 1.0:
                raise ValueError(f"lmbda must lie in [0, 1], got {lmbda}")
            self.td_lambda = float(lmbda)
        if time_dim is not None:
            self.time_dim = int(time_dim)
        return self

    def _value_target(self, batch: TensorDictBase, reward: torch.Tensor, terminated: torch.Tensor,
                      next_value: torch.Tensor, discount: float | torch.Tensor) -> torch.Tensor:
        """The bootstrapped target of the chosen estimator (:mod:`rltrain.objectives.value_estimators`);
        ``reward``, ``terminated`` and ``next_value`` share one shape ``[*B]`` or ``[*B, 1]``."""
        if self.value_type is ValueEstimators.TD0:
            return td0_return(reward, terminated, next_value, discount)
        time_dim = self.time_dim
        if time_dim is None:
            if batch.batch_dims < 2:
                raise ValueError(f"{type(self).__name__}: {self.value_type.value} needs trajectory batches [..., T]; "
                                 f"got batch shape {tuple(batch.batch_size)} (a flat replay sample is not a "
                                 "trajectory): pass make_value_estimator(time_dim=0) for a single trajectory")
            time_dim = batch.batch_dims - 1
        done = batch.get(next_key(self._tensor_keys.done), None)
        done = terminated if done is None else done.reshape(terminated.shape).bool()
        lmbda = 1.0 if self.value_type is ValueEstimators.TD1 else self.td_lambda
        discount = torch.as_tensor(discount, dtype=reward.dtype, device=reward.device)
        return td_lambda_return(reward, done, terminated, next_value, discount.reshape(
            discount.shape if discount.dim() == 0 else reward.shape), lmbda, time_dim)

    def _discount(self, batch: TensorDictBase) -> torch.Tensor:
        steps = batch.get("steps_to_next_obs", None)
        return self.gamma if steps is None else self.gamma ** steps

    def _transition(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reward [*B], terminated [*B] bool, discount)``; terminated falls back to done."""
        keys = self._tensor_keys
        reward = batch.get(next_key(keys.reward)).squeeze(-1)
        terminated = batch.get(next_key(keys.terminated), None)
        if terminated is None:
            terminated = batch.get(next_key(keys.done))
        discount = self._discount(batch)
        return reward, terminated.squeeze(-1).bool(), discount.squeeze(-1) if discount.dim() > 0 else discount

    # ---- reductions -----------------------------------------------------------------------
    def _priority_weight(self, batch: TensorDictBase) -> torch.Tensor | None:
        if self.use_prioritized_weights is False:
            return None
        weight = batch.get(self._tensor_keys.priority_weight, None)
        if weight is None and self.use_prioritized_weights is True:
            raise KeyError(f"use_prioritized_weights=True but the batch has no {self._tensor_keys.priority_weight!r}")
        return weight

    def _reduce(self, loss: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return reduce_loss(loss, self.reduction, weight)

    def _distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return distance_loss(x, y, self.loss_function)

    # ---- targets ----------------------------------------------------------------------------
    def register_target(self, name: str, delay: bool) -> nn.Module:
        """Give ``self.<name>`` a target ``self.target_<name>``.

        ``delay=True`` makes a frozen copy (parameters become buffers: saved, never trained) that an
        updater moves towards the online network; ``delay=False`` aliases the online network (the
        objective detaches it where it reads targets).
        """
        online = getattr(self, name)
        if delay:
            setattr(self, f"target_{name}", frozen_copy(online))
            self._targets.append((name, f"target_{name}"))
        else:
            self.__dict__[f"target_{name}"] = online
        return getattr(self, f"target_{name}")

    def target_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(sources, targets)``: online parameters and floating-point buffers, and their targets."""
        sources, targets = [], []
        for online_name, target_name in self._targets:
            online, target = getattr(self, online_name), getattr(self, target_name)
            target_tensors = dict(target.named_buffers())
            for name, tensor in [*online.named_parameters(), *online.named_buffers()]:
                if tensor.is_floating_point():
                    sources.append(tensor)
                    targets.append(target_tensors[name])
        if not targets:
            raise RuntimeError(f"{type(self).__name__} has no target networks (all delay_* flags are False)")
        return sources, targets

    @property
    def targets_version(self) -> int:
        """Changes whenever tensors may have been replaced (``.to()``), so updaters re-collect pairs."""
        return self._targets_version

    def _apply(self, fn, recurse=True):
        self._targets_version += 1
        return super()._apply(fn, recurse)

    def forward_terms(self, batch: TensorDictBase, terms: frozenset[str]) -> TensorDictBase:
        """The loss terms in ``terms`` (keys of :attr:`loss_groups`); others may be left out.

        A Trainer that steps some groups less often than others (TD3's delayed actor) asks only
        for the terms due; an objective that can skip the work of the others overrides this. The
        default computes everything.
        """
        return self(batch)

    # ---- parameter groups ----------------------------------------------------------------------
    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def group_parameters(self, group: str) -> list[nn.Parameter]:
        """The trainable parameters of one group (``"actor"``, ``"qvalue"``, ...)."""
        members = self._group_members()
        if group not in members:
            raise KeyError(f"{type(self).__name__} has no parameter group {group!r}; groups: {sorted(members)}")
        return members[group]

    @property
    def parameter_groups(self) -> list[str]:
        """Names of the groups that have trainable parameters."""
        return [group for group, params in self._group_members().items() if params]

    def _scalar_outputs_allowed(self) -> bool:
        """With ``reduction="none"``, scalar metrics (alpha, entropy) are left out of the output."""
        if self.reduction != "none":
            return True
        if getattr(self, "scalar_output_mode", None) is None:
            warnings.warn(f"{type(self).__name__}: reduction='none' leaves scalar metrics out of the output; "
                          "pass scalar_output_mode='exclude' to silence this", stacklevel=3)
        return False


def resolve_target_entropy(target_entropy: str | float, action_spec) -> float:
    """``"auto"`` -> ``-dim(A)`` (minus the number of action dimensions); a number passes through."""
    if target_entropy != "auto":
        return float(target_entropy)
    if action_spec is None:
        raise RuntimeError("target_entropy='auto' needs the action spec: pass action_spec= or give the actor a spec")
    return -float(math.prod(action_spec.shape))


class TemperatureMixin:
    """The entropy temperature of SAC-style objectives: ``alpha = exp(log_alpha)``.

    ``log_alpha`` is a parameter (group ``"alpha"``) or, with ``fixed_alpha``, a buffer. Reading
    :attr:`_alpha` clamps ``log_alpha`` into ``[log min_alpha, log max_alpha]`` in place and returns
    alpha without gradient. ``min_alpha`` None or 0 = no lower bound; with only ``min_alpha`` given the
    upper bound is 1e9.
    """

    def _init_alpha(self, alpha_init: float, min_alpha: float | None, max_alpha: float | None,
                    fixed_alpha: bool) -> None:
        if alpha_init <= 0:
            raise ValueError(f"alpha_init must be positive, got {alpha_init}")
        if max_alpha is not None and max_alpha <= 0:
            raise ValueError(f"max_alpha must be positive or None, got {max_alpha}")
        if min_alpha is not None and min_alpha < 0:
            raise ValueError(f"min_alpha must be >= 0 or None, got {min_alpha}")
        if min_alpha is not None and max_alpha is not None and min_alpha > max_alpha:
            raise ValueError(f"min_alpha ({min_alpha}) must not exceed max_alpha ({max_alpha})")
        if min_alpha and max_alpha is None:
            max_alpha = 1e9
        self.fixed_alpha = fixed_alpha
        self.min_log_alpha = math.log(min_alpha) if min_alpha else None
        self.max_log_alpha = math.log(max_alpha) if max_alpha is not None else None
        self.register_buffer("alpha_init", torch.tensor(float(alpha_init)))
        log_alpha = torch.tensor(math.log(alpha_init))
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.log_alpha = nn.Parameter(log_alpha)

    @property
    def _alpha(self) -> torch.Tensor:
        """The temperature, without gradient; clamps ``log_alpha`` into its bounds first."""
        if self.min_log_alpha is not None or self.max_log_alpha is not None:
            self.log_alpha.data.clamp_(self.min_log_alpha, self.max_log_alpha)
        return self.log_alpha.detach().exp()

    def _alpha_group(self) -> list[nn.Parameter]:
        return [] if self.fixed_alpha else [self.log_alpha]
