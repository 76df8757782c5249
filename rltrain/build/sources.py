"""Sources from config: which mode a run trains in, what it learns from (envs, a dataset) and the
:class:`~rltrain.sources.Source` that serves its batches.

``source.kind`` picks the mode; ``auto`` follows the algorithm (PPO and GAIL: ``rollout``, Online DT:
``finetune``) and the data (a dataset: ``dataset``; none, or demonstrations for GAIL with SAC:
``replay``). Nothing else re-derives the mode: the Trainer, the loggers, resume and the results
tables read the clock from the source (or from the kind recorded in ``config.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from rltrain.build.agents import Agent, algorithm_record, check_action_space, dt_policy, dt_target_returns
from rltrain.build.data import (
    RewardAffine, check_sequence_source, data_env, dataset_sampler, load_offline_data, make_offline_eval_envs,
    mc_return_gamma, prepare_offline_data, score_refs, transition_sampler,
)
from rltrain.build.optim import make_adam
from rltrain.collect import Collector
from rltrain.data.minari_data import OfflineData, TransitionSampler
from rltrain.data.normalize import ObservationNormalizer, RunningObservationNormalizer
from rltrain.data.replay import ReplayBuffer
from rltrain.envs import env_specs, make_vector_env, vector_env_from_config
from rltrain.errors import ConfigError
from rltrain.modules import Bounded, Categorical, Discriminator
from rltrain.objectives import LossModule, get_objective
from rltrain.onpolicy import GAILRewardModel, RewardLabeler
from rltrain.sources import (
    DatasetSource, FinetuneSource, OfflineToOnlineSource, ReplaySchedule, ReplaySource, RolloutSource, Source,
)
from rltrain.sources.offline_to_online import OnlineTransform, online_rows

SOURCE_KINDS = ("replay", "dataset", "rollout", "finetune", "offline_to_online")
NEEDS_DATASET = ("dataset", "finetune", "offline_to_online")


def source_kind(cfg: DictConfig) -> str:
    """``source.kind``, with ``auto`` resolved, checked against the algorithm and the data."""
    kind = cfg.source.kind
    record = algorithm_record(cfg)
    if kind == "auto":
        if record.source is not None:
            kind = record.source
        else:
            kind = "dataset" if cfg.dataset is not None and not cfg.algo.get("imitation") else "replay"
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"unknown source {kind!r} (source=...); accepted: auto, {', '.join(SOURCE_KINDS)}")
    if record.source is not None and kind != record.source:
        raise ConfigError(f"algo={cfg.algo.name} trains on source={record.source}, not source={kind}; remove the "
                          "source override")
    if kind in ("rollout", "finetune") and record.source != kind:
        serves = "on-policy rollouts (algo=ppo, algo=gail)" if kind == "rollout" else "Online DT (algo=online_dt)"
        raise ConfigError(f"source={kind} serves {serves}; algo={cfg.algo.name} cannot train on it")
    if kind in NEEDS_DATASET and cfg.dataset is None:
        raise ConfigError(f"source={kind} needs a dataset: add dataset=d4rl/hopper (or dataset=minari "
                          "dataset.id=<Minari id>)")
    if kind in ("replay", "offline_to_online") and cfg.algo.get("sequence") is not None:
        raise ConfigError(f"algo={cfg.algo.name} trains on {cfg.algo.sequence} windows of a dataset, which "
                          f"source={kind} does not collect; use source=dataset")
    if kind == "replay" and record.mc_return:
        raise ConfigError(f"algo={cfg.algo.name} bounds its values by the Monte-Carlo returns of a dataset: train it "
                          "with dataset=... (offline) or source=offline_to_online")
    if kind == "replay" and cfg.dataset is not None and not cfg.algo.get("imitation"):
        raise ConfigError(f"source=replay trains online in env.id, but dataset={cfg.dataset.id} is given: use "
                          "source=offline_to_online to pre-train on it and fine-tune online, or drop the dataset")
    if kind == "offline_to_online":
        mix = cfg.source.mix
        if mix is not None and not (isinstance(mix, int | float) and 0.0 <= mix <= 1.0):
            raise ConfigError(f"source.mix={mix!r}: give the fraction of each online batch drawn from the dataset, "
                              "a number in [0, 1], or null to copy the dataset into the replay buffer")
    return kind


@dataclass
class Task:
    """What a run learns from: the spaces, the eval envs and, as the source needs, training envs and a
    dataset (normalized and reward-transformed unless it holds demonstrations to imitate)."""

    eval_envs: object
    obs_spec: Bounded
    action_spec: Bounded | Categorical
    envs: object | None = None
    data: OfflineData | None = None
    normalizer: ObservationNormalizer | None = None               # a dataset's fixed statistics
    running_normalizer: RunningObservationNormalizer | None = None  # env.normalize_observations
    reward: RewardAffine | None = None
    score_refs: tuple[float, float] | None = None
    dt_targets: list[float] | None = None
    data_env: object | None = None


def frame_stack(cfg: DictConfig) -> int:
    """Frames per observation: ``env.atari.frame_stack`` for Atari, else 1."""
    atari = cfg.env.get("atari")
    return int(atari.frame_stack) if atari is not None else 1


def check_frame_stack(cfg: DictConfig) -> None:
    """The replay rebuilds a transition's two stacks from single frames: it must hold at least two."""
    stack, size = frame_stack(cfg), int(cfg.trainer.buffer_size)
    if stack < 1:
        raise ConfigError(f"env.atari.frame_stack must be >= 1, got {stack}")
    if size < 2 * stack + 1:
        raise ConfigError(f"trainer.buffer_size={size} cannot serve env.atari.frame_stack={stack}: a transition's "
                          f"observation and next observation are rebuilt from stored frames, which needs "
                          f"trainer.buffer_size >= {2 * stack + 1}; raise it or lower env.atari.frame_stack")


def env_score_refs(cfg: DictConfig) -> tuple[float, float] | None:
    """(random, human) scores of ``env.id`` from ``env.reference_scores`` (Atari's human-normalized score)."""
    refs = (cfg.env.get("reference_scores") or {}).get(cfg.env.id)
    if refs is None:
        return None
    if len(refs) != 2 or float(refs[0]) == float(refs[1]):
        raise ConfigError(f"env.reference_scores[{cfg.env.id}] must be two different scores [random, human], "
                          f"got {list(refs)}")
    return float(refs[0]), float(refs[1])


def online_task(cfg: DictConfig, device: torch.device) -> Task:
    """Training envs and evaluation envs (Atari: full games on the unclipped score) from ``env``, and
    with ``env.normalize_observations`` the running statistics the collector keeps."""
    envs = vector_env_from_config(cfg.env, cfg.env.num_envs, training=True)
    eval_envs = vector_env_from_config(cfg.env, min(cfg.env.eval_num_envs, cfg.trainer.eval_episodes),
                                       training=False)
    obs_spec, action_spec = env_specs(envs)
    running = None
    if cfg.env.get("normalize_observations"):
        if len(obs_spec.shape) == 3:
            raise ConfigError(f"env.normalize_observations=true: {cfg.env.id} has image observations (scaled by "
                              "the CNN encoder); running normalization is for state vectors")
        running = RunningObservationNormalizer(obs_spec.dim).to(device)
    return Task(eval_envs, obs_spec, action_spec, envs=envs, score_refs=env_score_refs(cfg), running_normalizer=running)


def dataset_task(cfg: DictConfig, kind: str, device: torch.device) -> Task:
    """A dataset, its eval envs, normalization and reward transform; training envs in the data's env
    when the source collects. Imitation (GAIL) keeps the demonstrations raw: its discriminator
    compares them with the observations the policy collects."""
    check_sequence_source(cfg)
    data = load_offline_data(cfg.dataset)
    eval_envs, obs_spec, action_spec = make_offline_eval_envs(cfg, data)
    check_action_space(cfg, action_spec)  # before the samplers, which assume the objective's actions
    refs = score_refs(cfg, data)
    env = data_env(cfg, data)
    envs = None
    if kind in ("replay", "rollout", "offline_to_online"):
        envs = make_vector_env(env, cfg.env.num_envs, cfg.env.max_episode_steps)
    if cfg.algo.get("imitation"):
        return Task(eval_envs, obs_spec, action_spec, envs=envs, data=data, score_refs=refs, data_env=env)
    normalizer, reward = prepare_offline_data(cfg, data)
    dt_targets = None
    if cfg.algo.get("sequence") in ("trajectory", "online_trajectory"):
        dt_targets = dt_target_returns(cfg, data, refs)
    return Task(eval_envs, obs_spec, action_spec, envs=envs, data=data, normalizer=normalizer.to(device),
                reward=reward, score_refs=refs, dt_targets=dt_targets, data_env=env)


def load_task(cfg: DictConfig, kind: str, device: torch.device) -> Task:
    return online_task(cfg, device) if cfg.dataset is None else dataset_task(cfg, kind, device)


# ---- the sources ----------------------------------------------------------------------------------

def replay_schedule(cfg: DictConfig, min_rows: int) -> ReplaySchedule:
    t = cfg.trainer
    return ReplaySchedule(float(t.updates_per_step), int(t.train_every), int(t.learning_starts), min_rows)


def replay_source(cfg: DictConfig, task: Task, agent: Agent, device: torch.device, *, total_env_steps: int,
                  preprocess=None, min_rows: int | None = None) -> ReplaySource:
    """Collection with the agent's behaviour policy into a replay buffer."""
    t = cfg.trainer
    collector = Collector(task.envs, agent.behaviour, device, seed=cfg.seed, exploration=agent.exploration,
                          normalizer=task.running_normalizer)
    buffer = ReplayBuffer(int(t.buffer_size), device, seed=cfg.seed, frame_stack=frame_stack(cfg),
                          n_step=int(cfg.algo.get("n_step", 1)), gamma=float(cfg.algo.gamma))
    schedule = replay_schedule(cfg, int(t.batch_size) if min_rows is None else min_rows)
    return ReplaySource(collector, buffer, schedule, batch_size=int(t.batch_size), total_env_steps=total_env_steps,
                        warmup_steps=int(t.warmup_steps), seed=cfg.seed, preprocess=preprocess)


def gail_reward_model(cfg: DictConfig, task: Task, device: torch.device) -> GAILRewardModel:
    """The GAIL discriminator over the demonstrations as a reward model."""
    rm = cfg.algo.reward_model
    action_spec = task.action_spec
    discrete = isinstance(action_spec, Categorical)
    discriminator = Discriminator(task.obs_spec.dim, None if discrete else action_spec.dim, tuple(rm.num_cells),
                                  rm.activation, num_actions=action_spec.n if discrete else None)
    loss = get_objective("gail")(discriminator, **OmegaConf.to_container(rm.loss, resolve=True)).to(device)
    optimizer = make_adam(list(discriminator.parameters()), rm.lr)
    demonstrations = TransitionSampler(task.data, device, seed=cfg.seed)
    return GAILRewardModel(loss, optimizer, demonstrations, updates_per_rollout=int(rm.updates_per_round),
                           batch_size=int(rm.batch_size), seed=cfg.seed)


def reward_labeler(cfg: DictConfig, kind: str, task: Task, device: torch.device) -> RewardLabeler | None:
    """GAIL with an off-policy learner: the reward model's step of the update path."""
    if kind != "replay" or not cfg.algo.get("imitation"):
        return None
    return RewardLabeler(gail_reward_model(cfg, task, device), int(cfg.algo.reward_model.train_every))


def rollout_source(cfg: DictConfig, task: Task, objective: LossModule, device: torch.device) -> RolloutSource:
    """On-policy rounds in the training envs; with ``algo.imitation``, GAIL's reward replaces the env's."""
    reward_model = gail_reward_model(cfg, task, device) if cfg.algo.get("imitation") else None
    try:
        return RolloutSource(task.envs, objective.actor_network, objective.critic_network, objective,
                             steps_per_env=int(cfg.algo.steps_per_env), epochs=int(cfg.algo.epochs),
                             minibatch_size=int(cfg.trainer.batch_size), device=device, seed=cfg.seed,
                             reward_model=reward_model, total_env_steps=int(cfg.trainer.total_env_steps),
                             normalizer=task.running_normalizer)
    except ValueError as err:
        raise ConfigError(f"algo={cfg.algo.name}: {err}") from err


def finetune_source(cfg: DictConfig, task: Task, objective: LossModule, device: torch.device) -> FinetuneSource:
    """Online DT: pre-training on the dataset, then episodes collected in the dataset's env with the
    stochastic policy conditioned on a return above the first evaluation target ``R``:
    ``R + (online_target_scale - 1) |R|`` (``2R`` for the paper's positive returns and scale 2; still
    higher, not lower, when returns are negative)."""
    a = cfg.algo
    envs = make_vector_env(task.data_env, 1, cfg.env.max_episode_steps)
    first = task.dt_targets[0]
    target = first + (float(a.online_target_scale) - 1.0) * abs(first)
    policy = dt_policy(cfg, objective, target, task.normalizer, deterministic=False)
    return FinetuneSource(dataset_sampler(cfg, task.data, device), envs, policy,
                          batch_size=int(cfg.trainer.batch_size), total_updates=int(cfg.trainer.total_updates),
                          pretrain_updates=int(a.pretrain_updates), updates_per_episode=int(a.updates_per_episode),
                          episodes_per_collect=int(a.episodes_per_collect), seed=cfg.seed, module=objective)


def offline_to_online_source(cfg: DictConfig, task: Task, agent: Agent, device: torch.device) -> OfflineToOnlineSource:
    """``source.offline_updates`` on the dataset, then ``source.online_env_steps`` in its env, with the
    offline phase's observation normalization and reward transform applied to what is collected."""
    s, t = cfg.source, cfg.trainer
    batch_size = int(t.batch_size)
    mix = None if s.mix is None else float(s.mix)
    dataset = transition_sampler(cfg, task.data, device)
    online = replay_source(cfg, task, agent, device, total_env_steps=int(s.online_env_steps),
                           min_rows=max(1, online_rows(batch_size, mix)),
                           preprocess=OnlineTransform(task.normalizer, task.reward, mc_return_gamma(cfg),
                                                      task.envs.num_envs))
    return OfflineToOnlineSource(dataset, online, offline_updates=int(s.offline_updates), mix=mix,
                                 batch_size=batch_size)


def build_source(cfg: DictConfig, kind: str, task: Task, agent: Agent, device: torch.device) -> Source:
    t = cfg.trainer
    if kind == "replay":
        return replay_source(cfg, task, agent, device, total_env_steps=int(t.total_env_steps))
    if kind == "dataset":
        return DatasetSource(dataset_sampler(cfg, task.data, device), batch_size=int(t.batch_size),
                             total_updates=int(t.total_updates))
    if kind == "rollout":
        return rollout_source(cfg, task, agent.objective, device)
    if kind == "finetune":
        return finetune_source(cfg, task, agent.objective, device)
    return offline_to_online_source(cfg, task, agent, device)
