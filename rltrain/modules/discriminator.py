"""The GAIL discriminator: an MLP ``D(s, a)`` giving one logit per state-action pair.

The logit ``z`` says how expert-like the pair looks: ``sigmoid(z)`` is the probability that it comes
from the expert. Losses work on the logit (stable BCE-with-logits, see
:mod:`rltrain.objectives.gail`); the module never applies the sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rltrain.modules.mlp import MLP

NestedKey = str | tuple[str, ...]


class Discriminator(TensorDictModuleBase):
    """``cat[observation, action] -> MLP -> logit [*B, 1]``.

    Args:
        obs_dim: observation size.
        action_dim: action size for continuous actions. Ignored for discrete actions (may be
            ``None``, 1 or ``num_actions`` there).
        num_cells: hidden layer sizes (the GAIL reference uses 128-128).
        activation: hidden activation, a name (``"relu"``, ``"tanh"``, ...) or an ``nn.Module`` class.
        num_actions: number of discrete actions; the action is then one-hot encoded before the MLP.
            Int64 indices (``[*B]`` or ``[*B, 1]``) and float one-hot (or soft, e.g. interpolated)
            vectors ``[*B, num_actions]`` are both accepted.
        in_keys: the observation and action keys read by :meth:`forward`.
        out_keys: where :meth:`forward` writes the logit.

    :meth:`logits` is the plain-tensor path (objectives call it directly).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int | None = None,
        num_cells: Sequence[int] = (128, 128),
        activation: str | type[nn.Module] = "relu",
        *,
        num_actions: int | None = None,
        in_keys: Sequence[NestedKey] = ("observation", "action"),
        out_keys: Sequence[NestedKey] = ("d_logits",),
    ):
        super().__init__()
        if obs_dim < 1:
            raise ValueError(f"Discriminator: obs_dim must be >= 1, got {obs_dim}")
        if num_actions is not None:
            if num_actions < 2:
                raise ValueError(f"Discriminator: num_actions must be >= 2 for discrete actions, got {num_actions}")
            if action_dim not in (None, 1, num_actions):
                raise ValueError(f"Discriminator: with num_actions={num_actions} (discrete actions) action_dim must be "
                                 f"None, 1 or {num_actions}, got {action_dim}")
            action_width = num_actions
        elif action_dim is None or action_dim < 1:
            raise ValueError(f"Discriminator: give action_dim >= 1 (continuous actions) or num_actions (discrete), "
                             f"got action_dim={action_dim}")
        else:
            action_width = action_dim
        in_keys, out_keys = list(in_keys), list(out_keys)
        if len(in_keys) != 2 or len(out_keys) != 1:
            raise ValueError(f"Discriminator: in_keys must be [observation key, action key] and out_keys one key, got "
                             f"{in_keys} and {out_keys}")
        self.in_keys, self.out_keys = in_keys, out_keys
        self.obs_dim, self.action_width, self.num_actions = obs_dim, action_width, num_actions
        self.net = MLP(obs_dim + action_width, 1, num_cells, activation)

    @property
    def discrete(self) -> bool:
        return self.num_actions is not None

    def encode_action(self, action: torch.Tensor, batch_dims: int) -> torch.Tensor:
        """The action as the MLP reads it: float, one-hot for discrete indices ``[*B]``/``[*B, 1]``."""
        if not self.discrete:
            return action.float() if not action.is_floating_point() else action
        if action.is_floating_point():
            if action.dim() != batch_dims + 1 or action.shape[-1] != self.num_actions:
                raise ValueError(f"Discriminator: a float discrete action must be a (soft) one-hot vector "
                                 f"[*B, {self.num_actions}], got shape {tuple(action.shape)}; pass int64 indices "
                                 "otherwise")
            return action
        if action.dim() == batch_dims + 1:
            action = action.squeeze(-1)
        return F.one_hot(action.long(), self.num_actions).float()

    def logits(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``D``'s logit ``[*B, 1]`` for observations ``[*B, obs_dim]`` and actions."""
        return self.net(observation, self.encode_action(action, observation.dim() - 1))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs_key, action_key = self.in_keys
        tensordict.set(self.out_keys[0], self.logits(tensordict.get(obs_key), tensordict.get(action_key)))
        return tensordict
