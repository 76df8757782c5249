"""``python -m rltrain.make_dataset env=<env> quality=<quality> [source_run=<run dir>] ...``

The dataset factory: rolls out policies in a gymnasium env and writes a real Minari dataset, with
D4RL's quality levels (configs/make_dataset.yaml lists every option):

* ``random``: uniform random actions;
* ``expert``: the final policy of ``source_run`` (an rltrain run);
* ``medium``: the run's policy snapshot (``trainer.policy_snapshots=true``) whose evaluation return
  is closest to ``random + medium_fraction * (expert - random)``;
* ``medium-replay``: the run's replay buffer up to that snapshot (what the agent saw on its way to
  medium performance);
* ``medium-expert``: medium episodes followed by expert episodes.

The dataset records ``ref_min_score`` (mean return of the random policy) and ``ref_max_score`` (mean
return of the expert policy) over ``ref_episodes`` episodes, so offline runs report normalized
scores. Every episode starts from a seed derived from ``seed``: the same command makes the same
dataset.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rltrain import checkpoint
from rltrain.data.replay import ReplayBuffer
from rltrain.envs import derive_seed, env_specs, make_env, seed_everything
from rltrain.errors import ConfigError

QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")
Policy = Callable[[np.ndarray], np.ndarray]

# derive_seed purposes: the episodes of each policy, and the reference-score episodes
_DATA, _REFERENCE = 11, 12


def default_dataset_id(env_id: str, quality: str) -> str:
    """``rltrain/<env name>/<quality>-v0``, e.g. ``rltrain/pendulum/medium-v0`` for Pendulum-v1."""
    name = re.sub(r"-v\d+$", "", env_id).split("/")[-1].lower()
    return f"rltrain/{name}/{quality}-v0"


# ---- policies ----------------------------------------------------------------------------------

def random_policy(env: gym.Env, seed: int) -> Policy:
    space = env.action_space
    space.seed(seed)
    return lambda obs: space.sample()


class SourceRun:
    """An rltrain run used as a source of policies: its config, final checkpoint and snapshots."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).expanduser()
        self.last = self.run_dir / "checkpoints" / "last.pt"
        if not (self.run_dir / "config.yaml").exists() or not self.last.exists():
            raise ConfigError(f"source_run={self.run_dir} is not a finished rltrain run: it needs config.yaml and "
                              "checkpoints/last.pt. Train one first, e.g. `python -m rltrain env=<env> "
                              "trainer.policy_snapshots=true`, and pass its run directory.")
        self.config = OmegaConf.load(self.run_dir / "config.yaml")

    def snapshots(self) -> list[Path]:
        found = sorted((self.run_dir / "checkpoints").glob("policy_*.pt"))
        if not found:
            raise ConfigError(f"source_run={self.run_dir} has no policy snapshots (checkpoints/policy_*.pt). "
                              "medium qualities pick one of them: re-run the source with "
                              "trainer.policy_snapshots=true.")
        return found

    def policy(self, path: Path, env: gym.Env, mode: str) -> Policy:
        from rltrain.build import load_policy

        act = load_policy(self.config, checkpoint.load(path), *env_specs(env), mode=mode)
        return lambda obs: act(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()

    def snapshot_near(self, target_return: float) -> tuple[Path, dict]:
        """The snapshot whose recorded evaluation return is closest to ``target_return``."""
        candidates = [(path, checkpoint.load(path)) for path in self.snapshots()]
        return min(candidates, key=lambda c: abs(c[1]["eval"]["return_mean"] - target_return))

    def replay_episodes(self, rows: int) -> list[dict]:
        """The first ``rows`` transitions of the run's replay buffer, split into episodes."""
        if int(self.config.env.num_envs) != 1:
            raise ConfigError("medium-replay needs a source run with env.num_envs=1 (its replay buffer then holds "
                              "one episode after the other).")
        buffer = ReplayBuffer.from_state_dict(checkpoint.load(self.last)["source"]["buffer"])  # a ReplaySource's
        if buffer.wrapped:
            raise ConfigError("medium-replay: the source run's replay buffer wrapped around, so its early "
                              "transitions are gone; re-run the source with a trainer.buffer_size larger than "
                              "its trainer.total_env_steps.")
        ordered = buffer.transitions_in_order()[:rows]
        data = {key if isinstance(key, tuple) else (key,): value.numpy()
                for key, value in ordered.items(include_nested=True, leaves_only=True)}
        return split_into_episodes(data)


def split_into_episodes(data: dict) -> list[dict]:
    """Episodes from consecutive transitions (replay-buffer storage keyed by tuples); a trailing
    unfinished episode is kept, marked truncated where the data stops."""
    done = data[("next", "done")].reshape(-1).copy()
    done[-1] = True
    truncated = data[("next", "truncated")].reshape(-1) | (done & ~data[("next", "terminated")].reshape(-1))
    ends = np.flatnonzero(done) + 1
    episodes, start = [], 0
    for end in ends:
        window = slice(start, end)
        episodes.append({
            "observations": np.concatenate([data[("observation",)][window], data[("next", "observation")][end - 1:end]]),
            "actions": data[("action",)][window],
            "rewards": data[("next", "reward")][window].reshape(-1),
            "terminations": data[("next", "terminated")][window].reshape(-1),
            "truncations": truncated[window],
            "seed": None,
        })
        start = end
    return episodes


# ---- rollouts ----------------------------------------------------------------------------------

def rollout(env: gym.Env, policy: Policy, min_steps: int, seed: int) -> list[dict]:
    """Whole episodes of ``policy`` until at least ``min_steps`` transitions (the last one finishes)."""
    episodes, steps = [], 0
    while steps < min_steps:
        episode = run_episode(env, policy, derive_seed(seed, len(episodes)))
        episodes.append(episode)
        steps += len(episode["actions"])
    return episodes


@torch.no_grad()
def run_episode(env: gym.Env, policy: Policy, seed: int) -> dict:
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        action = policy(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        if terminated or truncated:
            break
    return {"observations": stack_observations(observations), "actions": np.asarray(actions),
            "rewards": np.asarray(rewards, dtype=np.float64), "terminations": np.asarray(terminations),
            "truncations": np.asarray(truncations), "seed": seed}


def stack_observations(observations: list) -> np.ndarray | dict[str, np.ndarray]:
    """``[T+1, ...]`` arrays; Dict observations stay a dict of stacked arrays (as Minari stores them)."""
    if isinstance(observations[0], dict):
        return {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return np.asarray(observations)


def mean_return(env: gym.Env, policy: Policy, episodes: int, seed: int) -> float:
    return float(np.mean([run_episode(env, policy, derive_seed(seed, i))["rewards"].sum() for i in range(episodes)]))


# ---- the factory ---------------------------------------------------------------------------------

def check_request(cfg: DictConfig) -> str:
    """Everything checkable before any rollout; returns the dataset id."""
    from rltrain.data.minari_data import check_dataset_id, minari_root

    if cfg.quality not in QUALITIES:
        raise ConfigError(f"unknown quality {cfg.quality!r}; accepted: {', '.join(QUALITIES)}")
    if cfg.quality != "random" and not cfg.source_run:
        raise ConfigError(f"quality={cfg.quality} collects with an rltrain run's policies: pass source_run=<run dir> "
                          "(train one with `python -m rltrain env=<env> trainer.policy_snapshots=true`)")
    if cfg.policy_mode not in ("behaviour", "greedy"):
        raise ConfigError(f"policy_mode must be behaviour or greedy, got {cfg.policy_mode!r}")
    if cfg.steps < 1 or cfg.ref_episodes < 1:
        raise ConfigError("steps and ref_episodes must be >= 1")
    if not 0.0 < cfg.medium_fraction < 1.0:
        raise ConfigError(f"medium_fraction must lie in (0, 1), got {cfg.medium_fraction}")
    dataset_id = cfg.dataset_id or default_dataset_id(cfg.env.id, cfg.quality)
    check_dataset_id(dataset_id)
    if (minari_root() / dataset_id).exists():
        raise ConfigError(f"dataset {dataset_id!r} already exists in {minari_root()}; pick another dataset_id or "
                          f"delete it first (`minari delete {dataset_id}`)")
    return dataset_id


def random_data(cfg: DictConfig, env: gym.Env) -> list[dict]:
    seed = derive_seed(cfg.seed, _DATA)
    return rollout(env, random_policy(env, seed), cfg.steps, seed)


def collect(cfg: DictConfig, env: gym.Env) -> tuple[list[dict], float, float | None, str]:
    """The episodes of the requested quality, the reference scores and a description."""
    random_ref = mean_return(env, random_policy(env, cfg.seed), cfg.ref_episodes, derive_seed(cfg.seed, _REFERENCE))
    if cfg.quality == "random" and not cfg.source_run:
        return random_data(cfg, env), random_ref, cfg.ref_max_score, "uniform random actions"
    source = SourceRun(cfg.source_run)
    expert = source.policy(source.last, env, cfg.policy_mode)
    expert_ref = mean_return(env, expert, cfg.ref_episodes, derive_seed(cfg.seed, _REFERENCE))
    if cfg.quality == "random":
        return random_data(cfg, env), random_ref, expert_ref, "uniform random actions"
    if cfg.quality == "expert":
        episodes = rollout(env, expert, cfg.steps, derive_seed(cfg.seed, _DATA))
        return episodes, random_ref, expert_ref, f"final policy of {source.run_dir}"
    target = random_ref + cfg.medium_fraction * (expert_ref - random_ref)
    path, snapshot = source.snapshot_near(target)
    about = (f"{path.name} of {source.run_dir} (eval return {snapshot['eval']['return_mean']:.1f}; "
             f"target {target:.1f} = random {random_ref:.1f} + {cfg.medium_fraction} x (expert {expert_ref:.1f} - random))")
    if cfg.quality == "medium-replay":
        return source.replay_episodes(snapshot["buffer_size"]), random_ref, expert_ref, f"replay buffer up to {about}"
    episodes = rollout(env, source.policy(path, env, cfg.policy_mode), cfg.steps, derive_seed(cfg.seed, _DATA))
    if cfg.quality == "medium-expert":
        episodes += rollout(env, expert, cfg.steps, derive_seed(cfg.seed, _DATA, 1))
        return episodes, random_ref, expert_ref, f"medium: {about}; expert: final policy"
    return episodes, random_ref, expert_ref, about


def make_dataset(cfg: DictConfig):
    """Collect and write the dataset ``cfg`` asks for; returns the Minari dataset."""
    from rltrain.data.minari_data import write_minari_dataset

    dataset_id = check_request(cfg)
    seed_everything(cfg.seed)
    env = make_env(cfg.env.id, cfg.env.max_episode_steps, **OmegaConf.to_container(cfg.env.kwargs, resolve=True))
    episodes, ref_min, ref_max, about = collect(cfg, env)
    if ref_max is None:  # random data without an expert: no normalized-score references at all
        ref_min = None
    return write_minari_dataset(
        dataset_id, episodes, env=env.spec, eval_env=env.spec, ref_min_score=ref_min, ref_max_score=ref_max,
        algorithm_name=f"rltrain-{cfg.quality}", num_episodes_average_score=cfg.ref_episodes,
        description=f"{cfg.quality} data for {cfg.env.id} made by rltrain.make_dataset (seed {cfg.seed}): {about}")


@hydra.main(version_base="1.3", config_path="pkg://rltrain.configs", config_name="make_dataset")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        dataset = make_dataset(cfg)
    except ConfigError as err:
        print(f"rltrain.make_dataset: error: {err}", file=sys.stderr)
        sys.exit(2)
    meta = dataset.storage.metadata
    print(f"wrote {meta['dataset_id']}: {meta['total_episodes']} episodes, {meta['total_steps']} steps, "
          f"ref_min_score {meta.get('ref_min_score')}, ref_max_score {meta.get('ref_max_score')}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
