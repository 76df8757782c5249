"""Offline data from config: loading Minari datasets, reward transforms and observation normalization,
the dataset's eval env and reference scores, and the sampler an objective trains on."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from rltrain.build.agents import algorithm_record
from rltrain.data.chunks import ChunkSampler
from rltrain.data.minari_data import (
    DatasetError, OfflineData, TransitionSampler, load_minari, minari_root, to_offline_data,
)
from rltrain.data.normalize import ObservationNormalizer, apply_reward_transform, normalize_in_place
from rltrain.data.trajectory import TrajectoryBuffer
from rltrain.envs import env_specs, make_vector_env
from rltrain.errors import ConfigError
from rltrain.modules import Categorical

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


@dataclass(frozen=True)
class RewardAffine:
    """The reward transform applied to a dataset, ``r' = multiplier * r + offset``; an online phase
    applies the same to the rewards it collects."""

    multiplier: float = 1.0
    offset: float = 0.0

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        return reward * self.multiplier + self.offset


def prepare_offline_data(cfg: DictConfig, data: OfflineData) -> tuple[ObservationNormalizer, RewardAffine]:
    """Reward transform and observation normalization, in place; returns the normalizer and the
    reward transform."""
    ds = cfg.dataset
    kind = ds.reward_transform or cfg.algo.get("reward_transform") or "none"
    try:
        applied = apply_reward_transform(data, kind, ds.reward_scale, ds.reward_shift)
    except ValueError as err:
        raise ConfigError(f"dataset.reward_transform: {err}") from err
    reward = RewardAffine(applied["multiplier"], applied["offset"])
    if not ds.normalize_observations:
        return ObservationNormalizer.identity(data.observations.shape[-1]), reward
    normalizer = ObservationNormalizer.from_data(data)
    normalize_in_place(data, normalizer)
    return normalizer, reward


def data_env(cfg: DictConfig, data: OfflineData):
    """The env a dataset is evaluated (and imitated) in: ``dataset.eval_env``, else the one it records."""
    return cfg.dataset.eval_env or data.eval_env_spec or data.env_spec


def make_offline_eval_envs(cfg: DictConfig, data: OfflineData):
    """The dataset's evaluation env (``dataset.eval_env`` overrides the one it records), checked
    against the data's spaces."""
    target = data_env(cfg, data)
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


def transition_sampler(cfg: DictConfig, data: OfflineData, device: torch.device) -> TransitionSampler:
    """Flat transitions, with each one's Monte-Carlo return for the objectives that read it (Cal-QL)."""
    return TransitionSampler(data, device, seed=cfg.seed, mc_return_gamma=mc_return_gamma(cfg))


def mc_return_gamma(cfg: DictConfig) -> float | None:
    """The discount of the Monte-Carlo returns the objective reads (Cal-QL), or None if it reads none."""
    return float(cfg.algo.gamma) if algorithm_record(cfg).mc_return else None


def dataset_sampler(cfg: DictConfig, data: OfflineData, device: torch.device):
    """What an offline objective trains on: transitions, action chunks (ACT) or episode windows (DT)."""
    kind = cfg.algo.get("sequence")
    if kind is None:
        return transition_sampler(cfg, data, device)
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
