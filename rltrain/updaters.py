r"""Target-network updaters.

Both find the target copies an objective owns through ``LossModule.target_pairs()`` (online
parameters and floating-point buffers such as BatchNorm statistics, paired with their targets) and
hard-copy the online values into the targets when constructed.

* :class:`SoftUpdate`: after each gradient update, ``target <- (1 - tau) * target + tau * online``
  (Polyak averaging, one fused ``torch._foreach_lerp_`` over all tensors). ``eps = 1 - tau`` is
  accepted instead of ``tau`` for compatibility with TorchRL; exactly one of the two.
* :class:`HardUpdate`: ``target <- online`` once every ``value_network_update_interval`` calls to
  :meth:`step` (on calls N, 2N, 3N, ...).
"""

from __future__ import annotations

import warnings

import torch

from rltrain.objectives.common import LossModule


class TargetNetUpdater:
    """Shared plumbing: validate the objective, cache its target pairs, copy once at start."""

    def __init__(self, loss_module: LossModule):
        if not isinstance(loss_module, LossModule):
            raise ValueError(f"a target updater needs a LossModule, got {type(loss_module).__name__}")
        self.loss_module = loss_module
        self._version = -1
        self._sources: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.init_()

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._version != self.loss_module.targets_version:
            self._sources, self._targets = self.loss_module.target_pairs()
            self._version = self.loss_module.targets_version
        return self._sources, self._targets

    @torch.no_grad()
    def init_(self) -> None:
        """Copy every online tensor into its target."""
        sources, targets = self._pairs()
        torch._foreach_copy_(targets, sources)

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SoftUpdate(TargetNetUpdater):
    """Polyak averaging ``target <- (1 - tau) * target + tau * online`` after every update.

    Args:
        loss_module: the objective that owns the targets.
        tau: weight of the online network in each update (e.g. 0.005).
        eps: weight kept by the target, ``eps = 1 - tau`` (TorchRL's parameter).
    """

    def __init__(self, loss_module: LossModule, *, eps: float | None = None, tau: float | None = None):
        if eps is not None and tau is not None:
            raise ValueError("SoftUpdate takes tau or eps (eps = 1 - tau), not both")
        if eps is None and tau is None:
            raise RuntimeError("SoftUpdate needs tau (e.g. tau=0.005) or eps = 1 - tau (e.g. eps=0.995)")
        eps = 1.0 - tau if eps is None else eps
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"SoftUpdate needs 0 <= tau <= 1 (eps = 1 - tau), got eps={eps}")
        if eps < 0.5:
            warnings.warn(f"SoftUpdate(eps={eps}) keeps only {eps:.3f} of the target per step; eps is 1 - tau, "
                          f"so you probably meant tau={eps} (eps={1 - eps})", UserWarning, stacklevel=2)
        self.eps = eps
        self.tau = 1.0 - eps
        super().__init__(loss_module)

    @torch.no_grad()
    def step(self) -> None:
        sources, targets = self._pairs()
        torch._foreach_lerp_(targets, sources, self.tau)


class HardUpdate(TargetNetUpdater):
    """Copy the online networks into the targets once every ``value_network_update_interval`` steps."""

    def __init__(self, loss_module: LossModule, *, value_network_update_interval: int = 1000):
        if value_network_update_interval < 1:
            raise ValueError(f"value_network_update_interval must be >= 1, got {value_network_update_interval}")
        self.value_network_update_interval = int(value_network_update_interval)
        self.counter = 0
        super().__init__(loss_module)

    @torch.no_grad()
    def step(self) -> None:
        self.counter += 1
        if self.counter % self.value_network_update_interval == 0:
            self.counter = 0
            sources, targets = self._pairs()
            torch._foreach_copy_(targets, sources)

    def state_dict(self) -> dict:
        return {"counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.counter = int(state["counter"])


UPDATERS = {"soft": SoftUpdate, "hard": HardUpdate}
