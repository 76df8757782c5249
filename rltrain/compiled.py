"""The update's losses, eager or through ``torch.compile`` (``trainer.compile``).

One update computes the due loss terms of the objective and their sum,
``total = sum_{t in due} L_t(batch)``, then backpropagates ``total`` and steps the due optimizer
groups (:meth:`rltrain.trainer.Trainer.update`). :class:`UpdateLosses` owns the first part:

* ``none``: ``objective(batch)`` (``forward_terms`` when only some terms are due), eagerly.
* ``compile``: the same Python function through ``torch.compile`` (inductor, its default mode), one
  compiled function per distinct *due set* (the frozenset of terms: TD3's delayed actor, REDQ's
  cadence and CQL's BC warm-up window each give a few), cached. AOTAutograd compiles the backward
  of each, so ``total.backward()`` runs compiled code too.
* ``cudagraphs`` (CUDA only): as ``compile`` with ``mode="reduce-overhead"``: the compiled forward
  and backward are replayed as CUDA graphs.

The optimizer steps (one fused Adam kernel per group) and the target update (one ``_foreach_lerp_``)
stay outside the compiled region: they are already one kernel call each, and they read the
learning rate from the optimizer at every step, so schedulers (IQL's cosine actor lr) keep
applying — a compiled optimizer step would bake a float lr into the graph as a constant (or
recompile at every change).

An objective that torch.compile cannot handle (an error while tracing or compiling) falls back to
the eager function with one warning naming the objective and the reason; a function that compiles
with graph breaks (e.g. data-dependent shapes run eagerly between compiled pieces) stays compiled
and the breaks are reported once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from tensordict import TensorDictBase

from rltrain.errors import ConfigError
from rltrain.objectives.common import LossModule

COMPILE_MODES = ("none", "compile", "cudagraphs")


def check_compile_mode(mode: str, device: torch.device) -> None:
    """Refuse an unknown ``trainer.compile`` value and CUDA graphs off CUDA (before any work)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile={mode!r} is not accepted: trainer.compile must be one of "
                          f"{', '.join(COMPILE_MODES)}")
    if mode == "cudagraphs" and device.type != "cuda":
        raise ConfigError(f"trainer.compile=cudagraphs needs a CUDA device, but this run's device is {device.type}; "
                          "trainer.compile accepts none or compile on this device (cudagraphs only with "
                          "device=cuda or device=auto on a machine with a GPU)")


def compile_options(mode: str, device: torch.device) -> dict:
    """``torch.compile`` arguments per mode and device: CUDA graphs are inductor's ``reduce-overhead``;
    elsewhere inductor's default mode."""
    if mode == "cudagraphs":
        return {"mode": "reduce-overhead"}
    return {}


def failure_reason(error: BaseException) -> str:
    """``Outer: Root: first line`` of a compiler exception (dynamo wraps the root cause)."""
    root = error
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None:
        root = inner
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    reason = f"{type(root).__name__}: {lines[0] if lines else ''}"
    return reason if root is error else f"{type(error).__name__}: {reason}"


class ObjectiveNotCompilable(UserWarning):
    """trainer.compile could not compile an objective; its updates run eagerly."""


class UpdateLosses:
    """``(batch, terms) -> (losses, total)``: the due terms of ``objective`` and their sum."""

    def __init__(self, objective: LossModule, mode: str = "none", device: torch.device | None = None):
        self.objective = objective
        self.mode = mode
        self.all_terms = frozenset(objective.loss_groups)
        self._options = compile_options(mode, device or torch.device("cpu"))
        self._compiled: dict[frozenset[str], Callable] = {}
        self.eager_reason: str | None = None   # why compilation was given up (None: compiled or never asked)

    @property
    def compiling(self) -> bool:
        return self.mode != "none" and self.eager_reason is None

    def eager(self, batch: TensorDictBase, terms: frozenset[str]):
        losses = self.objective(batch) if terms == self.all_terms else self.objective.forward_terms(batch, terms)
        total = sum(losses.get(k) for k in terms if k in losses.keys())
        return losses, total

    def __call__(self, batch: TensorDictBase, terms: frozenset[str]):
        if not self.compiling:
            return self.eager(batch, terms)
        if self.mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()  # the previous update's graph outputs may be reused
        compiled = self._compiled.get(terms)
        losses, total = compiled(batch) if compiled is not None else self._first_call(batch, terms)
        if self.mode == "cudagraphs":  # the graph's output buffers are overwritten by the next replay
            losses = losses.clone()
        return losses, total

    def _first_call(self, batch: TensorDictBase, terms: frozenset[str]):
        """Compile the function of ``terms`` on its first batch; on failure warn once and go eager."""
        from torch._dynamo.utils import counters

        def losses_of_due_terms(batch):
            return self.eager(batch, terms)

        compiled = torch.compile(losses_of_due_terms, **self._options)
        breaks_before = dict(counters["graph_break"])
        try:
            result = compiled(batch)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run this objective eagerly
            self._give_up(failure_reason(error))
            return self.eager(batch, terms)
        breaks = {reason: n - breaks_before.get(reason, 0) for reason, n in counters["graph_break"].items()
                  if n > breaks_before.get(reason, 0)}
        if breaks:
            warnings.warn(f"trainer.compile={self.mode}: {type(self.objective).__name__} compiles with graph breaks "
                          f"(terms {sorted(terms)}; those parts run eagerly): {'; '.join(breaks)}",
                          ObjectiveNotCompilable, stacklevel=3)
        self._compiled[terms] = compiled
        return result

    def _give_up(self, reason: str) -> None:
        self.eager_reason = reason
        warnings.warn(f"trainer.compile={self.mode}: {type(self.objective).__name__} cannot be compiled ({reason}); "
                      "its updates run eagerly", ObjectiveNotCompilable, stacklevel=4)
