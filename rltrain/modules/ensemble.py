"""Ensembles of K independent networks whose parameters are stacked and evaluated in one call.

Q ensembles (SAC's twin critics, REDQ's ten) are the hot path of every actor-critic update. A
Python loop over K ``nn.Module`` s costs K kernel launches per layer; stacking the K members'
weights into ``[K, in, out]`` tensors turns each layer into a single batched matmul
(``baddbmm``) and the whole ensemble into one forward and one backward.

Two implementations share one interface, ``ensemble(*inputs) -> [K, *batch, out]``:

* :class:`StackedMLP` for MLPs (Linear layers, optional LayerNorm, parameter-free activations):
  explicit batched matmuls, the fast path (a one-output head is a multiply-and-sum).
* :class:`VmapEnsemble` for any other module: ``torch.func.functional_call`` under ``torch.vmap``
  over the stacked parameters.

:func:`make_ensemble` picks the right one. Members are independent initialisations of the given
architecture: member 0 starts from the given module's weights, members 1..K-1 from the module's
own ``reset_parameters``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rltrain.modules.mlp import MLP


def fresh_copies(module: nn.Module, num_members: int) -> list[nn.Module]:
    """``num_members`` copies of ``module``: the first keeps its weights, the others are re-initialised."""
    members = [copy.deepcopy(module) for _ in range(num_members)]
    for member in members[1:]:
        for sub in member.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
    return members


# Batches of more rows than this (CQL's 3N sampled actions per state: 31 x 256 rows) run member by
# member with addmm, in chunks of this many rows: a chunk's activations stay in cache, and on CPU
# this made a CQL update ~20 % faster than one baddbmm over all rows.
ROW_CHUNK = 2048


class StackedMLP(nn.Module):
    """K MLPs evaluated with one ``baddbmm`` per layer (above ``ROW_CHUNK`` rows: per member and chunk).

    Layer ``i`` holds ``weight_i: [K, in, out]`` and ``bias_i: [K, 1, out]`` (and, with layer norm,
    ``ln_weight_i``/``ln_bias_i: [K, 1, out]``). Tensors are read by name, so a frozen copy whose
    parameters became buffers (a target network) runs the same code.
    """

    def __init__(self, members: list[nn.Sequential]):
        super().__init__()
        self.num_members = len(members)
        self.activations: list[nn.Module] = []
        self.layer_norm: list[bool] = []
        self._tensor_names: list[str] = []
        linears = [[m for m in member if isinstance(m, nn.Linear)] for member in members]
        plan = _layer_plan(members[0])
        for i, (has_norm, act) in enumerate(plan):
            weight = torch.stack([lin[i].weight.detach().t() for lin in linears])
            bias = torch.stack([lin[i].bias.detach().unsqueeze(0) for lin in linears])
            self._register(f"weight_{i}", weight)
            self._register(f"bias_{i}", bias)
            if has_norm:
                norms = [[m for m in member if isinstance(m, nn.LayerNorm)][i] for member in members]
                self._register(f"ln_weight_{i}", torch.stack([n.weight.detach().unsqueeze(0) for n in norms]))
                self._register(f"ln_bias_{i}", torch.stack([n.bias.detach().unsqueeze(0) for n in norms]))
            self.layer_norm.append(has_norm)
            self.activations.append(act)

    def _register(self, name: str, value: torch.Tensor) -> None:
        self.register_parameter(name, nn.Parameter(value.clone().contiguous()))
        self._tensor_names.append(name)

    def stacked_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self._tensor_names]

    def forward(self, *inputs: torch.Tensor, detach: bool = False, per_member: bool = False,
                members: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the members; ``inputs`` are concatenated on the last dim.

        Args:
            detach: use detached weights (a critic read by the actor loss: no gradient to the critic).
            per_member: inputs already carry a leading member dim (one batch per evaluated member).
            members: evaluate only these members (a slice or an index tensor); default all.
        """
        def read(name: str) -> torch.Tensor:
            tensor = getattr(self, name)
            tensor = tensor if members is None else tensor[members]
            return tensor.detach() if detach else tensor

        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        count = read("bias_0").shape[0]
        batch_shape = x.shape[1:-1] if per_member else x.shape[:-1]
        x = x.reshape(count if per_member else 1, -1, x.shape[-1])
        if not per_member:
            x = x.expand(count, -1, -1)
        if x.shape[1] > ROW_CHUNK:
            tensors = {name: read(name) for name in self._tensor_names}
            x = torch.stack([
                torch.cat([self._layers(chunk, lambda name: tensors[name][k], torch.addmm)
                           for chunk in x[k].split(ROW_CHUNK)])
                for k in range(count)])
        else:
            x = self._layers(x, read, torch.baddbmm)
        return x.reshape(count, *batch_shape, x.shape[-1])

    def _layers(self, x: torch.Tensor, read, affine) -> torch.Tensor:
        for i, (has_norm, act) in enumerate(zip(self.layer_norm, self.activations)):
            weight = read(f"weight_{i}")
            if weight.shape[-1] == 1 and affine is torch.baddbmm:
                # A Q-value head: batched matrix-vector products take the slow path of CPU bmm (forward
                # and both backward products ~6x a multiply-and-sum, in isolation), so multiply and sum.
                x = (x * weight.transpose(-1, -2)).sum(-1, keepdim=True) + read(f"bias_{i}")
            else:
                x = affine(read(f"bias_{i}"), x, weight)
            if has_norm:
                x = F.layer_norm(x, x.shape[-1:]) * read(f"ln_weight_{i}") + read(f"ln_bias_{i}")
            if isinstance(act, nn.ReLU):
                x = torch.relu_(x)  # in place: the affine/layer_norm outputs are not needed for backward
            elif act is not None:
                x = act(x)
        return x


def _layer_plan(mlp: nn.Sequential) -> list[tuple[bool, nn.Module | None]]:
    """For each Linear: (followed by LayerNorm?, the activation after it or None)."""
    plan: list[list] = []
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            plan.append([False, None])
        elif isinstance(layer, nn.LayerNorm) and plan and plan[-1][1] is None:
            plan[-1][0] = True
        else:
            plan[-1][1] = layer
    return [tuple(p) for p in plan]


def is_stackable_mlp(module: nn.Module) -> bool:
    """True for a plain Sequential: Linear (with bias), optional affine LayerNorm, at most one
    parameter-free activation, repeated. Anything else (dropout, batch norm, custom forward) is
    left to :class:`VmapEnsemble`."""
    if not isinstance(module, nn.Sequential) or len(module) == 0 or not isinstance(module[0], nn.Linear):
        return False
    if type(module).forward not in (nn.Sequential.forward, MLP.forward):
        return False
    previous: nn.Module | None = None
    for layer in module:
        if isinstance(layer, nn.Linear):
            ok = layer.bias is not None
        elif isinstance(layer, nn.LayerNorm):
            ok = isinstance(previous, nn.Linear) and layer.elementwise_affine and layer.bias is not None
        else:
            stateless = not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers())
            ok = stateless and isinstance(previous, (nn.Linear, nn.LayerNorm)) and not isinstance(layer, nn.Dropout)
        if not ok:
            return False
        previous = layer
    return True


class VmapEnsemble(nn.Module):
    """K copies of an arbitrary module evaluated with ``torch.vmap`` over stacked parameters.

    ``use_vmap=False`` evaluates the members one after the other from the same stacked parameters,
    for modules that ``vmap`` cannot batch (in-place ops, some recurrent layers).
    """

    def __init__(self, members: list[nn.Module], use_vmap: bool = True):
        super().__init__()
        self.use_vmap = use_vmap
        self.num_members = len(members)
        params, buffers = torch.func.stack_module_state(members)
        base = copy.deepcopy(members[0])
        self.__dict__["_base"] = base.to("meta")
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        for i, name in enumerate(self._param_names):
            self.register_parameter(f"p{i}", nn.Parameter(params[name].detach().clone()))
        for i, name in enumerate(self._buffer_names):
            self.register_buffer(f"b{i}", buffers[name].clone())
        self._randomness = "different" if any(isinstance(m, nn.Dropout) for m in base.modules()) else "error"

    def stacked_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"p{i}") for i in range(len(self._param_names))] + [
            getattr(self, f"b{i}") for i in range(len(self._buffer_names))
        ]

    def forward(self, *inputs: torch.Tensor, detach: bool = False, per_member: bool = False,
                members: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Same arguments as :meth:`StackedMLP.forward`."""
        def select(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if members is None else tensor[members]

        params = {n: select(getattr(self, f"p{i}")) for i, n in enumerate(self._param_names)}
        if detach:
            params = {n: p.detach() for n, p in params.items()}
        buffers = {n: select(getattr(self, f"b{i}")) for i, n in enumerate(self._buffer_names)}
        count = next(iter(params.values())).shape[0]

        def call(p, b, *xs):
            return torch.func.functional_call(self._base, (p, b), xs)

        if not self.use_vmap:
            return torch.stack([
                call({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()},
                     *(x[k] if per_member else x for x in inputs))
                for k in range(count)
            ])
        in_dims = (0, 0, *([0 if per_member else None] * len(inputs)))
        return torch.vmap(call, in_dims=in_dims, randomness=self._randomness)(params, buffers, *inputs)


def make_ensemble(module: nn.Module | list[nn.Module], num_members: int | None = None,
                  use_vmap: bool = True) -> StackedMLP | VmapEnsemble:
    """Stack ``num_members`` independent copies of ``module`` (fast path for MLPs).

    A list of modules is stacked as given (no re-initialisation).
    """
    if isinstance(module, (list, tuple)):
        members = [copy.deepcopy(m) for m in module]
    else:
        members = fresh_copies(module, num_members or 1)
    if all(is_stackable_mlp(m) for m in members):
        return StackedMLP(members)
    return VmapEnsemble(members, use_vmap=use_vmap)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters are buffers: a target network.

    Being buffers, the copies are saved in ``state_dict`` but never appear in ``parameters()``,
    so no optimizer can pick them up and they never receive gradient.
    """
    target = copy.deepcopy(module)
    for sub in target.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().clone())
    return target
