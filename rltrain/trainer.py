"""The generic Trainer: one loop for every objective, online or offline.

Online (a :class:`~rltrain.collect.Collector` over a vector env, steps = env steps)::

    while env_steps < total_env_steps:
        collect one vector step (random actions during warm-up) -> replay buffer
        every train_every env steps (after learning_starts), run the updates owed
        (updates_per_step per env step, all sub-envs counted)
        every K env steps: evaluate / log / checkpoint

Offline (no collector; the source is a dataset sampler, steps = gradient steps)::

    while updates < total_updates:
        one update
        every K updates: evaluate / log / checkpoint

A dataset sampler may also collect: Online DT's fine-tuning source adds whole episodes to its
trajectory buffer once pre-training is over (its ``env_steps`` are reported).

On-policy (no collector; the source is a :class:`~rltrain.onpolicy.RolloutSource`, steps = env steps)::

    while env_steps < total_env_steps:
        collect a rollout (T steps of every env), score it (GAE; GAIL's reward model first)
        epochs x minibatches updates on it
        every K env steps: evaluate / log / checkpoint

One update, either way::

    batch = source.sample(batch_size)
    losses = objective(batch)            # the terms of the groups due now, one forward
    sum(losses).backward()               # one backward: the groups are isolated
    step each optimizer group due now    # e.g. an actor group with every=2
    updater.step()                       # target networks

The Trainer knows the objective only through its contract (``loss_groups``,
``group_parameters``); per-algorithm differences are configuration (:class:`TrainerConfig`,
:class:`OptimizerGroup`, term windows such as CQL's BC warm-up), not subclasses.

Online checkpoints are episode-aligned: at each checkpoint step every training episode is ended as
*truncated* and the envs restart from a seed derived from ``(seed, env_step)``. A resumed run
restarts them the same way, so it continues exactly like a run that was never interrupted,
whatever the environment (MuJoCo simulator state cannot be pickled).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rltrain import checkpoint
from rltrain.collect import Collector
from rltrain.envs import derive_seed
from rltrain.evaluate import evaluate
from rltrain.loggers import Loggers
from rltrain.objectives.common import LossModule
from rltrain.optim import FusedAdamStep, clip_grad_norm_, zero_grads

CHECKPOINT_NAME = "last.pt"


def normalized_score(episode_return: float, ref_min: float, ref_max: float) -> float:
    """D4RL's normalized score: 0 = the random reference, 100 = the expert reference."""
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


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
    total_updates: int = 100_000        # the offline budget (gradient steps)
    policy_snapshots: bool = False      # keep the objective's weights at every evaluation
    # loss term -> [first update, end update) in which it is trained; terms not listed: always.
    term_windows: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    def term_active(self, term: str, update: int) -> bool:
        first, end = self.term_windows.get(term, (0, None))
        return first <= update and (end is None or update < end)


@dataclass
class OptimizerGroup:
    """One optimizer for one parameter group, stepped every ``every`` updates."""

    name: str
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    grad_clip: float | None = None
    every: int = 1
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped with the optimizer
    _optimizer_step: FusedAdamStep = field(init=False, repr=False)

    def __post_init__(self):
        self._optimizer_step = FusedAdamStep(self.optimizer)

    def step(self) -> None:
        """Clip the gradients (``grad_clip``), step the optimizer, then the learning-rate schedule."""
        if self.grad_clip:
            clip_grad_norm_(self.params, self.grad_clip)
        self._optimizer_step()
        if self.scheduler is not None:
            self.scheduler.step()


def _crossed(before: int, after: int, period: int) -> bool:
    """True if a multiple of ``period`` lies in ``(before, after]``."""
    return period > 0 and after // period > before // period


class Trainer:
    """Training of ``objective``, online from ``collector`` or, with ``collector=None``, offline from a
    dataset sampler given as ``buffer`` (see the module docstring for the loop).

    ``eval_policy`` is one policy or a dict ``{label: policy}`` (a Decision Transformer conditioned on
    several target returns): each is evaluated; the first gives the headline result and the others
    are reported as ``<label>/return_mean`` (and ``<label>/normalized_score``).

    ``score_refs = (ref_min, ref_max)`` adds the normalized score ``100 (R - ref_min) / (ref_max - ref_min)``
    to every evaluation. ``normalizer`` (observation normalization, applied by ``eval_policy``) is
    saved in checkpoints and policy snapshots.
    """

    def __init__(self, *, objective: LossModule, updater, groups: list[OptimizerGroup], buffer,
                 collector: Collector | None, eval_envs, eval_policy, loggers: Loggers, run_dir: Path,
                 config: TrainerConfig, device: torch.device, score_refs: tuple[float, float] | None = None,
                 normalizer: nn.Module | None = None):
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
        self.score_refs = score_refs
        self.normalizer = normalizer
        self.loss_keys = list(objective.loss_groups)
        self.env_steps = 0
        self.updates = 0
        self._owed_updates = 0.0
        self._elapsed = 0.0
        self._start = time.perf_counter()
        self.last_eval: dict | None = None
        self.best_eval: dict | None = None
        self._last_losses = None
        self._interval = {"time": time.perf_counter(), "updates": 0, "env_steps": 0}
        self._check_every_update = device.type == "cpu"
        self.on_policy = collector is None and hasattr(buffer, "updates_per_rollout")

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / CHECKPOINT_NAME

    @property
    def offline(self) -> bool:
        """Steps count gradient updates (a dataset, possibly with online fine-tuning)."""
        return self.collector is None and not self.on_policy

    @property
    def step(self) -> int:
        """The schedule's clock: env steps online, gradient steps offline."""
        return self.updates if self.offline else self.env_steps

    @property
    def total_steps(self) -> int:
        return self.config.total_updates if self.offline else self.config.total_env_steps

    # ---- the update step (hot path: no host sync but the CPU finiteness check) -------------------
    def update(self) -> None:
        step = self.updates + 1
        due = [group for group in self.groups if step % group.every == 0]
        terms = self._terms_of(due, self.updates)
        if not terms:  # every group waits for a later step (all `every` > 1)
            self.updates = step
            return
        batch = self.buffer.sample(self.config.batch_size)
        every_term = len(terms) == len(self.loss_keys)
        losses = self.objective(batch) if every_term else self.objective.forward_terms(batch, terms)
        total = sum(losses.get(k) for k in terms if k in losses.keys())
        for group in self.groups:
            zero_grads(group.params)
        total.backward()
        self.updates = step
        for group in due:
            group.step()
        if self.updater is not None and self.updates % self.config.updater_every == 0:
            self.updater.step()
        self._last_losses = losses
        # On CPU reading a scalar costs a microsecond, so every update is checked; on an
        # accelerator that read would stall the pipeline, so there the check runs at log and
        # checkpoint time (before anything is saved).
        if self._check_every_update and not math.isfinite(total.item()):
            self._stop_on_nonfinite(losses)

    def _terms_of(self, groups: list[OptimizerGroup], update: int) -> frozenset[str]:
        """The loss terms that train ``groups`` at ``update`` (only these are computed and backpropagated)."""
        names = {group.name for group in groups}
        return frozenset(term for term, group in self.objective.loss_groups.items()
                         if group in names and self.config.term_active(term, update))

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
        self._start = time.perf_counter() - self._elapsed
        self.loggers.console.advance(self.step)
        if self.on_policy:
            self._fit_on_policy()
        elif self.offline:
            self._fit_offline()
        else:
            self._fit_online()
        return self.summary()

    def _fit_online(self) -> None:
        cfg = self.config
        num_envs = self.collector.num_envs
        while self.env_steps < cfg.total_env_steps:
            before = self.env_steps
            after = before + num_envs
            at_checkpoint = _crossed(before, after, cfg.checkpoint_every) or after >= cfg.total_env_steps
            transitions = self.collector.step(random=before < cfg.warmup_steps, end_episodes=at_checkpoint,
                                              env_step=before)
            self.buffer.extend(transitions)
            self.env_steps = after
            self._run_owed_updates(before, after)
            self._periodic(before, after, at_checkpoint)

    def _fit_offline(self) -> None:
        cfg = self.config
        while self.updates < cfg.total_updates:
            before = self.updates
            self.update()
            self.env_steps = getattr(self.buffer, "env_steps", 0)
            after = self.updates
            self._periodic(before, after, _crossed(before, after, cfg.checkpoint_every) or after >= cfg.total_updates)

    def _fit_on_policy(self) -> None:
        cfg = self.config
        while self.env_steps < cfg.total_env_steps:
            before = self.env_steps
            self.env_steps += self.buffer.collect()
            for _ in range(self.buffer.updates_per_rollout):
                self.update()
            after = self.env_steps
            self._periodic(before, after, _crossed(before, after, cfg.checkpoint_every) or after >= cfg.total_env_steps)

    def _periodic(self, before: int, after: int, at_checkpoint: bool) -> None:
        """Progress, evaluation, logging and checkpoints due when the clock moved from ``before`` to ``after``."""
        cfg = self.config
        self.loggers.console.advance(after)
        self._elapsed = time.perf_counter() - self._start
        if _crossed(before, after, cfg.eval_every) or after >= self.total_steps:
            self._evaluate()
        if _crossed(before, after, cfg.log_every):
            self._verify_finite()
            self._log_train()
        if at_checkpoint:
            self._verify_finite()
            self._restart_episodes()
            self.save_checkpoint()

    def _restart_episodes(self) -> None:
        """Checkpoints are episode-aligned: training envs restart from a seed derived from the env step."""
        if self.collector is not None:
            self.collector.reset(derive_seed(self.config.seed, self.env_steps, 1))
        elif self.on_policy:
            self.buffer.reset(derive_seed(self.config.seed, self.env_steps, 1))

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

    def _evaluate_policy(self, policy) -> dict:
        result = evaluate(self.eval_envs, policy, self.config.eval_episodes,
                          seed=derive_seed(self.config.seed, self.step, 2), device=self.device)
        if self.score_refs is not None:
            result["normalized_score"] = normalized_score(result["return_mean"], *self.score_refs)
        return result

    def _evaluate(self) -> None:
        self.objective.eval()
        policies = self.eval_policy if isinstance(self.eval_policy, dict) else {"": self.eval_policy}
        results = {label: self._evaluate_policy(policy) for label, policy in policies.items()}
        self.objective.train()
        result = dict(next(iter(results.values())))
        for label, other in list(results.items())[1:]:
            result |= {f"{label}/{key}": other[key] for key in ("return_mean", "normalized_score") if key in other}
        self.last_eval = {"env_step": self.env_steps, "update": self.updates, **result,
                          "time": round(self._elapsed, 3)}
        if self.best_eval is None or result["return_mean"] > self.best_eval["return_mean"]:
            self.best_eval = self.last_eval
        self.loggers.log_eval(self.last_eval)
        if self.config.policy_snapshots:
            self._save_snapshot()

    def _save_snapshot(self) -> None:
        """The objective's weights (and normalizer) at this evaluation, with its result: datasets of a
        chosen quality are collected from these (``python -m rltrain.make_dataset``)."""
        snapshot = {"objective": self.objective.state_dict(), "eval": self.last_eval,
                    "normalizer": self.normalizer.state_dict() if self.normalizer is not None else None,
                    "buffer_size": len(self.buffer)}
        checkpoint.save_atomic(snapshot, self.run_dir / "checkpoints" / f"policy_{self.step:09d}.pt")

    def _log_train(self) -> None:
        now = time.perf_counter()
        dt = max(now - self._interval["time"], 1e-9)
        metrics = {"env_step": self.env_steps, "update": self.updates, "time": round(self._elapsed, 3),
                   "updates_per_s": (self.updates - self._interval["updates"]) / dt,
                   "env_steps_per_s": (self.env_steps - self._interval["env_steps"]) / dt,
                   "buffer_size": len(self.buffer)}
        if self.offline and not self.env_steps:
            del metrics["env_steps_per_s"]
        self._interval = {"time": now, "updates": self.updates, "env_steps": self.env_steps}
        if self._last_losses is not None:
            metrics.update({k: float(v.detach()) for k, v in self._last_losses.items() if v.numel() == 1})
        source = self._episode_source()
        episodes = source.pop_finished_episodes() if source is not None else []
        if episodes:
            metrics["episode_return"] = float(np.mean([r for r, _ in episodes]))
            metrics["episode_length"] = float(np.mean([n for _, n in episodes]))
        self.loggers.log_train(metrics)

    def _episode_source(self):
        """Whatever reports finished training episodes: the collector, a rollout or fine-tuning source."""
        if self.collector is not None:
            return self.collector
        return self.buffer if hasattr(self.buffer, "pop_finished_episodes") else None

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "objective": self.objective.state_dict(),
            "optimizers": {g.name: g.optimizer.state_dict() for g in self.groups},
            "schedulers": {g.name: g.scheduler.state_dict() for g in self.groups if g.scheduler is not None},
            "updater": self.updater.state_dict() if self.updater is not None else {},
            "buffer": self.buffer.state_dict(),
            "collector_rng": None if self.collector is None else self.collector.rng.bit_generator.state,
            "normalizer": self.normalizer.state_dict() if self.normalizer is not None else None,
            "rng": checkpoint.rng_state(),
            "counters": {"env_steps": self.env_steps, "updates": self.updates,
                         "owed_updates": self._owed_updates, "elapsed": self._elapsed},
            "last_eval": self.last_eval,
            "best_eval": self.best_eval,
            "loggers": self.loggers.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state["objective"])
        for group in self.groups:
            group.optimizer.load_state_dict(state["optimizers"][group.name])
            if group.scheduler is not None:
                group.scheduler.load_state_dict(state["schedulers"][group.name])
        if self.updater is not None:
            self.updater.load_state_dict(state["updater"])
        self.buffer.load_state_dict(state["buffer"])
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        counters = state["counters"]
        self.env_steps, self.updates = counters["env_steps"], counters["updates"]
        self._owed_updates, self._elapsed = counters["owed_updates"], counters["elapsed"]
        self.last_eval, self.best_eval = state["last_eval"], state.get("best_eval")  # older checkpoints lack it
        if self.collector is not None:
            self.collector.rng.bit_generator.state = state["collector_rng"]
        self._restart_episodes()
        checkpoint.set_rng_state(state["rng"])
        self._interval = {"time": time.perf_counter(), "updates": self.updates, "env_steps": self.env_steps}

    def save_checkpoint(self) -> None:
        checkpoint.save_checkpoint(self.state_dict(), self.checkpoint_path.parent)

    def summary(self) -> dict:
        final, best = self.last_eval or {}, self.best_eval or {}
        summary = {
            "final_eval_return": final.get("return_mean"),
            "final_eval_return_std": final.get("return_std"),
            "best_eval_return": best.get("return_mean"),
            "best_eval_step": best.get("update" if self.offline else "env_step"),
        }
        if self.score_refs is not None:
            summary |= {"final_normalized_score": final.get("normalized_score"),
                        "best_normalized_score": best.get("normalized_score"),
                        "ref_min_score": self.score_refs[0], "ref_max_score": self.score_refs[1]}
        summary |= {
            "mode": "on-policy" if self.on_policy else "offline" if self.offline else "online",
            "env_steps": self.env_steps,
            "updates": self.updates,
            "time_s": round(self._elapsed, 1),
            "run_dir": str(self.run_dir),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
