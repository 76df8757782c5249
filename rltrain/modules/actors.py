"""TensorDict-in / TensorDict-out wrappers: ``SafeModule``, ``ValueOperator``, ``Actor``,
``ProbabilisticActor``, ``CategoricalActor`` (and, from :mod:`rltrain.modules.qvalue`, ``QValueActor``
and ``DistributionalQValueActor``, importable from here as from the reference's ``actors`` module).

They follow the reference pages' public API (built on ``tensordict.nn``), so user code written for
them ports by changing imports. Each wrapper also offers a plain-tensor path (:func:`call_tensors`,
``act``) that objectives and the collector use on the hot path: building TensorDicts costs tens of
microseconds a call, the math itself often less.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModule, TensorDictModuleBase, composite_lp_aggregate
from tensordict.nn.probabilistic import interaction_type  # tensordict.nn re-exports it only from 0.15.2
from torch import nn

from rltrain.modules.distributions import TanhNormal
from rltrain.modules.specs import Bounded

NestedKey = str | tuple[str, ...]


def _as_keys(keys: NestedKey | Sequence[NestedKey] | None, default: list[NestedKey]) -> list[NestedKey]:
    if keys is None:
        return list(default)
    if isinstance(keys, (str, tuple)):
        return [keys]
    return list(keys)


def default_log_prob_key(action_key: NestedKey = "action") -> str:
    """``"sample_log_prob"`` when tensordict aggregates log-probs, else ``"<action>_log_prob"``."""
    if composite_lp_aggregate():
        return "sample_log_prob"
    leaf = action_key if isinstance(action_key, str) else action_key[-1]
    return f"{leaf}_log_prob"


def call_tensors(module: TensorDictModuleBase, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Call a TensorDict module on its ``in_keys`` tensors and return its ``out_keys`` tensors.

    A ``TensorDictModule`` that wraps a plain ``nn.Module`` is bypassed (its inner module is called
    directly); any other TensorDict module runs through a TensorDict built on the fly.
    """
    if type(module) in _PLAIN_WRAPPERS and isinstance(module.module, nn.Module):
        out = module.module(*inputs)
        return (out,) if len(module.out_keys) == 1 else tuple(out)
    from tensordict import TensorDict

    td = TensorDict(dict(zip(module.in_keys, inputs)), batch_size=inputs[0].shape[:-1])
    td = module(td)
    return tuple(td.get(k) for k in module.out_keys)


class SafeModule(TensorDictModule):
    """A ``TensorDictModule`` with an optional output spec (the reference's ``SafeModule``).

    Args:
        module, in_keys, out_keys: as for ``tensordict.nn.TensorDictModule``.
        spec: the spec of the first output (kept for builders; e.g. a :class:`Bounded` action box).
        safe: project the first output onto ``spec`` (clamp into a :class:`Bounded` box); needs a
            Bounded spec.
    """

    def __init__(self, module: nn.Module, in_keys: Sequence[NestedKey], out_keys: Sequence[NestedKey], *,
                 spec: Bounded | None = None, safe: bool = False):
        if safe and not isinstance(spec, Bounded):
            raise ValueError(f"SafeModule(safe=True) projects its output onto a Bounded spec, got spec={spec!r}")
        super().__init__(module, in_keys=_as_keys(in_keys, []), out_keys=_as_keys(out_keys, []))
        self.spec = spec
        self.safe = safe

    def forward(self, tensordict: TensorDictBase, *args, **kwargs) -> TensorDictBase:
        tensordict = super().forward(tensordict, *args, **kwargs)
        if self.safe:
            key = self.out_keys[0]
            out = tensordict.get(key)
            tensordict.set(key, out.clamp(self.spec.low.to(out.device), self.spec.high.to(out.device)))
        return tensordict


class ValueOperator(TensorDictModule):
    """A value network: ``V(s)`` -> ``"state_value"`` or ``Q(s, a)`` -> ``"state_action_value"``.

    ``in_keys`` default to ``["observation", "action"]`` when the output key is
    ``"state_action_value"`` and to ``["observation"]`` otherwise.
    """

    def __init__(self, module: nn.Module, in_keys: Sequence[NestedKey] | None = None,
                 out_keys: Sequence[NestedKey] | None = None):
        if in_keys is None:
            in_keys = ["observation", "action"] if out_keys == ["state_action_value"] else ["observation"]
        in_keys = _as_keys(in_keys, ["observation"])
        default_out = "state_action_value" if "action" in in_keys else "state_value"
        super().__init__(module, in_keys=in_keys, out_keys=_as_keys(out_keys, [default_out]))


class Actor(TensorDictModule):
    """A deterministic policy ``a = mu(s)`` writing ``"action"``."""

    def __init__(self, module: nn.Module, in_keys: Sequence[NestedKey] | None = None,
                 out_keys: Sequence[NestedKey] | None = None, *, spec: Bounded | None = None):
        super().__init__(module, in_keys=_as_keys(in_keys, ["observation"]), out_keys=_as_keys(out_keys, ["action"]))
        self.spec = spec

    def act(self, *inputs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.module(*inputs)


_PLAIN_WRAPPERS = (TensorDictModule, ValueOperator, Actor)


def __getattr__(name: str):
    # The Q-value actors live in rltrain.modules.qvalue, which imports this module: load them on demand.
    if name in ("QValueActor", "DistributionalQValueActor"):
        from rltrain.modules import qvalue

        return getattr(qvalue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProbabilisticActor(TensorDictModuleBase):
    """A stochastic policy: a TensorDict module writes distribution parameters, which define a
    distribution that is sampled (or its mode taken) to write ``"action"``.

    Args:
        module: writes the distribution parameters (e.g. ``["loc", "scale"]``).
        in_keys: the keys of those parameters, passed to ``distribution_class`` in order.
        out_keys: the action key(s); default ``["action"]``.
        spec: action spec; its bounds become ``low``/``high`` of a :class:`TanhNormal` unless
            ``distribution_kwargs`` give them.
        distribution_class / distribution_kwargs: the distribution and extra arguments.
        return_log_prob: also write the sample's log-probability (``log_prob_key``).
        default_interaction_type: how to act outside ``set_interaction_type``:
            ``DETERMINISTIC`` (the mode) or ``RANDOM`` (a sample).
    """

    def __init__(
        self,
        module: TensorDictModuleBase,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        *,
        spec: Bounded | None = None,
        distribution_class: type[torch.distributions.Distribution] = TanhNormal,
        distribution_kwargs: dict | None = None,
        return_log_prob: bool = False,
        log_prob_key: str | None = None,
        default_interaction_type: InteractionType = InteractionType.DETERMINISTIC,
    ):
        super().__init__()
        self.module = module
        self.dist_keys = _as_keys(in_keys, ["loc", "scale"])
        action_keys = _as_keys(out_keys, ["action"])
        self.action_key = action_keys[0]
        self.log_prob_key = log_prob_key or default_log_prob_key(self.action_key)
        self.return_log_prob = return_log_prob
        self.spec = spec
        self.distribution_class = distribution_class
        self.distribution_kwargs = dict(distribution_kwargs or {})
        if spec is not None and distribution_class is TanhNormal and "low" not in self.distribution_kwargs:
            self.distribution_kwargs.update(low=spec.low, high=spec.high)
        self.default_interaction_type = default_interaction_type
        self.in_keys = list(module.in_keys)
        self.out_keys = [*module.out_keys, self.action_key] + ([self.log_prob_key] if return_log_prob else [])

    def distribution(self, *inputs: torch.Tensor) -> torch.distributions.Distribution:
        """The action distribution given the ``in_keys`` tensors (plain-tensor path)."""
        return self.distribution_class(*call_tensors(self.module, *inputs), **self.distribution_kwargs)

    def act(self, *inputs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        dist = self.distribution(*inputs)
        return dist.deterministic_sample if deterministic else dist.sample()

    def get_dist(self, tensordict: TensorDictBase) -> torch.distributions.Distribution:
        tensordict = self.module(tensordict)
        return self.distribution_class(*(tensordict.get(k) for k in self.dist_keys), **self.distribution_kwargs)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = self.module(tensordict)
        dist = self.distribution_class(*(tensordict.get(k) for k in self.dist_keys), **self.distribution_kwargs)
        mode = interaction_type() or self.default_interaction_type
        if mode is InteractionType.RANDOM:
            if hasattr(dist, "rsample_and_log_prob"):
                action, log_prob = dist.rsample_and_log_prob()
            else:
                action = dist.rsample()
                log_prob = dist.log_prob(action) if self.return_log_prob else None
        else:
            action = dist.deterministic_sample if hasattr(dist, "deterministic_sample") else dist.mode
            log_prob = dist.log_prob(action) if self.return_log_prob else None
        tensordict.set(self.action_key, action)
        if self.return_log_prob:
            tensordict.set(self.log_prob_key, log_prob)
        return tensordict


class CategoricalActor(TensorDictModuleBase):
    """A stochastic policy over ``n`` discrete actions: a network writes logits ``[*B, n]`` that
    define a ``torch.distributions.Categorical``; the action is an int64 index ``[*B]`` (what a
    gymnasium ``Discrete`` env takes).

    Args:
        module: the logits network: a plain ``nn.Module`` taking the ``in_keys`` tensors, or a
            TensorDict module writing the logits (its first out key).
        in_keys: the observation keys (default: the TensorDict module's, else ``["observation"]``).
        out_keys: the action key(s); default ``["action"]``.
        spec: the action spec (e.g. :class:`~rltrain.modules.Categorical`), kept for builders.
        logits_key: where :meth:`forward` writes the logits of a plain module (default
            ``"logits"``); a TensorDict module's own out key is used otherwise.
        return_log_prob: also write the action's log-probability (``log_prob_key``).
        default_interaction_type: how to act outside ``set_interaction_type``:
            ``DETERMINISTIC`` (the most likely action) or ``RANDOM`` (a sample).
    """

    def __init__(
        self,
        module: nn.Module,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        *,
        spec=None,
        logits_key: NestedKey = "logits",
        return_log_prob: bool = False,
        log_prob_key: str | None = None,
        default_interaction_type: InteractionType = InteractionType.DETERMINISTIC,
    ):
        super().__init__()
        self.module = module
        self._tensordict_net = isinstance(module, TensorDictModuleBase)
        self.in_keys = _as_keys(in_keys, list(module.in_keys) if self._tensordict_net else ["observation"])
        self.logits_key = module.out_keys[0] if self._tensordict_net else logits_key
        self.action_key = _as_keys(out_keys, ["action"])[0]
        self.log_prob_key = log_prob_key or default_log_prob_key(self.action_key)
        self.return_log_prob = return_log_prob
        self.spec = spec
        self.default_interaction_type = default_interaction_type
        self.out_keys = [self.logits_key, self.action_key] + ([self.log_prob_key] if return_log_prob else [])

    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-probabilities ``[*B, n]`` given the ``in_keys`` tensors (plain-tensor path)."""
        return call_tensors(self.module, *inputs)[0] if self._tensordict_net else self.module(*inputs)

    def distribution(self, *inputs: torch.Tensor) -> torch.distributions.Categorical:
        """The action distribution given the ``in_keys`` tensors (plain-tensor path)."""
        return torch.distributions.Categorical(logits=self.logits(*inputs), validate_args=False)

    def act(self, *inputs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The most likely action (``deterministic``) or a sample, as an int64 index ``[*B]``."""
        if deterministic:
            return self.logits(*inputs).argmax(-1)
        return self.distribution(*inputs).sample()

    def get_dist(self, tensordict: TensorDictBase) -> torch.distributions.Categorical:
        return self.distribution(*(tensordict.get(k) for k in self.in_keys))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        dist = self.get_dist(tensordict)
        mode = interaction_type() or self.default_interaction_type
        action = dist.sample() if mode is InteractionType.RANDOM else dist.logits.argmax(-1)
        tensordict.set(self.logits_key, dist.logits)
        tensordict.set(self.action_key, action)
        if self.return_log_prob:
            tensordict.set(self.log_prob_key, dist.log_prob(action))
        return tensordict
