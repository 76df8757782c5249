"""Agents from config: each objective with its networks and the policies the Trainer acts with.

One :class:`AlgorithmRecord` per objective says how to build it, which kind of actions it takes,
the source it trains on by default and whether it gets the generic TD(0) value estimator; nothing
else in the package tests objective names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rltrain.data.minari_data import OfflineData
from rltrain.data.normalize import normalizer_from_state
from rltrain.errors import ConfigError
from rltrain.exploration import EpsilonGreedy, GaussianNoise, OrnsteinUhlenbeckNoise
from rltrain.modules import (
    DDPM, ACTActor, ACTModel, Bounded, Categorical, CategoricalActor, DecisionTransformer, DiffusionActor,
    DistributionalQValueActor, DTActor, DTPolicy, OnlineDTActor, QValueActor, TemporalEnsemblePolicy, ValueOperator,
)
from rltrain.objectives import LossModule, get_objective
from rltrain.modules.cnn import EncodedHead, build_encoder
from rltrain.objectives.dqn import check_support_covers_returns
from rltrain.build.networks import (
    _mlp, build_categorical_actor, build_crossq_critic, build_deterministic_actor, build_qvalue,
    build_state_value, build_stochastic_actor,
)


@dataclass
class Agent:
    """An objective and the policies the Trainer acts with."""

    objective: LossModule
    behaviour: Callable[[torch.Tensor], torch.Tensor] | None  # collection (a sample, or the greedy action)
    greedy: Callable[[torch.Tensor], torch.Tensor] | None     # evaluation (deterministic)
    exploration: object | None = None


def _loss_kwargs(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.algo.loss, resolve=True)


def _sampling_agent(objective: LossModule, actor) -> Agent:
    """Collection samples the actor, evaluation takes its mode."""
    return Agent(objective, lambda obs: actor.act(obs, deterministic=False),
                 lambda obs: actor.act(obs, deterministic=True))


def sac_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """SAC (v2, or v1 with ``algo.value_network``): a TanhNormal actor and twin critics."""
    actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    args = [actor, build_qvalue(obs_dim, action_spec, cfg.network.critic)]
    if cfg.algo.get("value_network"):
        args.append(build_state_value(obs_dim, cfg.network.critic))
    objective = get_objective(cfg.algo.objective)(*args, action_spec=action_spec, **_loss_kwargs(cfg))
    return _sampling_agent(objective, actor)


def stochastic_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """REDQ (and RLPD), CQL, Cal-QL: a TanhNormal actor and a critic copied into the objective's ensemble."""
    actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    qvalue = build_qvalue(obs_dim, action_spec, cfg.network.critic)
    objective = get_objective(cfg.algo.objective)(actor, qvalue, action_spec=action_spec, **_loss_kwargs(cfg))
    return _sampling_agent(objective, actor)


def crossq_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """CrossQ: a TanhNormal actor and critics with Batch Renormalization, no targets."""
    actor = build_stochastic_actor(obs_dim, action_spec, cfg.network.actor)
    qvalue = build_crossq_critic(obs_dim, action_spec, cfg.network.critic)
    objective = get_objective("crossq")(actor, qvalue, action_spec=action_spec, **_loss_kwargs(cfg))
    return _sampling_agent(objective, actor)


def deterministic_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded, with_spec: bool = True) -> Agent:
    """TD3, TD3+BC (``with_spec``: the objective takes the action spec) and DDPG: a deterministic
    actor plus exploration noise during collection."""
    actor = build_deterministic_actor(obs_dim, action_spec, cfg.network.actor)
    critic = build_qvalue(obs_dim, action_spec, cfg.network.critic)
    extra = {"action_spec": action_spec} if with_spec else {}
    objective = get_objective(cfg.algo.objective)(actor, critic, **extra, **_loss_kwargs(cfg))
    greedy = lambda obs: actor.act(obs)  # noqa: E731
    return Agent(objective, greedy, greedy, build_exploration(cfg, action_spec))


def ddpg_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    return deterministic_agent(cfg, obs_dim, action_spec, with_spec=False)


def _encoded(encoder: nn.Module, head: nn.Module) -> nn.Module:
    """``head`` on ``encoder``; flat observations (no encoder) keep the bare MLP and its parameter names."""
    return head if isinstance(encoder, nn.Identity) else EncodedHead(encoder, head)


def _encoder(cfg: DictConfig, obs_spec: Bounded) -> tuple[nn.Module, int]:
    """``network.encoder`` for these observations (a CNN for images, none for vectors) and its output size."""
    return build_encoder(obs_spec, cfg.network.get("encoder", "auto"))


def qvalue_agent(cfg: DictConfig, obs_spec: Bounded, action_spec: Categorical) -> Agent:
    """DQN, discrete CQL: a Q-value actor (on the encoder, for images) acting greedily, epsilon-greedy
    during collection."""
    encoder, features = _encoder(cfg, obs_spec)
    net = _encoded(encoder, _mlp(features, action_spec.n, cfg.network.critic))
    actor = QValueActor(net, action_space="categorical")
    objective = get_objective(cfg.algo.objective)(actor, action_space="categorical", **_loss_kwargs(cfg))
    greedy = lambda obs: actor.act(obs)  # noqa: E731
    return Agent(objective, greedy, greedy, build_exploration(cfg, action_spec))


def c51_agent(cfg: DictConfig, obs_spec: Bounded, action_spec: Categorical) -> Agent:
    """C51: a distributional Q-value actor on ``algo.support`` (on the encoder, for images),
    epsilon-greedy during collection."""
    support = cfg.algo.support
    if support.vmin >= support.vmax:
        raise ConfigError(f"algo.support needs vmin < vmax, got vmin={support.vmin}, vmax={support.vmax}")
    check_support_covers_returns(support.vmin, support.vmax, cfg.env.get("reward_range"), cfg.algo.gamma,
                                 where=f"C51 on {cfg.env.id}")
    atoms = torch.linspace(support.vmin, support.vmax, support.n_atoms)
    encoder, features = _encoder(cfg, obs_spec)
    net = _encoded(encoder, _mlp(features, action_spec.n * support.n_atoms, cfg.network.critic))
    actor = DistributionalQValueActor(net, support=atoms, action_space="categorical")
    objective = get_objective("c51")(actor, gamma=cfg.algo.gamma, **_loss_kwargs(cfg))
    greedy = lambda obs: actor.act(obs)  # noqa: E731
    return Agent(objective, greedy, greedy, build_exploration(cfg, action_spec))


def iql_agent(cfg: DictConfig, obs_dim: int, action_spec: Bounded) -> Agent:
    """IQL: a TanhNormal actor (AWR on log pi) or, with ``algo.policy=deterministic``, a tanh actor
    (AWR on the squared error: CORL's iql_deterministic), twin Q and a state-value network."""
    policy = cfg.algo.get("policy", "stochastic")
    if policy not in ("stochastic", "deterministic"):
        raise ConfigError(f"algo.policy must be deterministic or stochastic, got {policy!r}")
    build_actor = build_deterministic_actor if policy == "deterministic" else build_stochastic_actor
    actor = build_actor(obs_dim, action_spec, cfg.network.actor)
    objective = get_objective("iql")(actor, build_qvalue(obs_dim, action_spec, cfg.network.critic),
                                     build_state_value(obs_dim, cfg.network.critic), **_loss_kwargs(cfg))
    return _sampling_agent(objective, actor)



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


def ppo_agent(cfg: DictConfig, obs_spec: Bounded, action_spec) -> Agent:
    """PPO: a TanhNormal (continuous) or categorical (discrete) actor and a state-value critic. On
    images both heads sit on one encoder (CleanRL's Atari PPO), trained by one optimizer group."""
    encoder, features = _encoder(cfg, obs_spec)
    shared = not isinstance(encoder, nn.Identity)
    if shared and not isinstance(action_spec, Categorical):
        raise ConfigError(f"algo={cfg.algo.name} on image observations {list(obs_spec.shape)} needs a discrete "
                          "action space (its categorical actor shares the encoder with the critic)")
    if shared:
        actor = CategoricalActor(EncodedHead(encoder, _mlp(features, action_spec.n, cfg.network.actor)),
                                 in_keys=["observation"], spec=action_spec)
        critic = ValueOperator(EncodedHead(encoder, _mlp(features, 1, cfg.network.critic)), in_keys=["observation"])
    elif isinstance(action_spec, Categorical):
        actor = build_categorical_actor(features, action_spec, cfg.network.actor)
        critic = build_state_value(features, cfg.network.critic)
    else:
        actor = build_stochastic_actor(features, action_spec, cfg.network.actor)
        critic = build_state_value(features, cfg.network.critic)
    objective = get_objective("ppo")(actor, critic, shared_encoder=shared, **_loss_kwargs(cfg))
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




@dataclass(frozen=True)
class AlgorithmRecord:
    """How to build one objective's agent and what it needs.

    ``actions``: ``continuous``, ``discrete`` or ``either``. ``source``: the source it always trains
    on (``rollout``, ``finetune``), or ``None`` to follow the run (``dataset`` with a dataset, else
    ``replay``). ``td0``: give it the generic TD(0) estimator with ``algo.gamma`` (C51 and PPO bring
    their own). ``mc_return``: its batches carry each transition's Monte-Carlo return (Cal-QL).
    ``images``: its builder takes the observation spec and puts a convolutional encoder under its
    networks for image observations ``[C, H, W]``; the others take the flat observation size."""

    builder: Callable[..., Agent]
    actions: str
    source: str | None = None
    td0: bool = True
    mc_return: bool = False
    images: bool = False

    def acts_on(self, action_spec) -> bool:
        if self.actions == "continuous":
            return isinstance(action_spec, Bounded)
        if self.actions == "discrete":
            return isinstance(action_spec, Categorical)
        return True


ALGORITHMS: dict[str, AlgorithmRecord] = {
    "sac": AlgorithmRecord(sac_agent, "continuous"),
    "redq": AlgorithmRecord(stochastic_agent, "continuous"),
    "crossq": AlgorithmRecord(crossq_agent, "continuous"),
    "td3": AlgorithmRecord(deterministic_agent, "continuous"),
    "ddpg": AlgorithmRecord(ddpg_agent, "continuous"),
    "dqn": AlgorithmRecord(qvalue_agent, "discrete", images=True),
    "c51": AlgorithmRecord(c51_agent, "discrete", td0=False, images=True),
    "iql": AlgorithmRecord(iql_agent, "continuous"),
    "cql": AlgorithmRecord(stochastic_agent, "continuous"),
    "cal_ql": AlgorithmRecord(stochastic_agent, "continuous", mc_return=True),
    "td3bc": AlgorithmRecord(deterministic_agent, "continuous"),
    "bc": AlgorithmRecord(bc_agent, "either"),
    "discrete_iql": AlgorithmRecord(discrete_iql_agent, "discrete"),
    "discrete_cql": AlgorithmRecord(qvalue_agent, "discrete", images=True),
    "diffusion_bc": AlgorithmRecord(diffusion_bc_agent, "continuous"),
    "act": AlgorithmRecord(act_agent, "continuous"),
    "ppo": AlgorithmRecord(ppo_agent, "either", source="rollout", td0=False, images=True),
    "dt": AlgorithmRecord(dt_agent, "continuous"),
    "online_dt": AlgorithmRecord(dt_agent, "continuous", source="finetune"),
}
CONTINUOUS_CHOICES = ", ".join(f"algo={n}" for n, r in ALGORITHMS.items() if r.actions != "discrete")
DISCRETE_CHOICES = ", ".join(f"algo={n}" for n, r in ALGORITHMS.items() if r.actions != "continuous")
IMAGE_CHOICES = ", ".join(f"algo={n}" for n, r in ALGORITHMS.items() if r.images)


def algorithm_record(cfg: DictConfig) -> AlgorithmRecord:
    name = cfg.algo.objective
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown objective {name!r} in algo.objective; accepted: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


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
    record = algorithm_record(cfg)
    _check_loss_kwargs(cfg.algo.objective, cfg.algo.loss)
    check_observation_space(cfg, obs_spec)
    check_action_space(cfg, action_spec)
    try:
        agent = record.builder(cfg, obs_spec if record.images else obs_spec.dim, action_spec)
    except (ValueError, TypeError) as err:  # the objective's own argument checks
        raise ConfigError(f"algo={cfg.algo.name}: {err}") from err
    if record.td0:
        agent.objective.make_value_estimator(gamma=cfg.algo.gamma)
    return agent


def check_action_space(cfg: DictConfig, action_spec) -> None:
    """The objective's kind of actions (continuous, discrete or either) against the env's or data's."""
    record = algorithm_record(cfg)
    if record.acts_on(action_spec):
        return
    where = f"dataset {cfg.dataset.id}" if cfg.dataset is not None else cfg.env.id
    if record.actions == "continuous":
        raise ConfigError(f"algo={cfg.algo.name} needs a continuous (Box) action space, but {where} has a "
                          f"discrete one ({action_spec}). Pick continuous-action data or env (env=pendulum, "
                          f"dataset=d4rl/hopper, ...) or a discrete algorithm ({DISCRETE_CHOICES}).")
    raise ConfigError(f"algo={cfg.algo.name} needs a discrete action space, but {where} has a continuous "
                      f"one. Pick discrete-action data or env (env=cartpole, env=acrobot, ...) or a continuous "
                      f"algorithm ({CONTINUOUS_CHOICES}).")


def check_observation_space(cfg: DictConfig, obs_spec: Bounded) -> None:
    """Image observations ``[C, H, W]`` only for the objectives whose builder puts an encoder under them."""
    if len(obs_spec.shape) == 1 or algorithm_record(cfg).images:
        return
    where = f"dataset {cfg.dataset.id}" if cfg.dataset is not None else cfg.env.id
    raise ConfigError(f"algo={cfg.algo.name} takes flat observation vectors, but {where} observes images of shape "
                      f"{list(obs_spec.shape)}; the algorithms that take images are {IMAGE_CHOICES}")


def _check_loss_kwargs(name: str, loss_cfg: DictConfig) -> None:
    accepted = set(inspect.signature(get_objective(name).__init__).parameters) - {"self", "gamma", "priority_key"}
    unknown = set(loss_cfg) - accepted
    if unknown:
        raise ConfigError(f"algo.loss has unknown key(s) {sorted(unknown)} for objective {name!r}; "
                          f"accepted: {sorted(accepted)}")


def load_policy(cfg: DictConfig, state: dict, obs_spec: Bounded, action_spec, mode: str = "greedy"):
    """The policy of a saved run: ``cfg`` is its config.yaml, ``state`` a checkpoint or policy snapshot.
    ``mode`` is ``greedy`` (evaluation) or ``behaviour`` (collection, without exploration noise)."""
    agent = build_agent(cfg, obs_spec, action_spec)
    agent.objective.load_state_dict(state["objective"])
    agent.objective.eval()
    policy = agent.greedy if mode == "greedy" else agent.behaviour
    if state.get("normalizer") is None:
        return policy
    return NormalizedPolicy(policy, normalizer_from_state(state["normalizer"]))
