"""Minari datasets as offline data, on real datasets written from real gymnasium rollouts: the round
trip, Dict flattening, the sampler against online collection, seeding and resume, missing and
corrupt datasets, read-only loading, overwrite refusal, concatenation, normalization, reward
transforms. Every test has its own temporary MINARI_DATASETS_PATH."""

from __future__ import annotations

import hashlib
import sys

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from rltrain.data import minari_data
from rltrain.collect import Collector
from rltrain.data.minari_data import (
    DatasetError,
    OfflineData,
    TransitionSampler,
    load_minari,
    to_offline_data,
    write_minari_dataset,
)
from rltrain.data.normalize import ObservationNormalizer, apply_reward_transform, normalize_in_place
from rltrain.envs import make_vector_env
from rltrain.make_dataset import random_policy, run_episode
from rltrain.errors import ConfigError

PENDULUM = "rltrain-test/pendulum/random-v0"
CARTPOLE = "rltrain-test/cartpole/random-v0"
HINT = "python scripts/make_dataset.py env=pendulum"


class GoalReachEnv(gym.Env):
    """Dict observations like AntMaze's (observation, achieved and desired goal); 3-5 step episodes."""

    observation_space = gym.spaces.Dict({
        "observation": gym.spaces.Box(-5.0, 5.0, (3,), np.float64),
        "desired_goal": gym.spaces.Box(-5.0, 5.0, (2,), np.float64),
        "achieved_goal": gym.spaces.Box(-5.0, 5.0, (2,), np.float64),
    })
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        return {key: self.np_random.uniform(-5, 5, space.shape) for key, space in self.observation_space.items()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(3, 6))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.t == self.length, False, {}


gym.register("rltrain-test/GoalReach-v0", entry_point="tests.test_minari_data:GoalReachEnv")


def rollout(env_id: str, num_episodes: int, seed: int) -> list[dict]:
    """Random-action episodes as write_minari_dataset takes them, episode ``i`` reset with ``seed + i``."""
    env = gym.make(env_id)
    policy = random_policy(env, seed)
    return [run_episode(env, policy, seed + i) for i in range(num_episodes)]


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="module")
def pendulum_episodes():
    return rollout("Pendulum-v1", 3, seed=0)  # truncated at 200 steps


@pytest.fixture(scope="module")
def cartpole_episodes():
    return rollout("CartPole-v1", 6, seed=10)  # random actions terminate in ~10-40 steps


def write(dataset_id: str, episodes: list[dict], env_id: str, **kwargs) -> minari.MinariDataset:
    return write_minari_dataset(dataset_id, episodes, env=env_id, algorithm_name="random", **kwargs)


def expected_transitions(episodes: list[dict]) -> dict[str, torch.Tensor]:
    """The rollout's transitions laid out back to back, straight from the arrays."""
    def cat(key, rows=slice(None), dtype=None):
        return torch.as_tensor(np.concatenate([np.asarray(ep[key])[rows] for ep in episodes]), dtype=dtype)

    lengths = [len(ep["rewards"]) for ep in episodes]
    return {
        "observation": cat("observations", slice(None, -1), torch.float32),
        "next_observation": cat("observations", slice(1, None), torch.float32),
        "action": cat("actions"), "reward": cat("rewards", dtype=torch.float32),
        "terminated": cat("terminations"), "truncated": cat("truncations"),
        "episode_index": torch.cat([torch.full((n,), k) for k, n in enumerate(lengths)]),
        "step_index": torch.cat([torch.arange(n) for n in lengths]),
        "lengths": torch.tensor(lengths),
        "returns": torch.tensor([float(np.sum(ep["rewards"])) for ep in episodes], dtype=torch.float64),
    }


def transitions_of(data: OfflineData) -> dict[str, torch.Tensor]:
    return {
        "observation": data.observations[data.obs_index],
        "next_observation": data.observations[data.obs_index + 1],
        "action": data.actions, "reward": data.rewards,
        "terminated": data.terminated, "truncated": data.truncated,
        "episode_index": data.episode_index, "step_index": data.step_index,
        "lengths": data.episode_lengths, "returns": data.episode_returns,
    }


def assert_same_transitions(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        if key == "returns":
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-12, atol=1e-9)
        else:
            assert actual[key].dtype == expected[key].dtype, key
            assert torch.equal(actual[key], expected[key]), key


def snapshot(root) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("env_id, dataset_id, episodes_fixture",
                         [("Pendulum-v1", PENDULUM, "pendulum_episodes"),
                          ("CartPole-v1", CARTPOLE, "cartpole_episodes")])
def test_round_trip_equals_the_rollout(env_id, dataset_id, episodes_fixture, request):
    episodes = request.getfixturevalue(episodes_fixture)
    write(dataset_id, episodes, env_id)
    assert "jax" not in sys.modules, "writing from arrays must not need jax"
    data = to_offline_data(load_minari(dataset_id, download=False))

    expected = expected_transitions(episodes)
    assert_same_transitions(transitions_of(data), expected)
    n, num_episodes = len(expected["reward"]), len(episodes)
    assert len(data) == n and data.num_episodes == num_episodes
    assert data.observations.shape == (n + num_episodes, data.observation_space.shape[0])  # one copy
    assert torch.equal(data.episode_starts, torch.cumsum(expected["lengths"], 0) - expected["lengths"])
    env = gym.make(env_id)
    assert data.observation_space == env.observation_space and data.action_space == env.action_space
    assert data.env_spec.id == env_id and data.eval_env_spec.id == env_id
    assert data.dataset_id == dataset_id and data.ref_min_score is None and data.ref_max_score is None
    ends = data.episode_starts + data.episode_lengths - 1
    if env_id == "Pendulum-v1":
        assert data.actions.dtype == torch.float32 and data.actions.shape == (n, 1)
        assert data.truncated.sum() == num_episodes and data.truncated[ends].all() and not data.terminated.any()
    else:
        assert data.actions.dtype == torch.int64 and data.actions.shape == (n,)
        assert data.terminated.sum() == num_episodes and data.terminated[ends].all() and not data.truncated.any()


def test_dict_observations_are_flattened_in_gymnasium_order():
    episodes = rollout("rltrain-test/GoalReach-v0", 4, seed=3)
    write("rltrain-test/goalreach/random-v0", episodes, "rltrain-test/GoalReach-v0")
    data = to_offline_data(load_minari("rltrain-test/goalreach/random-v0", download=False))

    space = GoalReachEnv.observation_space
    assert data.observation_space == gym.spaces.flatten_space(space) and data.observation_space.shape == (7,)
    by_hand = [gym.spaces.flatten(space, {key: ep["observations"][key][t] for key in space.keys()})
               for ep in episodes for t in range(len(ep["rewards"]) + 1)]
    assert torch.equal(data.observations, torch.as_tensor(np.stack(by_hand), dtype=torch.float32))
    rewards = np.concatenate([ep["rewards"] for ep in episodes])
    assert torch.equal(data.rewards, torch.as_tensor(rewards, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("env_id, dataset_id, episodes_fixture",
                         [("Pendulum-v1", PENDULUM, "pendulum_episodes"),
                          ("CartPole-v1", CARTPOLE, "cartpole_episodes")])
def test_sampler_batches_look_exactly_like_online_collection(env_id, dataset_id, episodes_fixture, request):
    write(dataset_id, request.getfixturevalue(episodes_fixture), env_id)
    offline = TransitionSampler(to_offline_data(load_minari(dataset_id, download=False)), seed=0).sample(7)
    collector = Collector(make_vector_env(env_id, 2), lambda obs: None, torch.device("cpu"), seed=0)
    online = collector.step(random=True)

    def structure(td):
        return {key: (value.dtype, tuple(value.shape[1:]))
                for key, value in td.items(include_nested=True, leaves_only=True)}

    assert structure(offline) == structure(online)
    assert offline.batch_size == torch.Size([7]) and offline.device == torch.device("cpu")


def test_sampler_draws_recorded_transitions_uniformly(pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    data = to_offline_data(load_minari(PENDULUM, download=False))
    batch = TransitionSampler(data, seed=1).sample(20_000)

    expected = expected_transitions(pendulum_episodes)
    row_of = {obs.numpy().tobytes(): i for i, obs in enumerate(expected["observation"])}
    rows = torch.tensor([row_of[obs.numpy().tobytes()] for obs in batch["observation"]])
    assert torch.equal(batch["action"], expected["action"][rows])
    assert torch.equal(batch["next", "observation"], expected["next_observation"][rows])
    assert torch.equal(batch["next", "reward"], expected["reward"][rows].unsqueeze(-1))
    assert torch.equal(batch["next", "terminated"], expected["terminated"][rows].unsqueeze(-1))
    assert torch.equal(batch["next", "truncated"], expected["truncated"][rows].unsqueeze(-1))
    assert torch.equal(batch["next", "done"], batch["next", "terminated"] | batch["next", "truncated"])
    counts = torch.bincount(rows, minlength=len(data))
    assert counts.min() > 0 and counts.max() < 3 * counts.float().mean()  # 600 rows, ~33 draws each


def test_sampler_is_seeded_and_resumes_exactly(pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    data = to_offline_data(load_minari(PENDULUM, download=False))
    a, b, c = TransitionSampler(data, seed=3), TransitionSampler(data, seed=3), TransitionSampler(data, seed=4)
    first = a.sample(32)["observation"]
    assert torch.equal(first, b.sample(32)["observation"])
    assert not torch.equal(first, c.sample(32)["observation"])

    state = a.state_dict()
    assert list(state) == ["generator"], "the sampler's state must not hold the data"
    following = a.sample(32)
    resumed = TransitionSampler(data, seed=99)
    resumed.load_state_dict(state)
    assert (resumed.sample(32) == following).all()
    assert len(a) == len(data)


# ----------------------------------------------------------------------------------------------
# Missing, downloaded and damaged datasets


def test_missing_dataset_error_names_id_root_and_hint(minari_root):
    with pytest.raises(DatasetError) as info:
        load_minari("rltrain-test/nowhere/random-v0", download=False, make_hint=HINT)
    message = str(info.value)
    assert "rltrain-test/nowhere/random-v0" in message and str(minari_root) in message and HINT in message
    assert isinstance(info.value, ConfigError)


def test_unreachable_remote_is_reported_without_waiting_for_retries(monkeypatch):
    def must_not_run(dataset_id, force_download=False):
        raise AssertionError("download attempted although the remote is unreachable")

    monkeypatch.setenv("MINARI_REMOTE", "hf://farama-minari")
    monkeypatch.setattr(minari_data.socket, "create_connection", _refuse)
    monkeypatch.setattr(minari, "download_dataset", must_not_run)
    with pytest.raises(DatasetError, match=r"no network: huggingface\.co is unreachable") as info:
        load_minari("D4RL/door/human-v2", make_hint=HINT)
    assert HINT in str(info.value)


def _refuse(address, timeout=None):
    raise OSError("Name or service not known")


def test_failed_download_is_reported_in_one_line(monkeypatch):
    def no_network(dataset_id, force_download=False):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nretrying...")

    monkeypatch.setattr(minari_data, "_remote_unreachable", lambda: None)
    monkeypatch.setattr(minari, "download_dataset", no_network)
    with pytest.raises(DatasetError, match="ConnectionError: Failed to resolve 'huggingface.co'\\)") as info:
        load_minari("D4RL/door/human-v2", make_hint=HINT)
    assert "retrying" not in str(info.value) and HINT in str(info.value)


def test_downloaded_dataset_is_opened(monkeypatch, pendulum_episodes):
    def download(dataset_id, force_download=False):
        write(dataset_id, pendulum_episodes[:1], "Pendulum-v1")

    monkeypatch.setattr(minari_data, "_remote_unreachable", lambda: None)
    monkeypatch.setattr(minari, "download_dataset", download)
    dataset = load_minari(PENDULUM)
    assert dataset.total_steps == 200
    with pytest.raises(DatasetError, match="download=False"):
        load_minari("rltrain-test/other/random-v0", download=False)


def test_truncated_hdf5_file_is_named_and_left_alone(minari_root, pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    path = minari_root / PENDULUM / "data" / "main_data.hdf5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = snapshot(minari_root)
    with pytest.raises(DatasetError, match="truncated") as info:
        load_minari(PENDULUM, make_hint=HINT)
    message = str(info.value)
    assert str(path) in message and f"minari delete {PENDULUM}" in message and HINT in message
    assert snapshot(minari_root) == before


def test_garbage_metadata_is_named(minari_root, pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    path = minari_root / PENDULUM / "data" / "metadata.json"
    path.write_text('{"total_episodes": 3, "data_for')
    with pytest.raises(DatasetError, match="Delete the dataset") as info:
        load_minari(PENDULUM)
    assert str(path) in str(info.value)


def test_loading_converting_and_sampling_leave_files_unchanged(minari_root, pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    before = snapshot(minari_root)
    data = to_offline_data(load_minari(PENDULUM))
    TransitionSampler(data).sample(64)
    apply_reward_transform(data, "antmaze")
    normalize_in_place(data, ObservationNormalizer.from_data(data))
    assert snapshot(minari_root) == before and len(before) >= 2


# ----------------------------------------------------------------------------------------------
# Writing


def test_write_refuses_to_overwrite(minari_root, pendulum_episodes, cartpole_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    before = snapshot(minari_root)
    with pytest.raises(DatasetError) as info:
        write(PENDULUM, cartpole_episodes, "CartPole-v1")
    assert str(minari_root / PENDULUM) in str(info.value) and f"minari delete {PENDULUM}" in str(info.value)
    assert snapshot(minari_root) == before


@pytest.mark.parametrize("bad_id", ["rltrain-test/pendulum/random", "pendulum random-v0", "/pendulum-v0"])
def test_write_validates_the_id(bad_id, pendulum_episodes):
    with pytest.raises(DatasetError, match="malformed"):
        write(bad_id, pendulum_episodes, "Pendulum-v1")


def test_write_rejects_inconsistent_episodes_and_leaves_nothing(minari_root, pendulum_episodes):
    broken = dict(pendulum_episodes[0], actions=pendulum_episodes[0]["actions"][:-1])
    with pytest.raises(DatasetError, match="episode 1"):
        write(PENDULUM, [pendulum_episodes[1], broken], "Pendulum-v1")
    with pytest.raises(DatasetError, match="ref_min_score needs ref_max_score"):
        write(PENDULUM, pendulum_episodes, "Pendulum-v1", ref_min_score=0.0)
    assert not (minari_root / PENDULUM).exists()


# ----------------------------------------------------------------------------------------------
# Concatenation


def test_concatenation_equals_one_dataset_of_all_episodes(pendulum_episodes):
    refs = {"ref_min_score": -1500.0, "ref_max_score": -150.0}
    write("rltrain-test/pendulum/first-v0", pendulum_episodes[:2], "Pendulum-v1", **refs)
    write("rltrain-test/pendulum/last-v0", pendulum_episodes[2:], "Pendulum-v1", **refs)
    write(PENDULUM, pendulum_episodes, "Pendulum-v1", **refs)
    parts = [to_offline_data(load_minari(f"rltrain-test/pendulum/{name}-v0")) for name in ("first", "last")]
    whole = to_offline_data(load_minari(PENDULUM))

    joined = OfflineData.concatenate(parts, "rltrain-test/pendulum/joined-v0")
    assert_same_transitions(transitions_of(joined), transitions_of(whole))
    assert torch.equal(joined.observations, whole.observations)
    assert torch.equal(joined.episode_starts, whole.episode_starts)
    assert (joined.ref_min_score, joined.ref_max_score) == (-1500.0, -150.0) == (whole.ref_min_score,
                                                                                   whole.ref_max_score)
    assert joined.dataset_id == "rltrain-test/pendulum/joined-v0"
    parts[1].ref_max_score = 0.0
    assert OfflineData.concatenate(parts, "x-v0").ref_max_score is None


def test_concatenation_refuses_different_spaces(pendulum_episodes, cartpole_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    write(CARTPOLE, cartpole_episodes, "CartPole-v1")
    parts = [to_offline_data(load_minari(PENDULUM)), to_offline_data(load_minari(CARTPOLE))]
    with pytest.raises(DatasetError, match="spaces differ"):
        OfflineData.concatenate(parts, "rltrain-test/mixed-v0")


# ----------------------------------------------------------------------------------------------
# Normalization and reward transforms


def test_normalizer_uses_state_statistics_and_round_trips(pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    data = to_offline_data(load_minari(PENDULUM))
    states = np.concatenate([ep["observations"][:-1] for ep in pendulum_episodes]).astype(np.float64)
    normalizer = ObservationNormalizer.from_data(data)
    torch.testing.assert_close(normalizer.mean, torch.tensor(states.mean(0), dtype=torch.float32))
    torch.testing.assert_close(normalizer.std, torch.tensor(states.std(0) + 1e-3, dtype=torch.float32))

    obs = torch.randn(5, 3)
    torch.testing.assert_close(normalizer(obs), (obs - normalizer.mean) / normalizer.std)
    restored = ObservationNormalizer.identity(3)
    assert torch.equal(restored(obs), obs)
    restored.load_state_dict(normalizer.state_dict())
    assert torch.equal(restored(obs), normalizer(obs))

    original, storage = data.observations.clone(), data.observations.data_ptr()
    normalize_in_place(data, normalizer)
    assert data.observations.data_ptr() == storage
    torch.testing.assert_close(data.observations, normalizer(original))
    batch = TransitionSampler(data, seed=0).sample(4000)
    assert batch["observation"].mean(0).abs().max() < 0.1


def test_normalizer_constructor_errors():
    with pytest.raises(ValueError, match="equal shape"):
        ObservationNormalizer(torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="positive"):
        ObservationNormalizer(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_reward_transforms(pendulum_episodes):
    write(PENDULUM, pendulum_episodes, "Pendulum-v1")
    dataset = load_minari(PENDULUM)
    raw = torch.as_tensor(np.concatenate([ep["rewards"] for ep in pendulum_episodes]), dtype=torch.float32)
    returns = [float(np.sum(ep["rewards"])) for ep in pendulum_episodes]

    data = to_offline_data(dataset)
    info = apply_reward_transform(data, "return_range")
    return_range = max(returns) - min(returns)
    torch.testing.assert_close(data.rewards, raw * (1000.0 / return_range))
    assert info["kind"] == "return_range" and info["return_range"] == pytest.approx(return_range)
    torch.testing.assert_close(data.episode_returns, torch.tensor(returns, dtype=torch.float64))  # stay raw

    data = to_offline_data(dataset)
    info = apply_reward_transform(data, "antmaze", scale=2.0, shift=0.5)
    torch.testing.assert_close(data.rewards, (raw - 1.0) * 2.0 + 0.5)
    assert (info["multiplier"], info["offset"]) == (2.0, -1.5)

    data = to_offline_data(dataset)
    apply_reward_transform(data, "none", scale=10.0, shift=-5.0)
    torch.testing.assert_close(data.rewards, raw * 10.0 - 5.0)

    data = to_offline_data(dataset)
    apply_reward_transform(data, "none")
    assert torch.equal(data.rewards, raw)
    with pytest.raises(ValueError, match="none, return_range, antmaze"):
        apply_reward_transform(data, "iql")
    data.episode_returns.fill_(3.0)
    with pytest.raises(ValueError, match="different returns"):
        apply_reward_transform(data, "return_range")
