"""Config -> objects: environments, networks, objective, updater, optimizers, loggers, Trainer.

This is the only module (with ``__main__``) that reads configs. Every check on user input runs
here, before any environment is stepped, and fails with a :class:`ConfigError` that names the
problem and the accepted values.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule
from torch import nn

from rltrain.collect import Collector
from rltrain.data.chunks import ChunkSampler
from rltrain.data.trajectory import OnlineFinetuneSource, TrajectoryBuffer
from rltrain.data.minari_data import (
    DatasetError, OfflineData, TransitionSampler, load_minari, minari_root, to_offline_data,
)
from rltrain.data.normalize import ObservationNormalizer, apply_reward_transform, normalize_in_place
from rltrain.data.replay import ReplayBuffer, RewardRelabelingReplay
from rltrain.envs import check_env_id, env_specs, make_vector_env
from rltrain.errors import ConfigError
from rltrain.loggers import ConsoleProgress, CSVLogger, Loggers, TensorboardLogger, WandbLogger
from rltrain.exploration import EpsilonGreedy, GaussianNoise, OrnsteinUhlenbeckNoise
from rltrain.modules import (
    BRNMLP, DDPM, MLP, ACTActor, ACTModel, Actor, Bounded, Categorical, CategoricalActor, DecisionTransformer,
    DiffusionActor, Discriminator, DistributionalQValueActor, DTActor, DTPolicy, NormalParamExtractor, OnlineDTActor,
    ProbabilisticActor, QValueActor, ScaledTanh, TemporalEnsemblePolicy, ValueOperator,
)
from rltrain.objectives import LossModule, get_objective
from rltrain.onpolicy import GAILRewardModel, RolloutSource
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
    extra = {"action_spec": action_spec} if name in ("td3", "td3bc") else {}
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


def iql_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """IQL: a TanhNormal actor (AWR), twin Q and a state-value network."""
    actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    objective = get_objective("iql")(actor, build_qvalue(obs_dim, action_spec, cfg.network.critic),
                                     build_state_value(obs_dim, cfg.network.critic), **_loss_kwargs(cfg))
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=True))


def build_categorical_actor(obs_dim: int, action_spec: Categorical, cfg: DictConfig) -> CategoricalActor:
    return CategoricalActor(_mlp(obs_dim, action_spec.n, cfg), in_keys=["observation"], spec=action_spec)


def discrete_iql_agent(cfg: DictConfig, obs_dim: int, action_spec: Categorical) -> Agent:
    """Discrete IQL: a categorical actor, Q(s, .) heads and a state-value network."""
    actor = build_categorical_actor(obs_dim, action_spec, cfg.network.actor)
    qvalue = ValueOperator(_mlp(obs_dim, action_spec.n, cfg.network.critic), in_keys=["observation"])
    objective = get_objective("discrete_iql")(actor, qvalue, build_state_value(obs_dim, cfg.network.critic),
                                              action_space="categorical", **_loss_kwargs(cfg))
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=True))


def bc_agent(cfg: DictConfig, obs_dim: int, action_spec) -> Agent:
    """Behaviour cloning: a categorical actor on discrete data, else a deterministic or TanhNormal one."""
    if isinstance(action_spec, Categorical):
        actor = build_categorical_actor(obs_dim, action_spec, cfg.network.actor)
    elif cfg.algo.policy == "stochastic":
        actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    elif cfg.algo.policy == "deterministic":
        actor = build_deterministic_actor(obs_dim, action_spec, cfg.network.actor)
    else:
        raise ConfigError(f"algo.policy must be deterministic or stochastic, got {cfg.algo.policy!r}")
    objective = get_objective("bc")(actor, **_loss_kwargs(cfg))
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=True))


def _model_kwargs(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.algo.model, resolve=True)


EVAL_SAMPLING = ("stochastic", "deterministic")


def diffusion_bc_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """Diffusion BC: a DDPM over actions conditioned on the state; acting runs the full reverse chain."""
    if cfg.algo.eval_sampling not in EVAL_SAMPLING:
        raise ConfigError(f"algo.eval_sampling must be one of {EVAL_SAMPLING}, got {cfg.algo.eval_sampling!r}")
    actor = DiffusionActor(DDPM(action_spec.dim, obs_dim, **_model_kwargs(cfg)), spec=action_spec)
    objective = get_objective("diffusion_bc")(actor, **_loss_kwargs(cfg))
    deterministic = cfg.algo.eval_sampling == "deterministic"
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=deterministic))


def act_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """ACT: a CVAE transformer predicting chunks of actions; acting ensembles the overlapping chunks."""
    actor = ACTActor(ACTModel(obs_dim, action_spec.dim, int(cfg.algo.chunk_size), **_model_kwargs(cfg)),
                     spec=action_spec)
    objective = get_objective("act")(actor, **_loss_kwargs(cfg))
    policy = TemporalEnsemblePolicy(actor, temporal_ensemble=cfg.algo.temporal_ensemble,
                                    ensemble_decay=cfg.algo.ensemble_decay)
    return Agent(objective, policy, policy)


def ppo_agent(cfg: DictConfig, obs_dim: int, action_spec) -> Agent:
    """PPO: a TanhNormal (continuous) or categorical (discrete) actor and a state-value critic."""
    if isinstance(action_spec, Categorical):
        actor = build_categorical_actor(obs_dim, action_spec, cfg.network.actor)
    else:
        actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    objective = get_objective("ppo")(actor, build_state_value(obs_dim, cfg.network.critic), **_loss_kwargs(cfg))
    objective.make_value_estimator("gae", gamma=cfg.algo.gamma, lmbda=cfg.algo.gae_lambda)
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=True))


def dt_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """Decision Transformer (tanh head) or Online DT (TanhNormal head). The policies that act in an env
    need target returns: :func:`dt_policies` builds them."""
    transformer = DecisionTransformer(obs_dim, action_spec.dim, max_ep_len=int(cfg.algo.max_ep_len),
                                      context_len=int(cfg.algo.context_len), **_model_kwargs(cfg))
    online = cfg.algo.objective == "online_dt"
    actor = (OnlineDTActor if online else DTActor)(transformer, action_spec)
    objective = get_objective(cfg.algo.objective)(actor, **_loss_kwargs(cfg))
    return Agent(objective, behaviour=None, greedy=None)


def dt_policy(cfg: DictConfig, objective: LossModule, target_return: float, normalizer: nn.Module | None,
              deterministic: bool = True) -> DTPolicy:
    a = cfg.algo
    return DTPolicy(objective.actor_network, target_return, a.rtg_scale, int(a.context_len), int(a.max_ep_len),
                    normalizer=normalizer, deterministic=deterministic)


def dt_target_returns(cfg: DictConfig, data: OfflineData, refs: tuple[float, float] | None) -> list[float]:
    """``dataset.target_returns``, else the expert reference, else the data's best episode; times
    ``algo.eval_target_scale``."""
    if cfg.dataset.target_returns:
        targets = [float(r) for r in cfg.dataset.target_returns]
    elif refs is not None:
        targets = [refs[1]]
    else:
        targets = [float(data.episode_returns.max())]
    return [t * float(cfg.algo.eval_target_scale) for t in targets]


def dt_policies(cfg: DictConfig, objective: LossModule, targets: list[float], normalizer) -> dict[str, DTPolicy]:
    """One evaluation policy per target return, labelled ``target=<R>``."""
    return {f"target={t:g}": dt_policy(cfg, objective, t, normalizer) for t in targets}


class NormalizedPolicy:
    """``policy`` on normalized observations; a policy's episode hooks (``reset``, ``record``) pass through."""

    def __init__(self, policy: Callable[[torch.Tensor], torch.Tensor], normalizer: nn.Module):
        self.policy = policy
        self.normalizer = normalizer

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.normalizer(obs))

    def __getattr__(self, name: str):
        if name in ("reset", "record"):
            return getattr(self.policy, name)
        raise AttributeError(name)


# objective name -> (agent builder, action space: True continuous, False discrete, None either)
AGENT_BUILDERS: dict[str, tuple[Callable[..., Agent], bool | None]] = {
    "sac": (stochastic_agent, True), "redq": (stochastic_agent, True), "crossq": (stochastic_agent, True),
    "td3": (deterministic_agent, True), "ddpg": (deterministic_agent, True),
    "dqn": (qvalue_agent, False), "c51": (qvalue_agent, False),
    "iql": (iql_agent, True), "cql": (stochastic_agent, True), "td3bc": (deterministic_agent, True),
    "bc": (bc_agent, None), "discrete_iql": (discrete_iql_agent, False), "discrete_cql": (qvalue_agent, False),
    "diffusion_bc": (diffusion_bc_agent, True), "act": (act_agent, True), "ppo": (ppo_agent, None),
    "dt": (dt_agent, True), "online_dt": (dt_agent, True),
}
OWN_VALUE_ESTIMATOR = ("c51", "ppo")  # the others get a TD(0) estimator with algo.gamma
CONTINUOUS_CHOICES = ", ".join(f"algo={n}" for n, (_, c) in AGENT_BUILDERS.items() if c is not False)
DISCRETE_CHOICES = ", ".join(f"algo={n}" for n, (_, c) in AGENT_BUILDERS.items() if c is not True)


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
    check_action_space(cfg, action_spec)
    builder = AGENT_BUILDERS[name][0]
    try:
        agent = builder(cfg, obs_spec.dim, action_spec)
    except (ValueError, TypeError) as err:  # the objective's own argument checks
        raise ConfigError(f"algo={cfg.algo.name}: {err}") from err
    if name not in OWN_VALUE_ESTIMATOR:
        agent.objective.make_value_estimator(gamma=cfg.algo.gamma)
    return agent


def check_action_space(cfg: DictConfig, action_spec) -> None:
    """The objective's kind of actions (continuous, discrete or either) against the env's or data's."""
    continuous = AGENT_BUILDERS[cfg.algo.objective][1]
    source = f"dataset {cfg.dataset.id}" if cfg.dataset is not None else cfg.env.id
    if continuous is True and not isinstance(action_spec, Bounded):
        raise ConfigError(f"algo={cfg.algo.name} needs a continuous (Box) action space, but {source} has a "
                          f"discrete one ({action_spec}). Pick continuous-action data or env (env=pendulum, "
                          f"dataset=d4rl/hopper, ...) or a discrete algorithm ({DISCRETE_CHOICES}).")
    if continuous is False and not isinstance(action_spec, Categorical):
        raise ConfigError(f"algo={cfg.algo.name} needs a discrete action space, but {source} has a continuous "
                          f"one. Pick discrete-action data or env (env=cartpole, env=acrobot, ...) or a continuous "
                          f"algorithm ({CONTINUOUS_CHOICES}).")


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


def planned_updates(cfg: DictConfig) -> int:
    """How many updates the run will make (the horizon of learning-rate schedules)."""
    t = cfg.trainer
    if cfg.algo.get("on_policy"):
        rows = int(cfg.algo.steps_per_env) * int(cfg.env.num_envs)
        rounds = math.ceil(t.total_env_steps / rows)
        return max(1, rounds * int(cfg.algo.epochs) * (rows // int(t.batch_size)))
    if counts_updates(cfg):
        return int(t.total_updates)
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


def build_groups(objective: LossModule, cfg: DictConfig) -> list[OptimizerGroup]:
    """One Adam per parameter group of ``objective`` from ``cfg.algo.optim``."""
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
        steps = planned_updates(cfg) // every
        scheduler = build_scheduler(optimizer, group_cfg.get("schedule"), name, steps, group_cfg.get("warmup_steps", 0))
        groups.append(OptimizerGroup(name, optimizer, params, group_cfg.grad_clip, every, scheduler))
    return groups


# ---- logging -----------------------------------------------------------------------------------

def build_loggers(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None, initial_step: int) -> Loggers:
    backends = []
    step_key = "update" if counts_updates(cfg) else "env_step"
    for name in cfg.logger.backends:
        if name not in LOGGER_BACKENDS:
            raise ConfigError(f"unknown logger backend {name!r}; accepted: {LOGGER_BACKENDS}")
    for name in cfg.logger.backends:
        if name == "wandb":
            w = cfg.logger.wandb
            default_name = f"{cfg.algo.name}-{task_name(cfg)}-seed{cfg.seed}"
            backends.append(WandbLogger(
                run_dir, OmegaConf.to_container(cfg, resolve=True), project=w.project, entity=w.entity,
                group=w.group or f"{cfg.algo.name}-{task_name(cfg)}", name=w.name or default_name,
                tags=list(w.tags) if w.tags else None, mode=w.mode, run_id=wandb_run_id, step_key=step_key))
        else:
            backends.append(TensorboardLogger(run_dir, step_key=step_key))
    total = cfg.trainer.total_updates if counts_updates(cfg) else cfg.trainer.total_env_steps
    console = ConsoleProgress(total, initial=initial_step, enabled=cfg.logger.progress)
    return Loggers(CSVLogger(run_dir), console, backends)


# ---- offline data -------------------------------------------------------------------------------

def counts_updates(cfg: DictConfig) -> bool:
    """The run's clock: gradient updates when it learns from a dataset alone, else env steps (online
    and on-policy runs, imitation included)."""
    return cfg.dataset is not None and not cfg.algo.get("on_policy") and not cfg.algo.get("imitation")


def task_name(cfg: DictConfig) -> str:
    """What a run learns from: the dataset id offline, the env id online."""
    return cfg.dataset.id if cfg.dataset is not None else cfg.env.id


def _make_hint(ds: DictConfig) -> str:
    if ds.make_env:
        return (f"python -m rltrain.make_dataset env={ds.make_env} quality={ds.quality} dataset_id={ds.id} "
                "source_run=<an rltrain run on that env, trained with trainer.policy_snapshots=true>")
    return (f"`minari download {ds.id}` where a network is reachable (then copy it into this Minari root), or "
            "make a local dataset: python -m rltrain.make_dataset env=<env> quality=<quality>")


def _medium_expert_parts(dataset_id: str) -> list[str] | None:
    """D4RL's medium-expert is medium + expert: the two sibling ids, if ``dataset_id`` is one."""
    prefix, _, name = dataset_id.rpartition("/")
    match = re.fullmatch(r"medium-expert-v(\d+)", name)
    if match is None:
        return None
    return [f"{prefix}/{quality}-v{match.group(1)}".lstrip("/") for quality in ("medium", "expert")]


def load_offline_data(ds: DictConfig) -> OfflineData:
    """The dataset ``ds.id`` as :class:`OfflineData`; a missing ``*/medium-expert-vN`` is made from its
    medium and expert siblings."""
    hint = _make_hint(ds)
    try:
        return to_offline_data(load_minari(ds.id, download=ds.download, make_hint=hint))
    except DatasetError:
        parts = _medium_expert_parts(ds.id)
        if parts is None or (minari_root() / ds.id).exists():  # a damaged medium-expert is reported as such
            raise
    datasets = [to_offline_data(load_minari(part, download=ds.download, make_hint=hint)) for part in parts]
    return OfflineData.concatenate(datasets, ds.id)


def prepare_offline_data(cfg: DictConfig, data: OfflineData) -> ObservationNormalizer:
    """Reward transform and observation normalization, in place; returns the normalizer."""
    ds = cfg.dataset
    kind = ds.reward_transform or cfg.algo.get("reward_transform") or "none"
    try:
        apply_reward_transform(data, kind, ds.reward_scale, ds.reward_shift)
    except ValueError as err:
        raise ConfigError(f"dataset.reward_transform: {err}") from err
    if not ds.normalize_observations:
        return ObservationNormalizer.identity(data.observations.shape[-1])
    normalizer = ObservationNormalizer.from_data(data)
    normalize_in_place(data, normalizer)
    return normalizer


def _data_env(cfg: DictConfig, data: OfflineData):
    """The env a dataset is evaluated (and imitated) in: ``dataset.eval_env``, else the one it records."""
    return cfg.dataset.eval_env or data.eval_env_spec or data.env_spec


def make_offline_eval_envs(cfg: DictConfig, data: OfflineData):
    """The dataset's evaluation env (``dataset.eval_env`` overrides the one it records), checked
    against the data's spaces."""
    target = _data_env(cfg, data)
    if target is None:
        raise ConfigError(f"dataset {data.dataset_id!r} records no environment to evaluate in; set "
                          "dataset.eval_env=<gymnasium id>")
    envs = make_vector_env(target, min(cfg.env.eval_num_envs, cfg.trainer.eval_episodes), cfg.env.max_episode_steps)
    obs_spec, action_spec = env_specs(envs)
    discrete = data.actions.dtype == torch.long
    data_action_dim = int(data.action_space.n) if discrete else data.actions.shape[-1]
    env_action_dim = action_spec.n if isinstance(action_spec, Categorical) else action_spec.dim
    if (obs_spec.dim != data.observations.shape[-1] or discrete != isinstance(action_spec, Categorical)
            or env_action_dim != data_action_dim):
        name = target if isinstance(target, str) else target.id
        raise ConfigError(f"dataset {data.dataset_id!r} does not fit its eval env {name!r}: observations "
                          f"{data.observations.shape[-1]} vs {obs_spec.dim}, actions {data.action_space} vs "
                          f"{envs.single_action_space}. Set dataset.eval_env to the env the data came from.")
    return envs, obs_spec, action_spec


def score_refs(cfg: DictConfig, data: OfflineData) -> tuple[float, float] | None:
    """(ref_min, ref_max) for normalized scores: the dataset's own, else the config's (D4RL's)."""
    ref_min = data.ref_min_score if data.ref_min_score is not None else cfg.dataset.ref_min_score
    ref_max = data.ref_max_score if data.ref_max_score is not None else cfg.dataset.ref_max_score
    if ref_min is None or ref_max is None:
        return None
    if ref_max == ref_min:
        raise ConfigError(f"dataset {data.dataset_id!r}: ref_min_score == ref_max_score ({ref_min}); a normalized "
                          "score needs two different references (set dataset.ref_min_score / ref_max_score)")
    return float(ref_min), float(ref_max)


# ---- everything ----------------------------------------------------------------------------------

def validate(cfg: DictConfig) -> None:
    """Checks that need no environment or dataset: fail before anything is built."""
    t = cfg.trainer
    if cfg.dataset is None:
        check_env_id(cfg.env.id)
        if cfg.algo.get("imitation"):
            raise ConfigError(f"algo={cfg.algo.name} imitates demonstrations: add a dataset of them, e.g. "
                              "dataset=minari dataset.id=<Minari id> (python -m rltrain.make_dataset quality=expert "
                              "makes one); the policy trains online in the dataset's env")
        if cfg.algo.get("offline_only"):
            raise ConfigError(f"algo={cfg.algo.name} learns from a dataset: add dataset=d4rl/hopper (or "
                              "dataset=minari dataset.id=<Minari id>)")
        counts = ("total_env_steps", "batch_size", "buffer_size", "eval_episodes")
    else:
        if OmegaConf.is_missing(cfg.dataset, "id"):
            raise ConfigError("dataset=minari needs the dataset's id: dataset.id=<Minari id>, "
                              "e.g. dataset.id=D4RL/door/human-v2")
        counts = ("total_updates" if counts_updates(cfg) else "total_env_steps", "batch_size", "eval_episodes")
    for key in counts:
        if t[key] < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {t[key]}")
    if t.updates_per_step <= 0:
        raise ConfigError(f"trainer.updates_per_step must be > 0, got {t.updates_per_step}")
    if t.train_every < 1:
        raise ConfigError(f"trainer.train_every must be >= 1, got {t.train_every}")


def term_windows(cfg: DictConfig) -> dict[str, tuple[int, int | None]]:
    windows = cfg.algo.get("term_windows")
    if windows is None:
        return {}
    windows = OmegaConf.to_container(windows, resolve=True)
    return {term: (int(first), None if end is None else int(end)) for term, (first, end) in windows.items()}


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    t = cfg.trainer
    return TrainerConfig(
        total_env_steps=int(t.total_env_steps), warmup_steps=int(t.warmup_steps),
        learning_starts=int(t.learning_starts), updates_per_step=float(t.updates_per_step),
        train_every=int(t.train_every),
        batch_size=int(t.batch_size), buffer_size=int(t.buffer_size), eval_every=int(t.eval_every),
        eval_episodes=int(t.eval_episodes), checkpoint_every=int(t.checkpoint_every),
        log_every=int(t.log_every), updater_every=int(cfg.algo.updater_every), seed=int(cfg.seed),
        total_updates=int(t.total_updates), policy_snapshots=bool(t.policy_snapshots), term_windows=term_windows(cfg))


@dataclass
class Source:
    """Where a run's data comes from: online envs (and a replay buffer) or an offline dataset."""

    buffer: ReplayBuffer | TransitionSampler
    eval_envs: object
    obs_spec: Bounded
    action_spec: Bounded | Categorical
    envs: object | None = None                      # online training envs
    normalizer: ObservationNormalizer | None = None
    score_refs: tuple[float, float] | None = None
    dt_targets: list[float] | None = None           # Decision Transformer target returns
    data_env: object | None = None                  # the dataset's env (Online DT fine-tunes in it)


def online_source(cfg: DictConfig, device: torch.device) -> Source:
    env_kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    envs = make_vector_env(cfg.env.id, cfg.env.num_envs, cfg.env.max_episode_steps, **env_kwargs)
    eval_envs = make_vector_env(cfg.env.id, min(cfg.env.eval_num_envs, cfg.trainer.eval_episodes),
                                cfg.env.max_episode_steps, **env_kwargs)
    buffer = ReplayBuffer(int(cfg.trainer.buffer_size), device, seed=cfg.seed)
    return Source(buffer, eval_envs, *env_specs(envs), envs=envs)


def dataset_sampler(cfg: DictConfig, data: OfflineData, device: torch.device):
    """What an offline objective trains on: transitions, action chunks (ACT) or episode windows (DT)."""
    kind = cfg.algo.get("sequence")
    if kind is None:
        return TransitionSampler(data, device, seed=cfg.seed)
    if kind == "chunk":
        return ChunkSampler(data, int(cfg.algo.chunk_size), device, seed=cfg.seed)
    if kind in ("trajectory", "online_trajectory"):
        capacity = int(cfg.algo.buffer_episodes) if kind == "online_trajectory" else None
        return TrajectoryBuffer.from_offline_data(
            data, context_len=int(cfg.algo.context_len), rtg_scale=float(cfg.algo.rtg_scale),
            max_ep_len=int(cfg.algo.max_ep_len), capacity=capacity, device=device, seed=cfg.seed)
    raise ConfigError(f"unknown algo.sequence {kind!r}; accepted: null, chunk, trajectory, online_trajectory")


# objective -> (the source it needs, the batch keys that source provides)
SEQUENCE_SOURCES = {
    "dt": ("trajectory", "observation, action, return_to_go, timestep, pad_mask [B, T]"),
    "online_dt": ("online_trajectory", "observation, action, return_to_go, timestep, pad_mask [B, T]"),
    "act": ("chunk", "observation [B], (vla_action, chunk) [B, H, A], action_is_pad [B, H]"),
}


def check_sequence_source(cfg: DictConfig) -> None:
    """A sequence objective on flat transitions would fail at its first batch: say so before loading."""
    name, kind = cfg.algo.objective, cfg.algo.get("sequence")
    if name in SEQUENCE_SOURCES and kind != SEQUENCE_SOURCES[name][0]:
        expected, keys = SEQUENCE_SOURCES[name]
        raise ConfigError(f"algo={cfg.algo.name} trains on batches with {keys}, which algo.sequence={expected} "
                          f"provides; algo.sequence={kind} does not. Remove the algo.sequence override.")


def offline_source(cfg: DictConfig, device: torch.device) -> Source:
    """A dataset, its eval envs and normalization. Imitation (GAIL) keeps the demonstrations raw: its
    discriminator compares them with the observations the policy collects."""
    check_sequence_source(cfg)
    data = load_offline_data(cfg.dataset)
    eval_envs, obs_spec, action_spec = make_offline_eval_envs(cfg, data)
    if cfg.algo.objective in AGENT_BUILDERS:  # before the samplers, which assume the objective's actions
        check_action_space(cfg, action_spec)
    refs = score_refs(cfg, data)
    if cfg.algo.get("imitation"):
        envs = make_vector_env(_data_env(cfg, data), cfg.env.num_envs, cfg.env.max_episode_steps)
        return Source(TransitionSampler(data, device, seed=cfg.seed), eval_envs, obs_spec, action_spec, envs=envs,
                      score_refs=refs)
    normalizer = prepare_offline_data(cfg, data).to(device)
    dt_targets = None
    if cfg.algo.get("sequence") in ("trajectory", "online_trajectory"):
        dt_targets = dt_target_returns(cfg, data, refs)
    return Source(dataset_sampler(cfg, data, device), eval_envs, obs_spec, action_spec, normalizer=normalizer,
                  score_refs=refs, dt_targets=dt_targets, data_env=_data_env(cfg, data))


def gail_reward_model(cfg: DictConfig, source: Source, device: torch.device) -> GAILRewardModel:
    """The GAIL discriminator over the demonstrations (``source.buffer``) as a reward model."""
    rm = cfg.algo.reward_model
    action_spec = source.action_spec
    discrete = isinstance(action_spec, Categorical)
    discriminator = Discriminator(source.obs_spec.dim, None if discrete else action_spec.dim, tuple(rm.num_cells),
                                  rm.activation, num_actions=action_spec.n if discrete else None)
    loss = get_objective("gail")(discriminator, **OmegaConf.to_container(rm.loss, resolve=True)).to(device)
    optimizer = make_adam(list(discriminator.parameters()), rm.lr)
    return GAILRewardModel(loss, optimizer, source.buffer, updates_per_rollout=int(rm.updates_per_round),
                           batch_size=int(rm.batch_size), seed=cfg.seed)


def rollout_source(cfg: DictConfig, objective: LossModule, source: Source, device: torch.device) -> RolloutSource:
    """On-policy rounds in the training envs; with ``algo.imitation``, GAIL's reward replaces the env's."""
    reward_model = gail_reward_model(cfg, source, device) if cfg.algo.get("imitation") else None
    try:
        return RolloutSource(source.envs, objective.actor_network, objective.critic_network, objective,
                             steps_per_env=int(cfg.algo.steps_per_env), epochs=int(cfg.algo.epochs),
                             minibatch_size=int(cfg.trainer.batch_size), device=device, seed=cfg.seed,
                             reward_model=reward_model)
    except ValueError as err:
        raise ConfigError(f"algo={cfg.algo.name}: {err}") from err


def finetune_source(cfg: DictConfig, objective: LossModule, source: Source) -> OnlineFinetuneSource:
    """Online DT: pre-training on the dataset, then episodes collected in the dataset's env with the
    stochastic policy conditioned on a return above the first evaluation target ``R``:
    ``R + (online_target_scale - 1) |R|`` (``2R`` for the paper's positive returns and scale 2; still
    higher, not lower, when returns are negative)."""
    a = cfg.algo
    envs = make_vector_env(source.data_env, 1, cfg.env.max_episode_steps)
    first = source.dt_targets[0]
    target = first + (float(a.online_target_scale) - 1.0) * abs(first)
    policy = dt_policy(cfg, objective, target, source.normalizer, deterministic=False)
    return OnlineFinetuneSource(source.buffer, envs, policy, pretrain_updates=int(a.pretrain_updates),
                                updates_per_episode=int(a.updates_per_episode),
                                episodes_per_collect=int(a.episodes_per_collect), seed=cfg.seed, module=objective)


def build_trainer(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None = None,
                  initial_step: int = 0) -> Trainer:
    validate(cfg)
    device = resolve_device(cfg.device)
    source = online_source(cfg, device) if cfg.dataset is None else offline_source(cfg, device)
    agent = build_agent(cfg, source.obs_spec, source.action_spec)
    objective = agent.objective.to(device)
    updater = build_updater(objective, cfg.algo.updater)
    groups = build_groups(objective, cfg)
    buffer, collector = source.buffer, None
    if cfg.algo.get("on_policy"):
        buffer = rollout_source(cfg, objective, source, device)
    elif cfg.algo.get("sequence") == "online_trajectory":
        buffer = finetune_source(cfg, objective, source)
    elif source.envs is not None:
        if cfg.algo.get("imitation"):  # GAIL with an off-policy learner: the discriminator's rewards
            buffer = RewardRelabelingReplay(ReplayBuffer(int(cfg.trainer.buffer_size), device, seed=cfg.seed),
                                            gail_reward_model(cfg, source, device),
                                            int(cfg.algo.reward_model.train_every))
        collector = Collector(source.envs, agent.behaviour, device, seed=cfg.seed, exploration=agent.exploration)
    if source.dt_targets is not None:
        eval_policy = dt_policies(cfg, objective, source.dt_targets, source.normalizer)
    elif source.normalizer is not None:
        eval_policy = NormalizedPolicy(agent.greedy, source.normalizer)
    else:
        eval_policy = agent.greedy
    return Trainer(
        objective=objective, updater=updater, groups=groups, buffer=buffer, collector=collector,
        eval_envs=source.eval_envs, eval_policy=eval_policy,
        loggers=build_loggers(cfg, run_dir, wandb_run_id, initial_step), run_dir=run_dir,
        config=trainer_config(cfg), device=device, score_refs=source.score_refs, normalizer=source.normalizer)


def load_policy(cfg: DictConfig, state: dict, obs_spec: Bounded, action_spec, mode: str = "greedy"):
    """The policy of a saved run: ``cfg`` is its config.yaml, ``state`` a checkpoint or policy snapshot.
    ``mode`` is ``greedy`` (evaluation) or ``behaviour`` (collection, without exploration noise)."""
    agent = build_agent(cfg, obs_spec, action_spec)
    agent.objective.load_state_dict(state["objective"])
    agent.objective.eval()
    policy = agent.greedy if mode == "greedy" else agent.behaviour
    if state.get("normalizer") is None:
        return policy
    normalizer = ObservationNormalizer.identity(obs_spec.dim)
    normalizer.load_state_dict(state["normalizer"])
    return NormalizedPolicy(policy, normalizer)
