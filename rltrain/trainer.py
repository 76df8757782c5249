"""The generic Trainer: one loop for every objective.

    while env_steps < total:
        collect one vector step (random actions during warm-up) -> replay buffer
        every train_every env steps (after learning_starts), run the updates owed
        (updates_per_step per env step, all sub-envs counted):
            batch = buffer.sample(batch_size)
            losses = objective(batch)            # all terms, one forward
            sum(losses).backward()               # one backward: the groups are isolated
            step each optimizer group due now    # e.g. an actor group with every=2
            updater.step()                       # target networks
        every K env steps: evaluate / log / checkpoint

The Trainer knows the objective only through its contract (``loss_groups``,
``group_parameters``); per-algorithm differences are configuration (:class:`TrainerConfig`,
:class:`OptimizerGroup`), not subclasses.

Checkpoints are episode-aligned: at each checkpoint step every training episode is ended as
*truncated* and the envs restart from a seed derived from ``(seed, env_step)``. A resumed run
restarts them the same way, so it continues exactly like a run that was never interrupted,
whatever the environment (MuJoCo simulator state cannot be pickled).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rltrain import checkpoint
from rltrain.collect import Collector
from rltrain.data.replay import ReplayBuffer
from rltrain.envs import derive_seed
from rltrain.evaluate import evaluate
from rltrain.loggers import Loggers
from rltrain.objectives.common import LossModule

CHECKPOINT_NAME = "last.pt"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped before the next checkpoint could be written."""


@dataclass
class TrainerConfig:
    total_env_steps: int = 20_000
    warmup_steps: int = 1_000
    learning_starts: int = 1_000
    updates_per_step: float = 1.0
    train_every: int = 1
    batch_size: int = 256
    buffer_size: int = 1_000_000
    eval_every: int = 5_000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    log_every: int = 1_000
    updater_every: int = 1
    seed: int = 0


@dataclass
class OptimizerGroup:
    """One optimizer for one parameter group, stepped every ``every`` updates."""

    name: str
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    grad_clip: float | None = None
    every: int = 1


def _crossed(before: int, after: int, period: int) -> bool:
    """True if a multiple of ``period`` lies in ``(before, after]``."""
    return period > 0 and after // period > before // period


class Trainer:
    """Online off-policy training of ``objective`` (see the module docstring for the loop)."""

    def __init__(self, *, objective: LossModule, updater, groups: list[OptimizerGroup], buffer: ReplayBuffer,
                 collector: Collector, eval_envs, eval_policy, loggers: Loggers, run_dir: Path,
                 config: TrainerConfig, device: torch.device):
        self.objective = objective
        self.updater = updater
        self.groups = groups
        self.buffer = buffer
        self.collector = collector
        self.eval_envs = eval_envs
        self.eval_policy = eval_policy
        self.loggers = loggers
        self.run_dir = Path(run_dir)
        self.config = config
        self.device = device
        self.loss_keys = list(objective.loss_groups)
        self.env_steps = 0
        self.updates = 0
        self._owed_updates = 0.0
        self._elapsed = 0.0
        self.last_eval: dict | None = None
        self._last_losses = None
        self._interval = {"time": time.perf_counter(), "updates": 0, "env_steps": 0}
        self._check_every_update = device.type == "cpu"

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / CHECKPOINT_NAME

    # ---- the update step (hot path: no host sync but the CPU finiteness check) -------------------
    def update(self) -> None:
        step = self.updates + 1
        due = [group for group in self.groups if step % group.every == 0]
        terms = self._terms_of(due)
        if not terms:  # every group waits for a later step (all `every` > 1)
            self.updates = step
            return
        batch = self.buffer.sample(self.config.batch_size)
        losses = self.objective(batch) if len(due) == len(self.groups) else self.objective.forward_terms(batch, terms)
        total = sum(losses.get(k) for k in terms if k in losses.keys())
        for group in self.groups:
            group.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.updates = step
        for group in due:
            if group.grad_clip:
                nn.utils.clip_grad_norm_(group.params, group.grad_clip, foreach=True)
            group.optimizer.step()
        if self.updater is not None and self.updates % self.config.updater_every == 0:
            self.updater.step()
        self._last_losses = losses
        # On CPU reading a scalar costs a microsecond, so every update is checked; on an
        # accelerator that read would stall the pipeline, so there the check runs at log and
        # checkpoint time (before anything is saved).
        if self._check_every_update and not math.isfinite(total.item()):
            self._stop_on_nonfinite(losses)

    def _terms_of(self, groups: list[OptimizerGroup]) -> frozenset[str]:
        """The loss terms that train ``groups`` (only these are computed and backpropagated)."""
        names = {group.name for group in groups}
        return frozenset(term for term, group in self.objective.loss_groups.items() if group in names)

    def _verify_finite(self) -> None:
        losses = self._last_losses
        if losses is not None and not all(torch.isfinite(losses.get(k)).all() for k in self._present(losses)):
            self._stop_on_nonfinite(losses)

    def _present(self, losses) -> list[str]:
        return [k for k in self.loss_keys if k in losses.keys()]

    def _stop_on_nonfinite(self, losses) -> None:
        bad = [k for k in self._present(losses) if not torch.isfinite(losses.get(k)).all()]
        kept = self.checkpoint_path if self.checkpoint_path.exists() else "(none written yet)"
        raise NonFiniteLossError(
            f"non-finite loss ({', '.join(bad) or 'total'}) at update {self.updates}, env step "
            f"{self.env_steps}; training stopped. The last good checkpoint is kept: {kept}. "
            "Try a lower learning rate, gradient clipping (algo.optim.<group>.grad_clip) or check the "
            "environment's rewards.")

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.config
        num_envs = self.collector.num_envs
        start = time.perf_counter() - self._elapsed
        self.loggers.console.advance(self.env_steps)
        while self.env_steps < cfg.total_env_steps:
            before = self.env_steps
            after = before + num_envs
            at_checkpoint = _crossed(before, after, cfg.checkpoint_every) or after >= cfg.total_env_steps
            transitions = self.collector.step(random=before < cfg.warmup_steps, end_episodes=at_checkpoint,
                                              env_step=before)
            self.buffer.extend(transitions)
            self.env_steps = after
            self._run_owed_updates(before, after)
            self.loggers.console.advance(after)
            self._elapsed = time.perf_counter() - start
            if _crossed(before, after, cfg.eval_every) or after >= cfg.total_env_steps:
                self._evaluate()
            if _crossed(before, after, cfg.log_every):
                self._verify_finite()
                self._log_train()
            if at_checkpoint:
                self._verify_finite()
                self.collector.reset(derive_seed(cfg.seed, self.env_steps, 1))
                self.save_checkpoint()
        return self.summary()

    def _run_owed_updates(self, before: int, after: int) -> None:
        """``updates_per_step`` updates per env step, run in bursts every ``train_every`` env steps."""
        if after <= self.config.learning_starts or len(self.buffer) < self.config.batch_size:
            return
        self._owed_updates += self.config.updates_per_step * (after - before)
        if not _crossed(before, after, self.config.train_every):
            return
        while self._owed_updates >= 1.0:
            self.update()
            self._owed_updates -= 1.0

    def _evaluate(self) -> None:
        self.objective.eval()
        result = evaluate(self.eval_envs, self.eval_policy, self.config.eval_episodes,
                          seed=derive_seed(self.config.seed, self.env_steps, 2), device=self.device)
        self.objective.train()
        self.last_eval = {"env_step": self.env_steps, "update": self.updates, **result,
                          "time": round(self._elapsed, 3)}
        self.loggers.log_eval(self.last_eval)

    def _log_train(self) -> None:
        now = time.perf_counter()
        dt = max(now - self._interval["time"], 1e-9)
        metrics = {"env_step": self.env_steps, "update": self.updates, "time": round(self._elapsed, 3),
                   "updates_per_s": (self.updates - self._interval["updates"]) / dt,
                   "env_steps_per_s": (self.env_steps - self._interval["env_steps"]) / dt,
                   "buffer_size": len(self.buffer)}
        self._interval = {"time": now, "updates": self.updates, "env_steps": self.env_steps}
        if self._last_losses is not None:
            metrics.update({k: float(v.detach()) for k, v in self._last_losses.items() if v.numel() == 1})
        episodes = self.collector.pop_finished_episodes()
        if episodes:
            metrics["episode_return"] = float(np.mean([r for r, _ in episodes]))
            metrics["episode_length"] = float(np.mean([n for _, n in episodes]))
        self.loggers.log_train(metrics)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "objective": self.objective.state_dict(),
            "optimizers": {g.name: g.optimizer.state_dict() for g in self.groups},
            "updater": self.updater.state_dict() if self.updater is not None else {},
            "buffer": self.buffer.state_dict(),
            "collector_rng": self.collector.rng.bit_generator.state,
            "rng": checkpoint.rng_state(),
            "counters": {"env_steps": self.env_steps, "updates": self.updates,
                         "owed_updates": self._owed_updates, "elapsed": self._elapsed},
            "last_eval": self.last_eval,
            "loggers": self.loggers.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state["objective"])
        for group in self.groups:
            group.optimizer.load_state_dict(state["optimizers"][group.name])
        if self.updater is not None:
            self.updater.load_state_dict(state["updater"])
        self.buffer.load_state_dict(state["buffer"])
        self.collector.rng.bit_generator.state = state["collector_rng"]
        counters = state["counters"]
        self.env_steps, self.updates = counters["env_steps"], counters["updates"]
        self._owed_updates, self._elapsed = counters["owed_updates"], counters["elapsed"]
        self.last_eval = state["last_eval"]
        self.collector.reset(derive_seed(self.config.seed, self.env_steps, 1))
        checkpoint.set_rng_state(state["rng"])
        self._interval = {"time": time.perf_counter(), "updates": self.updates, "env_steps": self.env_steps}

    def save_checkpoint(self) -> None:
        checkpoint.save_atomic(self.state_dict(), self.checkpoint_path)

    def summary(self) -> dict:
        final = self.last_eval or {}
        summary = {
            "final_eval_return": final.get("return_mean"),
            "final_eval_return_std": final.get("return_std"),
            "env_steps": self.env_steps,
            "updates": self.updates,
            "time_s": round(self._elapsed, 1),
            "run_dir": str(self.run_dir),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
