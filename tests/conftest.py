"""Session fixtures: a Minari root for the run, and small real datasets written into it."""

from __future__ import annotations

import gymnasium as gym
import pytest

from rltrain.data.minari_data import write_minari_dataset
from rltrain.make_dataset import random_policy, rollout

# env name -> (gymnasium id, reference returns (random, expert) recorded in the tiny datasets)
TINY_ENVS = {"pendulum": ("Pendulum-v1", (-1200.0, -150.0)), "cartpole": ("CartPole-v1", (20.0, 500.0))}


@pytest.fixture(scope="session")
def minari_session_root(tmp_path_factory):
    """MINARI_DATASETS_PATH for the tests (and the subprocesses they start) that request it."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


@pytest.fixture(scope="session")
def tiny_datasets(minari_session_root) -> dict[str, str]:
    """env name -> id of a random-policy dataset of about 600 transitions, made by rolling out the real env."""
    ids = {}
    for name, (env_id, (ref_min, ref_max)) in TINY_ENVS.items():
        env = gym.make(env_id)
        episodes = rollout(env, random_policy(env, 0), 600, seed=0)
        ids[name] = f"rltrain-test/{name}/tiny-v0"
        write_minari_dataset(ids[name], episodes, env=env_id, ref_min_score=ref_min, ref_max_score=ref_max,
                             algorithm_name="random")
    return ids
