"""Replay buffer and online collection on real gymnasium environments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rltrain.collect import Collector
from rltrain.data import ReplayBuffer
from rltrain.envs import make_vector_env


def transitions(start: int, n: int) -> TensorDict:
    ids = torch.arange(start, start + n, dtype=torch.float32).unsqueeze(-1)
    return TensorDict({"observation": ids, "action": ids.repeat(1, 2),
                       "next": {"observation": ids + 1, "reward": ids,
                                "terminated": torch.zeros(n, 1, dtype=torch.bool)}}, batch_size=[n])


def test_ring_buffer_wraps_and_samples_only_what_it_holds():
    buffer = ReplayBuffer(capacity=10, seed=0)
    buffer.extend(transitions(0, 7))
    assert len(buffer) == 7
    assert set(buffer.sample(500)["observation"].squeeze(-1).tolist()) == set(range(7))
    buffer.extend(transitions(7, 6))  # 13 written, capacity 10: 0, 1, 2 overwritten
    assert len(buffer) == 10
    sample = buffer.sample(2000)
    assert set(sample["observation"].squeeze(-1).tolist()) == set(range(3, 13))
    torch.testing.assert_close(sample["next", "observation"], sample["observation"] + 1)
    assert sample["next", "terminated"].dtype == torch.bool


def test_buffer_memory_stores_each_observation_once():
    buffer = ReplayBuffer(capacity=1000)
    buffer.extend(transitions(0, 3))
    per_row = 4 * (1 + 2 + 1) + 1  # float32 obs (next obs is the following row), action(2), reward; bool
    assert ("next", "observation") not in buffer._storage
    assert sum(t.numel() * t.element_size() for t in buffer._storage.values()) == buffer.rows * per_row
    assert buffer.rows <= 1.03 * 1000 + 32  # capacity plus the reserve for final observations


def test_buffer_state_round_trip_continues_identically():
    a = ReplayBuffer(capacity=8, seed=3)
    a.extend(transitions(0, 5))
    a.sample(4)
    b = ReplayBuffer(capacity=8, seed=99)
    b.load_state_dict(a.state_dict())
    a.extend(transitions(5, 6))
    b.extend(transitions(5, 6))
    assert torch.equal(a.sample(16)["observation"], b.sample(16)["observation"])


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(4).sample(1)


class CountingEnv(gym.Env):
    """Observation = (episode id, step in episode); episodes last 3-7 steps (seeded)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = float(self.np_random.integers(1_000_000))
        self.t, self.length = 0, int(self.np_random.integers(3, 8))
        return np.array([self.episode, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        ended = self.t >= self.length
        terminated, truncated = ended and self.length % 2 == 0, ended and self.length % 2 == 1
        return np.array([self.episode, self.t], np.float32), 1.0, terminated, truncated, {}


gym.register("rltrain-test/Counting-v0", entry_point=CountingEnv)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_collection_never_spans_an_episode_boundary(num_envs):
    envs = make_vector_env("rltrain-test/Counting-v0", num_envs)
    collector = Collector(envs, lambda obs: torch.zeros(obs.shape[0], 1), torch.device("cpu"), seed=0)
    batches = [collector.step(random=i % 2 == 0) for i in range(200)]
    data = torch.cat(batches)
    obs, next_obs = data["observation"], data["next", "observation"]
    assert torch.equal(obs[:, 0], next_obs[:, 0]), "a transition crossed into another episode"
    assert torch.equal(next_obs[:, 1], obs[:, 1] + 1)
    ended = next_obs[:, 1] >= 3
    lengths_even = next_obs[:, 1] % 2 == 0
    done = data["next", "done"].squeeze(-1)
    assert torch.equal(data["next", "terminated"].squeeze(-1), done & lengths_even)
    assert torch.equal(data["next", "truncated"].squeeze(-1), done & ~lengths_even)
    assert (done <= ended).all()
    episodes = collector.pop_finished_episodes()
    assert episodes and all(ret == length for ret, length in episodes)


def test_end_episodes_truncates_and_reset_restarts_seeded():
    envs = make_vector_env("rltrain-test/Counting-v0", 2)
    collector = Collector(envs, lambda obs: torch.zeros(obs.shape[0], 1), torch.device("cpu"), seed=0)
    collector.step(random=True)
    last = collector.step(random=True, end_episodes=True)
    assert last["next", "truncated"].all() and last["next", "done"].all()
    collector.reset(seed=5)
    first_a = collector.step(random=True)["observation"]
    collector.reset(seed=5)
    first_b = collector.step(random=True)["observation"]
    assert torch.equal(first_a, first_b) and (first_a[:, 1] == 0).all()
