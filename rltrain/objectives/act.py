r"""ACT: the conditional-VAE objective of the Action Chunking Transformer (Zhao et al. 2023).

Notation: state ``s``, demonstrated action chunk ``a_{1:H}`` ``[*B, H, A]`` (the batch's
``action_chunk``), its padding mask ``pad`` ``[*B, H]`` (True where the episode ended before that
step; optional), the actor's prediction ``a_hat = actor(s, a_{1:H})`` ``[*B, H, A]`` and latent
posterior ``N(mu, exp(log_var))`` ``[*B, L]``. Per sample::

    recon = 1/(H*A) * sum_{h, j} (1 - pad_h) * |a_hat_{h,j} - a_{h,j}|
    kl    = sum_{l} -1/2 * (1 + log_var_l - mu_l^2 - exp(log_var_l))        (KL to N(0, I))

Without a padding mask, ``recon`` is the plain mean over ``H`` and ``A``. With one, padded steps
contribute 0 but the denominator stays ``H*A``: exactly ACT's own training code (and LeRobot's), so
a chunk near an episode's end weighs a little less. Padded actions are also masked out of the
CVAE encoder's attention (the actor reads the mask).

Each of ``recon`` and ``kl`` is reduced over the batch (``"mean"``, ``"sum"``; ``"none"`` keeps the
batch shape ``[*B]``), then::

    loss_act            = recon + kl_weight * kl        (trains the actor: group "actor")
    loss_reconstruction = sg(recon)                      (metric)
    loss_kl             = sg(kl)                         (metric)

**The actor's inputs.** The actor gets a fresh TensorDict holding the observation and the chunk
under the reference's literal keys ``"observation"`` and ``"action_chunk"`` (the reference layout,
what an actor written for the reference API reads) and also under the batch keys of ``set_keys``
(``observation``, ``action_chunk``, default ``("vla_action", "chunk")``: rltrain's layout, what
:class:`~rltrain.modules.ACTActor` reads by default), plus the padding mask if the batch has one.

Only ``loss_act`` carries gradient and is listed in ``loss_groups``; the two components are
detached, so a Trainer summing every ``loss_*`` entry trains exactly on ``loss_act``. The target
chunk and the padding mask carry no gradient.
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rltrain.objectives.common import LossModule, NestedKey, loss_output

DEFAULT_KL_WEIGHT = 10.0
# The keys under which the reference's ACTLoss hands the actor its inputs.
REFERENCE_OBSERVATION_KEY, REFERENCE_CHUNK_KEY = "observation", "action_chunk"


def resolve_kl_weight(kl_weight: float | None, kl_coeff: float | None) -> float:
    """``kl_weight``, or its alias ``kl_coeff`` (the reference page's name); not both."""
    if kl_weight is not None and kl_coeff is not None:
        raise ValueError("ACTLoss: give kl_weight or its alias kl_coeff, not both")
    weight = kl_weight if kl_weight is not None else kl_coeff if kl_coeff is not None else DEFAULT_KL_WEIGHT
    if weight < 0:
        raise ValueError(f"ACTLoss: kl_weight must be >= 0, got {weight}")
    return float(weight)


def chunk_l1(pred: torch.Tensor, target: torch.Tensor, action_is_pad: torch.Tensor | None) -> torch.Tensor:
    """Per-sample ``mean_{H, A} |pred - target|`` ``[*B]``, padded steps counted as 0."""
    if pred.shape != target.shape:
        raise RuntimeError(f"ACTLoss: the prediction {tuple(pred.shape)} and the action chunk "
                           f"{tuple(target.shape)} differ in shape")
    error = (pred - target).abs()
    if action_is_pad is not None:
        error = torch.where(action_is_pad.bool().unsqueeze(-1), 0.0, error)
    return error.mean(dim=(-2, -1))


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(mu, exp(log_var)) || N(0, I))`` summed over the latent dim ``[*B]``."""
    return (-0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp())).sum(-1)


class ACTLoss(LossModule):
    """The ACT objective (module docstring).

    Args:
        actor_network: a TensorDict module (e.g. :class:`~rltrain.modules.act.ACTActor`) that reads
            the observation and the action chunk (and the padding mask if present) and writes the
            prediction, ``mu`` and ``log_var``.
        kl_weight: the KL weight (default 10, ACT's); ``kl_coeff`` is an alias (not both).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Keys (``set_keys``): ``observation``, ``action_chunk`` (default ``("vla_action", "chunk")``),
    ``action_is_pad``, ``action_pred``, ``mu``, ``log_var``.
    Output: ``loss_act``, ``loss_reconstruction``, ``loss_kl``.
    """

    @dataclasses.dataclass
    class _AcceptedKeys:
        observation: NestedKey = "observation"
        action_chunk: NestedKey = ("vla_action", "chunk")
        action_is_pad: NestedKey = "action_is_pad"
        action_pred: NestedKey = "action_pred"
        mu: NestedKey = "mu"
        log_var: NestedKey = "log_var"

    loss_groups = {"loss_act": "actor"}

    def __init__(self, actor_network: TensorDictModuleBase, *, kl_weight: float | None = None,
                 kl_coeff: float | None = None, reduction: str | None = "mean"):
        super().__init__()
        if not isinstance(actor_network, TensorDictModuleBase):
            raise TypeError("ACTLoss needs a TensorDict actor (e.g. rltrain.modules.act.ACTActor), got "
                            f"{type(actor_network).__name__}")
        self.kl_weight = resolve_kl_weight(kl_weight, kl_coeff)
        self._init_common(loss_function="l1", reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.actor_network = actor_network

    @property
    def kl_coeff(self) -> float:
        """Alias of :attr:`kl_weight` (the reference page's name)."""
        return self.kl_weight

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters())}

    def _actor_inputs(self, batch: TensorDictBase) -> tuple[TensorDict, torch.Tensor, torch.Tensor | None]:
        """A fresh TensorDict with the observation and the chunk (under the reference's keys and the
        batch's) and, if present, the padding mask."""
        keys = self._tensor_keys
        chunk = batch.get(keys.action_chunk)
        if not chunk.is_floating_point():
            raise ValueError(f"ACTLoss needs continuous (floating-point) action chunks, got dtype {chunk.dtype}: "
                             "use a Box action space")
        pad = batch.get(keys.action_is_pad, None)
        observation = batch.get(keys.observation)
        inputs = TensorDict({REFERENCE_OBSERVATION_KEY: observation, REFERENCE_CHUNK_KEY: chunk},
                            batch_size=batch.batch_size, device=batch.device)
        inputs.set(keys.observation, observation)
        inputs.set(keys.action_chunk, chunk)
        if pad is not None:
            inputs.set(keys.action_is_pad, pad)
        return inputs, chunk, pad

    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self._tensor_keys
        inputs, chunk, pad = self._actor_inputs(batch)
        out = self.actor_network(inputs)
        recon = self._reduce(chunk_l1(out.get(keys.action_pred), chunk, pad))
        kl = self._reduce(gaussian_kl(out.get(keys.mu), out.get(keys.log_var)))
        return loss_output({
            "loss_act": recon + self.kl_weight * kl,
            "loss_reconstruction": recon.detach(),
            "loss_kl": kl.detach(),
        })
