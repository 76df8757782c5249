"""Config -> objects: environments, networks, objective, updater, optimizers, loggers, Trainer.

This is the only module (with ``__main__``) that reads configs. Every check on user input runs
here, before any environment is stepped, and fails with a :class:`ConfigError` that names the
problem and the accepted values.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch import nn

from rltrain.collect import Collector
from rltrain.data.replay import ReplayBuffer
from rltrain.envs import check_env_id, env_specs, make_vector_env
from rltrain.errors import ConfigError
from rltrain.loggers import ConsoleProgress, CSVLogger, Loggers, TensorboardLogger, WandbLogger
from rltrain.modules import MLP, Bounded, NormalParamExtractor, ProbabilisticActor, ValueOperator
from rltrain.objectives import LossModule, get_objective, registered_objectives
from rltrain.trainer import OptimizerGroup, Trainer, TrainerConfig
from rltrain.updaters import UPDATERS

LOGGER_BACKENDS = ("wandb", "tensorboard")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


# ---- networks ----------------------------------------------------------------------------------

def build_stochastic_actor(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ProbabilisticActor:
    """MLP -> (loc, scale) -> TanhNormal on the action bounds."""
    net = nn.Sequential(
        MLP(obs_dim, 2 * action_spec.dim, cfg.num_cells, cfg.activation, cfg.layer_norm),
        NormalParamExtractor(cfg.scale_mapping, cfg.scale_lb),
    )
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], spec=action_spec)


def build_qvalue(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ValueOperator:
    net = MLP(obs_dim + action_spec.dim, 1, cfg.num_cells, cfg.activation, cfg.layer_norm)
    return ValueOperator(net, in_keys=["observation", "action"])


def build_state_value(obs_dim: int, cfg: DictConfig) -> ValueOperator:
    return ValueOperator(MLP(obs_dim, 1, cfg.num_cells, cfg.activation, cfg.layer_norm), in_keys=["observation"])


def _require_continuous(algo: str, env_id: str, action_spec) -> Bounded:
    if not isinstance(action_spec, Bounded):
        raise ConfigError(f"algo={algo} needs a continuous (Box) action space, but {env_id} has a discrete "
                          f"one ({action_spec}). Pick a continuous-action env, e.g. env=pendulum or "
                          "env=halfcheetah.")
    return action_spec


def build_sac_objective(cfg: DictConfig, obs_spec: Bounded, action_spec) -> LossModule:
    action_spec = _require_continuous(cfg.algo.name, cfg.env.id, action_spec)
    obs_dim = obs_spec.dim
    actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    qvalue = build_qvalue(obs_dim, action_spec, cfg.network.critic)
    value = build_state_value(obs_dim, cfg.network.critic) if cfg.algo.value_network else None
    loss_kwargs = OmegaConf.to_container(cfg.algo.loss, resolve=True)
    return get_objective("sac")(actor, qvalue, value, action_spec=action_spec, **loss_kwargs)


OBJECTIVE_BUILDERS = {"sac": build_sac_objective}


def build_objective(cfg: DictConfig, obs_spec, action_spec) -> LossModule:
    name = cfg.algo.objective
    if name not in OBJECTIVE_BUILDERS:
        raise ConfigError(f"unknown objective {name!r} in algo.objective; registered: {registered_objectives()}")
    _check_loss_kwargs(name, cfg.algo.loss)
    objective = OBJECTIVE_BUILDERS[name](cfg, obs_spec, action_spec)
    objective.make_value_estimator(gamma=cfg.algo.gamma)
    return objective


def _check_loss_kwargs(name: str, loss_cfg: DictConfig) -> None:
    accepted = set(inspect.signature(get_objective(name).__init__).parameters) - {"self", "gamma", "priority_key"}
    unknown = set(loss_cfg) - accepted
    if unknown:
        raise ConfigError(f"algo.loss has unknown key(s) {sorted(unknown)} for objective {name!r}; "
                          f"accepted: {sorted(accepted)}")


# ---- optimisation ------------------------------------------------------------------------------

def build_updater(objective: LossModule, cfg: DictConfig):
    if cfg is None or cfg.type is None:
        return None
    if cfg.type not in UPDATERS:
        raise ConfigError(f"unknown algo.updater.type {cfg.type!r}; accepted: {sorted(UPDATERS)} or null")
    kwargs = {k: v for k, v in cfg.items() if k != "type" and v is not None}
    return UPDATERS[cfg.type](objective, **kwargs)


def make_adam(params: list[nn.Parameter], lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch has it for the device, else the foreach one."""
    kwargs = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, foreach=True, **kwargs)


def build_groups(objective: LossModule, optim_cfg: DictConfig) -> list[OptimizerGroup]:
    groups = []
    for name in objective.parameter_groups:
        if name not in optim_cfg:
            raise ConfigError(f"algo.optim has no settings for the parameter group {name!r}; add "
                              f"algo.optim.{name}.lr (groups of this objective: {objective.parameter_groups})")
        group_cfg = optim_cfg[name]
        params = objective.group_parameters(name)
        optimizer = make_adam(params, group_cfg.lr, group_cfg.betas, group_cfg.eps, group_cfg.weight_decay)
        groups.append(OptimizerGroup(name, optimizer, params, group_cfg.grad_clip, group_cfg.every))
    return groups


# ---- logging -----------------------------------------------------------------------------------

def build_loggers(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None, initial_step: int) -> Loggers:
    backends = []
    for name in cfg.logger.backends:
        if name not in LOGGER_BACKENDS:
            raise ConfigError(f"unknown logger backend {name!r}; accepted: {LOGGER_BACKENDS}")
    for name in cfg.logger.backends:
        if name == "wandb":
            w = cfg.logger.wandb
            default_name = f"{cfg.algo.name}-{cfg.env.id}-seed{cfg.seed}"
            backends.append(WandbLogger(
                run_dir, OmegaConf.to_container(cfg, resolve=True), project=w.project, entity=w.entity,
                group=w.group or f"{cfg.algo.name}-{cfg.env.id}", name=w.name or default_name,
                tags=list(w.tags) if w.tags else None, mode=w.mode, run_id=wandb_run_id))
        else:
            backends.append(TensorboardLogger(run_dir))
    console = ConsoleProgress(cfg.trainer.total_env_steps, initial=initial_step, enabled=cfg.logger.progress)
    return Loggers(CSVLogger(run_dir), console, backends)


# ---- everything ----------------------------------------------------------------------------------

def validate(cfg: DictConfig) -> None:
    """Checks that need no environment: fail before anything is built."""
    check_env_id(cfg.env.id)
    t = cfg.trainer
    for key in ("total_env_steps", "batch_size", "buffer_size", "eval_episodes"):
        if t[key] < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {t[key]}")
    if t.updates_per_step <= 0:
        raise ConfigError(f"trainer.updates_per_step must be > 0, got {t.updates_per_step}")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    t = cfg.trainer
    return TrainerConfig(
        total_env_steps=int(t.total_env_steps), warmup_steps=int(t.warmup_steps),
        learning_starts=int(t.learning_starts), updates_per_step=float(t.updates_per_step),
        batch_size=int(t.batch_size), buffer_size=int(t.buffer_size), eval_every=int(t.eval_every),
        eval_episodes=int(t.eval_episodes), checkpoint_every=int(t.checkpoint_every),
        log_every=int(t.log_every), updater_every=int(cfg.algo.updater_every), seed=int(cfg.seed))


def build_trainer(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None = None,
                  initial_step: int = 0) -> Trainer:
    validate(cfg)
    device = resolve_device(cfg.device)
    env_kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    envs = make_vector_env(cfg.env.id, cfg.env.num_envs, cfg.env.max_episode_steps, **env_kwargs)
    eval_envs = make_vector_env(cfg.env.id, min(cfg.env.eval_num_envs, cfg.trainer.eval_episodes),
                                cfg.env.max_episode_steps, **env_kwargs)
    obs_spec, action_spec = env_specs(envs)
    objective = build_objective(cfg, obs_spec, action_spec).to(device)
    updater = build_updater(objective, cfg.algo.updater)
    groups = build_groups(objective, cfg.algo.optim)
    actor = objective.actor_network
    collector = Collector(envs, lambda obs: actor.act(obs, deterministic=False), device, seed=cfg.seed)
    config = trainer_config(cfg)
    return Trainer(
        objective=objective, updater=updater, groups=groups,
        buffer=ReplayBuffer(config.buffer_size, device, seed=cfg.seed),
        collector=collector, eval_envs=eval_envs,
        eval_policy=lambda obs: actor.act(obs, deterministic=True),
        loggers=build_loggers(cfg, run_dir, wandb_run_id, initial_step), run_dir=run_dir,
        config=config, device=device)
