"""The generic Trainer: one loop for every objective and every mode.

The mode is the :class:`~rltrain.sources.Source` the Trainer is handed (online replay, a dataset,
on-policy rollouts, Online DT fine-tuning, offline-to-online). The source owns the clock and the
collection; the Trainer owns the updates and the periodic work::

    while source.position(updates) < source.total:
        before = source.position(updates)
        owed = source.advance(updates, ends_interval)   # collect, if the source collects
        for _ in range(owed):
            update()
        every K clock ticks: evaluate / log / checkpoint

One update::

    batch = source.sample()
    batch = reward_labeler(batch)        # only with a learned reward (GAIL with SAC)
    losses = objective(batch)            # the terms of the groups due now, one forward
                                         # (compiled with trainer.compile: rltrain.compiled)
    sum(losses).backward()               # one backward: the groups are isolated
    step each optimizer group due now    # e.g. an actor group with every=2
    updater.step()                       # target networks

The Trainer knows the objective only through its contract (``loss_groups``,
``group_parameters``); per-algorithm differences are configuration (:class:`TrainerConfig`,
:class:`OptimizerGroup`, term windows such as CQL's BC warm-up), not subclasses.

Periodic checkpoints of collecting sources are episode-aligned: the source ends its training
episodes as *truncated* on the step that reaches a checkpoint and restarts its envs from a seed
derived from the clock, so a run killed at any moment (SIGKILL) resumes from the last one exactly
like one never interrupted. A stop on request (SIGTERM, SIGINT, a preemption) happens anywhere and
cuts nothing: the checkpoint it writes holds the episodes in flight as their seed and the actions
sent since (:class:`rltrain.collect.Collector`), which resume replays, so that run too continues
exactly as if never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from rltrain import checkpoint
from rltrain.compiled import UpdateLosses
from rltrain.envs import derive_seed
from rltrain.errors import ConfigError
from rltrain.evaluate import evaluate
from rltrain.loggers import Loggers
from rltrain.objectives.common import LossModule
from rltrain.optim import FusedAdamStep, clip_grad_norm_, zero_grads
from rltrain.sources import Source, crossed

CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
# Version 2: the mode is a Source (its state under "source"), env steps count real transitions.
CHECKPOINT_FORMAT = 2


def normalized_score(episode_return: float, ref_min: float, ref_max: float) -> float:
    """D4RL's normalized score: 0 = the random reference, 100 = the expert reference."""
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped before the next checkpoint could be written."""


@dataclass
class TrainerConfig:
    """What every mode shares; the budget and the collection settings belong to the source."""

    eval_every: int = 5_000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    log_every: int = 1_000
    updater_every: int = 1
    seed: int = 0
    policy_snapshots: bool = False      # keep the objective's weights at every evaluation
    video_every: int = 0                # record one evaluation episode every that many clock ticks (0: never)
    # loss term -> [first update, end update) in which it is trained; terms not listed: always.
    term_windows: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    compile: str = "none"               # none | compile | cudagraphs (rltrain.compiled)
    updates_per_call: int = 1           # updates per dispatch of Trainer.run_updates

    def term_active(self, term: str, update: int) -> bool:
        first, end = self.term_windows.get(term, (0, None))
        return first <= update and (end is None or update < end)


class StopRequested(Exception):
    """Training stopped on request (a signal); a checkpoint of the current state was written."""


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


class Trainer:
    """Training of ``objective`` on the batches of ``source`` (see the module docstring for the loop).

    ``eval_policy`` is one policy or a dict ``{label: policy}`` (a Decision Transformer conditioned on
    several target returns): each is evaluated; the first gives the headline result and the others
    are reported as ``<label>/return_mean`` (and ``<label>/normalized_score``).

    ``score_refs = (ref_min, ref_max)`` adds the normalized score ``100 (R - ref_min) / (ref_max - ref_min)``
    to every evaluation. ``normalizer`` (observation normalization, applied by ``eval_policy``) is
    saved in checkpoints and policy snapshots. ``reward_labeler`` (GAIL with an off-policy learner)
    trains a reward model and relabels each batch before the objective sees it. ``video`` (a
    :class:`~rltrain.video.VideoRecorder`) records an evaluation episode every ``video_every`` ticks.

    ``checkpoints/best.pt`` holds the policy of the best evaluation so far (the layout of a policy
    snapshot: objective weights, normalizer, the evaluation's result), as SB3's EvalCallback keeps it.
    """

    def __init__(self, *, objective: LossModule, updater, groups: list[OptimizerGroup], source: Source,
                 eval_envs, eval_policy, loggers: Loggers, run_dir: Path, config: TrainerConfig,
                 device: torch.device, score_refs: tuple[float, float] | None = None,
                 normalizer: nn.Module | None = None, reward_labeler=None, video=None):
        self.objective = objective
        self.updater = updater
        self.groups = groups
        self.source = source
        self.eval_envs = eval_envs
        self.eval_policy = eval_policy
        self.loggers = loggers
        self.run_dir = Path(run_dir)
        self.config = config
        self.device = device
        self.score_refs = score_refs
        self.normalizer = normalizer
        self.reward_labeler = reward_labeler
        self.video = video
        self.loss_keys = list(objective.loss_groups)
        self.updates = 0
        self._elapsed = 0.0
        self._start = time.perf_counter()
        self.last_eval: dict | None = None
        self.best_eval: dict | None = None
        self.phase_evals: dict[str, dict] = {}
        self._last_losses = None
        self._stop_requested = False
        self._interval = {"time": time.perf_counter(), "updates": 0, "env_steps": 0}
        self._check_every_update = device.type == "cpu"
        self._losses = UpdateLosses(objective, config.compile, device)
        self._all_finite: torch.Tensor | None = None  # on the device: every update since the last read was finite

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / CHECKPOINT_NAME

    @property
    def env_steps(self) -> int:
        return self.source.env_steps

    @property
    def step(self) -> int:
        """The source's clock."""
        return self.source.position(self.updates)

    @property
    def total_steps(self) -> int:
        return self.source.total

    def request_stop(self) -> None:
        """Stop once the updates owed now are done (those of the current env step or rollout): write a
        checkpoint, then raise :class:`StopRequested` (safe to call from a signal handler)."""
        self._stop_requested = True

    # ---- the update step (hot path: no host sync but the CPU finiteness check) -------------------
    def run_updates(self, count: int) -> None:
        """``count`` updates, dispatched ``updates_per_call`` at a time (the last dispatch takes the rest):
        the same updates, batches and order as ``count`` calls of :meth:`update`."""
        per_call = self.config.updates_per_call
        while count > 0:
            dispatch = min(per_call, count)
            self._dispatch(dispatch)
            count -= dispatch

    def _dispatch(self, count: int) -> None:
        """``count`` consecutive updates in one call (the unit a captured K-update graph replaces)."""
        for _ in range(count):
            self.update()

    def update(self) -> None:
        step = self.updates + 1
        due = [group for group in self.groups if step % group.every == 0]
        terms = self._terms_of(due, self.updates)
        if not terms:  # every group waits for a later step (all `every` > 1)
            self.updates = step
            return
        batch = self.source.sample()
        if self.reward_labeler is not None:
            batch = self.reward_labeler(batch)
        losses, total = self._losses(batch, terms)
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
        # accelerator that read would stall the pipeline, so there a device-side flag gathers every
        # update's finiteness and is read at log and checkpoint time (before anything is saved).
        if self._check_every_update:
            if not math.isfinite(total.item()):
                self._stop_on_nonfinite(losses)
        else:
            finite = torch.isfinite(total.detach())
            self._all_finite = finite if self._all_finite is None else self._all_finite.logical_and_(finite)

    def _terms_of(self, groups: list[OptimizerGroup], update: int) -> frozenset[str]:
        """The loss terms that train ``groups`` at ``update`` (only these are computed and backpropagated)."""
        names = {group.name for group in groups}
        return frozenset(term for term, group in self.objective.loss_groups.items()
                         if group in names and self.config.term_active(term, update))

    def _verify_finite(self) -> None:
        """Stop if any update since the last call had a non-finite loss (one host read of the flag)."""
        all_finite, self._all_finite = self._all_finite, None
        if all_finite is not None and not bool(all_finite):
            self._stop_on_nonfinite(self._last_losses)

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
    def ends_interval(self, before: int, after: int) -> bool:
        """Whether the clock's move from ``before`` to ``after`` reaches a checkpoint or the end."""
        return crossed(before, after, self.config.checkpoint_every) or after >= self.source.total

    def fit(self) -> dict:
        self._start = time.perf_counter() - self._elapsed
        self.loggers.console.advance(self.step)
        source = self.source
        while source.position(self.updates) < source.total:
            before = source.position(self.updates)
            self.run_updates(source.advance(self.updates, self.ends_interval))
            after = source.position(self.updates)
            stop = self._stop_requested  # the checkpoint holds the episodes in flight: nothing is cut here
            self._periodic(before, after, stop or self.ends_interval(before, after))
            if stop:
                raise StopRequested(f"stopped on request at {source.clock} {after}; checkpoint written to "
                                    f"{self.checkpoint_path}")
        return self.summary()

    def _periodic(self, before: int, after: int, at_checkpoint: bool) -> None:
        """Progress, evaluation, logging and checkpoints due when the clock moved from ``before`` to ``after``."""
        cfg = self.config
        self.loggers.console.advance(after)
        self._elapsed = time.perf_counter() - self._start
        if crossed(before, after, cfg.eval_every) or after >= self.total_steps:
            self._evaluate()
        if self.video is not None and (crossed(before, after, cfg.video_every) or after >= self.total_steps):
            self._record_video()
        if crossed(before, after, cfg.log_every):
            self._verify_finite()
            self._log_train()
        if at_checkpoint:
            self._verify_finite()
            self.save_checkpoint()

    def _row(self) -> dict:
        """The clock columns every train and eval row starts with."""
        return {"env_step": self.env_steps, "update": self.updates, self.source.clock: self.step,
                **self.source.log_fields(self.updates)}

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
        self.last_eval = {**self._row(), **result, "time": round(self._elapsed, 3)}
        if "phase" in self.last_eval:
            self.phase_evals[self.last_eval["phase"]] = self.last_eval
        if self.best_eval is None or result["return_mean"] > self.best_eval["return_mean"]:
            self.best_eval = self.last_eval
            checkpoint.save_atomic(self._policy_state(), self.run_dir / "checkpoints" / BEST_NAME)
        self.loggers.log_eval(self.last_eval)
        if self.config.policy_snapshots:
            self._save_snapshot()

    def _record_video(self) -> None:
        policy = next(iter(self.eval_policy.values())) if isinstance(self.eval_policy, dict) else self.eval_policy
        self.objective.eval()
        result = self.video.record(policy, self.step, derive_seed(self.config.seed, self.step, 3), self.device)
        self.objective.train()
        self.loggers.log_video(result["path"], {**self._row(), "video_return": result["return"]})

    def _policy_state(self) -> dict:
        """The objective's weights (and normalizer) with the last evaluation's result."""
        return {"objective": self.objective.state_dict(), "eval": self.last_eval,
                "normalizer": self.normalizer.state_dict() if self.normalizer is not None else None,
                "buffer_size": self.source.stored()}

    def _save_snapshot(self) -> None:
        """The policy at this evaluation: datasets of a chosen quality are collected from these
        (``python -m rltrain.make_dataset``)."""
        checkpoint.save_atomic(self._policy_state(), self.run_dir / "checkpoints" / f"policy_{self.step:09d}.pt")

    def _log_train(self) -> None:
        now = time.perf_counter()
        dt = max(now - self._interval["time"], 1e-9)
        metrics = {**self._row(), "time": round(self._elapsed, 3),
                   "updates_per_s": (self.updates - self._interval["updates"]) / dt,
                   "buffer_size": self.source.stored()}
        if self.env_steps:
            metrics["env_steps_per_s"] = (self.env_steps - self._interval["env_steps"]) / dt
        self._interval = {"time": now, "updates": self.updates, "env_steps": self.env_steps}
        if self._last_losses is not None:
            metrics.update({k: float(v.detach()) for k, v in self._last_losses.items() if v.numel() == 1})
        if self.reward_labeler is not None and self.reward_labeler.last_losses is not None:
            metrics.update({f"reward_model/{k}": float(v) for k, v in self.reward_labeler.last_losses.items()
                            if v.numel() == 1})
        episodes = self.source.pop_finished_episodes()
        if episodes:
            metrics["episode_return"] = float(np.mean([r for r, _ in episodes]))
            metrics["episode_length"] = float(np.mean([n for _, n in episodes]))
        self.loggers.log_train(metrics)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "objective": self.objective.state_dict(),
            "optimizers": {g.name: g.optimizer.state_dict() for g in self.groups},
            "schedulers": {g.name: g.scheduler.state_dict() for g in self.groups if g.scheduler is not None},
            "updater": self.updater.state_dict() if self.updater is not None else {},
            "source": self.source.state_dict(),
            "reward_labeler": None if self.reward_labeler is None else self.reward_labeler.state_dict(),
            "normalizer": self.normalizer.state_dict() if self.normalizer is not None else None,
            "rng": checkpoint.rng_state(),
            "counters": {"updates": self.updates, "elapsed": self._elapsed, "position": self.step,
                         "env_steps": self.env_steps},
            "last_losses": None if self._last_losses is None else self._last_losses.detach().cpu().to_dict(),
            "last_eval": self.last_eval,
            "best_eval": self.best_eval,
            "phase_evals": self.phase_evals,
            "loggers": self.loggers.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        check_checkpoint_format(state)
        self.objective.load_state_dict(state["objective"])
        for group in self.groups:
            group.optimizer.load_state_dict(state["optimizers"][group.name])
            if group.scheduler is not None:
                group.scheduler.load_state_dict(state["schedulers"][group.name])
        if self.updater is not None:
            self.updater.load_state_dict(state["updater"])
        if self.reward_labeler is not None:
            self.reward_labeler.load_state_dict(state["reward_labeler"])
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        counters = state["counters"]
        self.updates, self._elapsed = counters["updates"], counters["elapsed"]
        self.last_eval, self.best_eval = state["last_eval"], state["best_eval"]
        self.phase_evals = state["phase_evals"]
        # The next log row reports the last losses even when no update runs before it (DQN's train_every).
        losses = state.get("last_losses")
        self._last_losses = None if losses is None else TensorDict(losses, batch_size=[], device=self.device)
        self.source.load_state_dict(state["source"])  # restarts the source's envs, as at the checkpoint
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
            "best_eval_step": best.get(self.source.clock),
        }
        if self.score_refs is not None:
            summary |= {"final_normalized_score": final.get("normalized_score"),
                        "best_normalized_score": best.get("normalized_score"),
                        "ref_min_score": self.score_refs[0], "ref_max_score": self.score_refs[1]}
        for phase, row in self.phase_evals.items():
            summary[f"final_{phase}_eval_return"] = row["return_mean"]
            if "normalized_score" in row:
                summary[f"final_{phase}_normalized_score"] = row["normalized_score"]
        summary |= {
            "mode": self.source.kind,
            "clock": self.source.clock,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "time_s": round(self._elapsed, 1),
            "run_dir": str(self.run_dir),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


class CheckpointFormatError(ConfigError):
    """A checkpoint written by an rltrain whose checkpoint layout this one cannot read (a resume=
    mistake: exit code 2 like other bad input)."""


def check_checkpoint_format(state: dict) -> None:
    version = state.get("format", 1)
    if version != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"this checkpoint has format {version}; this rltrain reads format {CHECKPOINT_FORMAT} (format 1 "
            "predates run modes as Sources and counted env steps differently, so its counters cannot be "
            "carried over exactly). Resume it with the rltrain version that wrote it (git_commit.txt in the "
            "run directory names the commit), or start a new run.")
