"""Optimisation from config: one optimizer per parameter group, learning-rate schedules, target updaters."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from rltrain.errors import ConfigError
from rltrain.objectives import LossModule
from rltrain.trainer import OptimizerGroup
from rltrain.updaters import UPDATERS

def build_updater(objective: LossModule, cfg: DictConfig):
    if cfg is None or cfg.type is None:
        return None
    if cfg.type not in UPDATERS:
        raise ConfigError(f"unknown algo.updater.type {cfg.type!r}; accepted: {sorted(UPDATERS)} or null")
    kwargs = {k: v for k, v in cfg.items() if k != "type" and v is not None}
    return UPDATERS[cfg.type](objective, **kwargs)


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("cosine", "linear", "warmup")


def make_adam(params: list[nn.Parameter], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0, kind: str = "adam") -> torch.optim.Optimizer:
    """Adam (or AdamW: decoupled weight decay) with the fused kernel where this torch has it for the
    device, else the foreach one."""
    cls = OPTIMIZERS[kind]
    kwargs = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return cls(params, foreach=True, **kwargs)


def planned_updates(cfg: DictConfig, kind: str) -> int:
    """How many updates a run on source ``kind`` will make (the horizon of learning-rate schedules)."""
    t = cfg.trainer
    if kind == "rollout":
        rows = int(cfg.algo.steps_per_env) * int(cfg.env.num_envs)
        rounds = math.ceil(t.total_env_steps / rows)
        return max(1, rounds * int(cfg.algo.epochs) * (rows // int(t.batch_size)))
    if kind in ("dataset", "finetune"):
        return int(t.total_updates)
    if kind == "offline_to_online":
        online = max(0, int((cfg.source.online_env_steps - t.learning_starts) * t.updates_per_step))
        return max(1, int(cfg.source.offline_updates) + online)
    return max(1, int((t.total_env_steps - t.learning_starts) * t.updates_per_step))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str | None, group: str, steps: int,
                    warmup_steps: int = 0):
    """``cosine`` (IQL's actor), ``linear`` decay to 0 (PPO), or ``warmup``: a linear ramp over
    ``warmup_steps`` updates, then constant (the Decision Transformer)."""
    if kind is None:
        return None
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown algo.optim.{group}.schedule {kind!r}; accepted: {', '.join(SCHEDULES)} or null")
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: max(0.0, 1.0 - update / steps))
    ramp = max(1, int(warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: min(1.0, (update + 1) / ramp))


def _group_period(name: str, every) -> int:
    """``algo.optim.<name>.every`` as a whole number of updates >= 1."""
    if isinstance(every, bool) or not isinstance(every, int | float) or every < 1 or every != int(every):
        raise ConfigError(f"algo.optim.{name}.every must be a whole number of updates >= 1 (the group steps once "
                          f"every that many updates), got {every!r}; set algo.optim.{name}.every=1 to step it "
                          "on every update")
    return int(every)


def build_groups(objective: LossModule, cfg: DictConfig, source_kind: str) -> list[OptimizerGroup]:
    """One Adam per parameter group of ``objective`` from ``cfg.algo.optim``; schedules span the updates
    a run on ``source_kind`` makes."""
    optim_cfg = cfg.algo.optim
    groups = []
    for name in objective.parameter_groups:
        if name not in optim_cfg:
            raise ConfigError(f"algo.optim has no settings for the parameter group {name!r}; add "
                              f"algo.optim.{name}.lr (groups of this objective: {objective.parameter_groups})")
        group_cfg = optim_cfg[name]
        params = objective.group_parameters(name)
        kind = group_cfg.get("optimizer", "adam")
        if kind not in OPTIMIZERS:
            raise ConfigError(f"unknown algo.optim.{name}.optimizer {kind!r}; accepted: {sorted(OPTIMIZERS)}")
        every = _group_period(name, group_cfg.every)
        optimizer = make_adam(params, group_cfg.lr, group_cfg.betas, group_cfg.eps, group_cfg.weight_decay, kind)
        steps = planned_updates(cfg, source_kind) // every
        scheduler = build_scheduler(optimizer, group_cfg.get("schedule"), name, steps, group_cfg.get("warmup_steps", 0))
        groups.append(OptimizerGroup(name, optimizer, params, group_cfg.grad_clip, every, scheduler))
    return groups


