r"""Diffusion behaviour cloning: the DDPM noise-prediction objective (Ho et al. 2020; Chi et al. 2023).

Notation: demonstration action ``a`` (the batch's ``action``) mapped to ``[-1, 1]`` by the actor's
:meth:`~rltrain.modules.diffusion.DiffusionActor.normalize_action`, observation ``s``, the DDPM's
schedule ``abar_t`` and denoiser ``eps_hat`` (:mod:`rltrain.modules.diffusion`). Per batch element::

    t   ~ U{0, ..., T-1}                 (the global torch RNG, seeded by the Trainer)
    eps ~ N(0, I)                         [*B, A]
    x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps
    l   = (eps_hat(x_t, s, t) - eps)^2    elementwise, [*B, A]

``loss_diffusion_bc = R(l)``: ``"mean"`` over batch *and* action dims, ``"sum"``, or ``"none"``
(``[*B, A]``). ``t``, ``eps`` and ``a`` carry no gradient; the only term trains the actor (group
``actor``: the denoiser's parameters).
"""

from __future__ import annotations

import dataclasses

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.modules.diffusion import DiffusionActor
from rltrain.objectives.common import LossModule, NestedKey, loss_output


class DiffusionBCLoss(LossModule):
    """The DDPM epsilon-prediction loss of a :class:`~rltrain.modules.diffusion.DiffusionActor`.

    Args:
        actor_network: the diffusion actor (its ``.module`` is the DDPM).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Keys (``set_keys``): ``action`` (the clean demonstration action), ``observation``.
    Output: ``loss_diffusion_bc``.
    """

    @dataclasses.dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"
        observation: NestedKey = "observation"

    loss_groups = {"loss_diffusion_bc": "actor"}

    def __init__(self, actor_network: DiffusionActor, *, reduction: str | None = "mean"):
        super().__init__()
        if not isinstance(actor_network, DiffusionActor):
            raise TypeError("DiffusionBCLoss needs a rltrain.modules.diffusion.DiffusionActor, got "
                            f"{type(actor_network).__name__}")
        self._init_common(loss_function="l2", reduction=reduction, gamma=None, priority_key=None,
                          use_prioritized_weights=False)
        self.actor_network = actor_network

    def _group_members(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor_network.parameters())}

    def forward(self, batch: TensorDictBase) -> TensorDict:
        action = batch.get(self._tensor_keys.action)
        if not action.is_floating_point():
            raise ValueError(f"DiffusionBCLoss needs continuous (floating-point) actions, got dtype {action.dtype}: "
                             "use a Box action space (for a discrete one, BC with cross-entropy)")
        obs = batch.get(self._tensor_keys.observation)
        ddpm = self.actor_network.module
        clean = self.actor_network.normalize_action(action)
        t = torch.randint(ddpm.num_steps, clean.shape[:-1], device=clean.device)
        eps = torch.randn_like(clean)
        eps_hat = ddpm.predict_noise(ddpm.add_noise(clean, t, eps), obs, t)
        return loss_output({"loss_diffusion_bc": self._reduce((eps_hat - eps).pow(2))})
