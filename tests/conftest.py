"""Session fixtures: a Minari root, small real datasets written into it, and the training runs that
the learning checks share with the offline datasets made from them."""

from __future__ import annotations

import os

import gymnasium as gym
import pytest
import torch

from rltrain.data.minari_data import write_minari_dataset
from rltrain.make_dataset import random_policy, rollout
from tests.helpers import LEARNING_RUNS, only_run_dir, run_cli, run_module

# Under pytest-xdist (README's command runs 2 workers) each worker, and every training run it starts,
# uses one thread: two workers share the two cores instead of fighting over them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Tests that read the session's shared training runs or the datasets made from them run on one
# worker, so each run is trained once.
SHARED_RUN_FIXTURES = {"learning_run", "medium_datasets", "expert_datasets"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        if SHARED_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("shared_runs"))


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


@pytest.fixture(scope="session")
def learning_run(tmp_path_factory):
    """``learning_run(name, seed)``: the run directory of ``python -m rltrain LEARNING_RUNS[name] seed=<seed>``,
    trained once per session."""
    runs = {}

    def get(name: str, seed: int):
        if (name, seed) not in runs:
            root = tmp_path_factory.mktemp(f"{name}-{seed}")
            run_cli([*LEARNING_RUNS[name], f"seed={seed}"], root, timeout=900)
            runs[name, seed] = only_run_dir(root)
        return runs[name, seed]

    return get


@pytest.fixture(scope="session")
def medium_datasets(minari_session_root, learning_run) -> dict[str, str]:
    """env name -> id of a D4RL-style medium dataset (10k transitions) made with ``rltrain.make_dataset``
    from the seed-0 learning run: the policy snapshot closest to half-way between random and the
    run's final policy."""
    ids = {}
    for env, run in (("pendulum", "sac_pendulum"), ("cartpole", "dqn_cartpole")):
        ids[env] = f"rltrain-test/{env}/medium-v0"
        run_module("rltrain.make_dataset", [f"env={env}", "quality=medium", f"source_run={learning_run(run, 0)}",
                                            "steps=10000", "ref_episodes=20", f"dataset_id={ids[env]}"])
    return ids


@pytest.fixture(scope="session")
def expert_datasets(minari_session_root, learning_run, medium_datasets) -> dict[str, str]:
    """env name -> id of an expert dataset made with ``rltrain.make_dataset`` from the seed-0 learning
    run's final policy (Pendulum: 10k transitions, CartPole: 10 episodes). With the medium datasets
    beside them, ``rltrain-test/pendulum/medium-expert-v0`` loads as their concatenation (D4RL's
    medium-expert)."""
    ids = {}
    for env, run, steps in (("pendulum", "sac_pendulum", 10000), ("cartpole", "dqn_cartpole", 5000)):
        ids[env] = f"rltrain-test/{env}/expert-v0"
        run_module("rltrain.make_dataset", [f"env={env}", "quality=expert", f"source_run={learning_run(run, 0)}",
                                            f"steps={steps}", "ref_episodes=20", f"dataset_id={ids[env]}"])
    return ids
