"""Config -> objects: environments, networks, objective, updater, optimizers, loggers, Trainer.

This is the only module (with ``__main__``) that reads configs. Every check on user input runs
here, before any environment is stepped, and fails with a :class:`ConfigError` that names the
problem and the accepted values.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
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
from rltrain.exploration import EpsilonGreedy, GaussianNoise, OrnsteinUhlenbeckNoise
from rltrain.modules import (
    BRNMLP, MLP, Actor, Bounded, Categorical, DistributionalQValueActor, NormalParamExtractor, ProbabilisticActor,
    QValueActor, ScaledTanh, ValueOperator,
)
from rltrain.objectives import LossModule, get_objective
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

def _mlp(n_in: int, n_out: int, cfg: DictConfig) -> MLP:
    return MLP(n_in, n_out, cfg.num_cells, cfg.activation, cfg.layer_norm)


def build_stochastic_actor(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ProbabilisticActor:
    """MLP -> (loc, scale) -> TanhNormal on the action bounds."""
    net = nn.Sequential(_mlp(obs_dim, 2 * action_spec.dim, cfg), NormalParamExtractor(cfg.scale_mapping, cfg.scale_lb))
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], spec=action_spec)


def build_deterministic_actor(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> Actor:
    """MLP -> tanh mapped onto the action bounds."""
    net = nn.Sequential(_mlp(obs_dim, action_spec.dim, cfg), ScaledTanh(action_spec.low, action_spec.high))
    return Actor(net, in_keys=["observation"], spec=action_spec)


def build_qvalue(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ValueOperator:
    return ValueOperator(_mlp(obs_dim + action_spec.dim, 1, cfg), in_keys=["observation", "action"])


def build_crossq_critic(obs_dim: int, action_spec: Bounded, cfg: DictConfig) -> ValueOperator:
    """CrossQ's critic: Batch Renormalization on the input and after every hidden layer."""
    brn = OmegaConf.to_container(cfg.batch_renorm, resolve=True)
    net = BRNMLP(obs_dim + action_spec.dim, 1, tuple(cfg.num_cells), cfg.activation, **brn)
    return ValueOperator(net, in_keys=["observation", "action"])


def build_state_value(obs_dim: int, cfg: DictConfig) -> ValueOperator:
    return ValueOperator(_mlp(obs_dim, 1, cfg), in_keys=["observation"])


# ---- objectives and their policies ---------------------------------------------------------------------

@dataclass
class Agent:
    """An objective and the policies the Trainer acts with."""

    objective: LossModule
    behaviour: Callable[[torch.Tensor], torch.Tensor]  # collection (a sample, or the greedy action)
    greedy: Callable[[torch.Tensor], torch.Tensor]     # evaluation (deterministic)
    exploration: object | None = None


def _loss_kwargs(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.algo.loss, resolve=True)


def stochastic_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """SAC, REDQ, CrossQ: a TanhNormal actor; collection samples it, evaluation takes its mode."""
    name = cfg.algo.objective
    actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    if name == "crossq":
        qvalue = build_crossq_critic(obs_dim, action_spec, cfg.network.critic)
    else:
        qvalue = build_qvalue(obs_dim, action_spec, cfg.network.critic)
    args = [actor, qvalue]
    if name == "sac" and cfg.algo.value_network:
        args.append(build_state_value(obs_dim, cfg.network.critic))
    objective = get_objective(name)(*args, action_spec=action_spec, **_loss_kwargs(cfg))
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=True))


def deterministic_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """TD3, DDPG: a deterministic actor plus exploration noise during collection."""
    name = cfg.algo.objective
    actor = build_deterministic_actor(obs_dim, action_spec, cfg.network.actor)
    critic = build_qvalue(obs_dim, action_spec, cfg.network.critic)
    extra = {"action_spec": action_spec} if name == "td3" else {}
    objective = get_objective(name)(actor, critic, **extra, **_loss_kwargs(cfg))
    greedy = lambda obs: actor.act(obs)  # noqa: E731
    return Agent(objective, greedy, greedy, build_exploration(cfg, action_spec))


def qvalue_agent(cfg: DictConfig, obs_dim: int, action_spec: Categorical) -> Agent:
    """DQN, C51: a Q-value actor acting greedily, epsilon-greedy during collection."""
    name, n = cfg.algo.objective, action_spec.n
    if name == "c51":
        support = cfg.algo.support
        if support.vmin >= support.vmax:
            raise ConfigError(f"algo.support needs vmin < vmax, got vmin={support.vmin}, vmax={support.vmax}")
        atoms = torch.linspace(support.vmin, support.vmax, support.n_atoms)
        actor = DistributionalQValueActor(_mlp(obs_dim, n * support.n_atoms, cfg.network.critic), support=atoms,
                                          action_space="categorical")
        objective = get_objective(name)(actor, gamma=cfg.algo.gamma, **_loss_kwargs(cfg))
    else:
        actor = QValueActor(_mlp(obs_dim, n, cfg.network.critic), action_space="categorical")
        objective = get_objective(name)(actor, action_space="categorical", **_loss_kwargs(cfg))
    greedy = lambda obs: actor.act(obs)  # noqa: E731
    return Agent(objective, greedy, greedy, build_exploration(cfg, action_spec))


# objective name -> (agent builder, needs a continuous action space)
AGENT_BUILDERS: dict[str, tuple[Callable[..., Agent], bool]] = {
    "sac": (stochastic_agent, True), "redq": (stochastic_agent, True), "crossq": (stochastic_agent, True),
    "td3": (deterministic_agent, True), "ddpg": (deterministic_agent, True),
    "dqn": (qvalue_agent, False), "c51": (qvalue_agent, False),
}


def build_exploration(cfg: DictConfig, action_spec):
    explore = cfg.algo.get("exploration")
    if explore is None:
        return None
    kind = explore.type
    kwargs = {k: v for k, v in explore.items() if k != "type"}
    if kind == "egreedy":
        if not isinstance(action_spec, Categorical):
            raise ConfigError("algo.exploration.type=egreedy needs a discrete action space; use gaussian or ou")
        return EpsilonGreedy(action_spec.n, **kwargs)
    if kind not in ("gaussian", "ou"):
        raise ConfigError(f"unknown algo.exploration.type {kind!r}; accepted: gaussian, ou, egreedy or null")
    if not isinstance(action_spec, Bounded):
        raise ConfigError(f"algo.exploration.type={kind} needs a continuous action space; use egreedy")
    if kind == "ou":
        return OrnsteinUhlenbeckNoise(action_spec, cfg.env.num_envs, **kwargs)
    return GaussianNoise(action_spec, **kwargs)


def build_agent(cfg: DictConfig, obs_spec: Bounded, action_spec) -> Agent:
    name = cfg.algo.objective
    if name not in AGENT_BUILDERS:
        raise ConfigError(f"unknown objective {name!r} in algo.objective; accepted: {sorted(AGENT_BUILDERS)}")
    _check_loss_kwargs(name, cfg.algo.loss)
    builder, continuous = AGENT_BUILDERS[name]
    if continuous and not isinstance(action_spec, Bounded):
        raise ConfigError(f"algo={cfg.algo.name} needs a continuous (Box) action space, but {cfg.env.id} has a "
                          f"discrete one ({action_spec}). Pick a continuous-action env (env=pendulum, "
                          "env=halfcheetah, ...) or a discrete algorithm (algo=dqn, algo=c51).")
    if not continuous and not isinstance(action_spec, Categorical):
        raise ConfigError(f"algo={cfg.algo.name} needs a discrete action space, but {cfg.env.id} has a continuous "
                          f"one. Pick a discrete env (env=cartpole, env=acrobot, ...) or a continuous algorithm "
                          "(algo=sac, algo=td3, ...).")
    try:
        agent = builder(cfg, obs_spec.dim, action_spec)
    except (ValueError, TypeError) as err:  # the objective's own argument checks
        raise ConfigError(f"algo={cfg.algo.name}: {err}") from err
    if name != "c51":
        agent.objective.make_value_estimator(gamma=cfg.algo.gamma)
    return agent


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
    if t.train_every < 1:
        raise ConfigError(f"trainer.train_every must be >= 1, got {t.train_every}")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    t = cfg.trainer
    return TrainerConfig(
        total_env_steps=int(t.total_env_steps), warmup_steps=int(t.warmup_steps),
        learning_starts=int(t.learning_starts), updates_per_step=float(t.updates_per_step),
        train_every=int(t.train_every),
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
    agent = build_agent(cfg, obs_spec, action_spec)
    objective = agent.objective.to(device)
    updater = build_updater(objective, cfg.algo.updater)
    groups = build_groups(objective, cfg.algo.optim)
    collector = Collector(envs, agent.behaviour, device, seed=cfg.seed, exploration=agent.exploration)
    config = trainer_config(cfg)
    return Trainer(
        objective=objective, updater=updater, groups=groups,
        buffer=ReplayBuffer(config.buffer_size, device, seed=cfg.seed),
        collector=collector, eval_envs=eval_envs,
        eval_policy=agent.greedy,
        loggers=build_loggers(cfg, run_dir, wandb_run_id, initial_step), run_dir=run_dir,
        config=config, device=device)
