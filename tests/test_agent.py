"""rltrain.load_agent / rltrain.evaluate / rltrain.train: a loaded agent, evaluated on the run's own
seeds, reproduces the run's final evaluation exactly, for each family of acting objectives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rltrain
from rltrain.envs import derive_seed
from rltrain.errors import ConfigError
from rltrain.export import export_policy

TINY = ["torch_threads=1", "logger.progress=false", "network.actor.num_cells=[32,32]",
        "network.critic.num_cells=[32,32]", "trainer.eval_episodes=3"]
ONLINE = ["trainer.total_env_steps=400", "trainer.warmup_steps=100", "trainer.learning_starts=100",
          "trainer.eval_every=200"]
OFFLINE = ["trainer.total_updates=150", "trainer.eval_every=150", "trainer.batch_size=32"]
TINY_DT = ["algo.model={embed_dim:16,n_layer:1,n_head:1,inner_dim:32,dropout:0.1}", "algo.context_len=5",
           "algo.max_ep_len=200", "trainer.batch_size=16"]

FAMILIES = {  # name -> overrides (the dataset's id is appended where the run is offline)
    "sac-online": [*ONLINE, "trainer.policy_snapshots=true"],
    "dqn-online-discrete": [*ONLINE, "algo=dqn", "env=cartpole"],
    "ppo-on-policy": ["algo=ppo", "env=cartpole", "algo.steps_per_env=128", "trainer.total_env_steps=256",
                      "trainer.eval_every=256", "trainer.batch_size=64"],
    "iql-offline": [*OFFLINE, "algo=iql", "dataset=minari"],
    "dt-sequence": [*OFFLINE, "algo=dt", "dataset=minari", *TINY_DT],
    "act-sequence": [*OFFLINE, "algo=act", "dataset=minari", "algo.chunk_size=4",
                     "algo.model={embed_dim:16,n_heads:1,ff_dim:32,n_encoder_layers:1,n_decoder_layers:1,"
                     "latent_dim:4,dropout:0.1}", "trainer.batch_size=16"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_datasets):
    """family -> summary of its tiny run, trained once through rltrain.train."""
    runs = {}

    def get(family: str) -> dict:
        if family not in runs:
            overrides = [*TINY, *FAMILIES[family]]
            if "dataset=minari" in overrides:
                overrides.append(f"dataset.id={tiny_datasets['pendulum']}")
            runs[family] = rltrain.train(overrides, run_dir=tmp_path_factory.mktemp(family))
        return runs[family]

    return get


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loaded_agent_reproduces_the_final_evaluation(trained, family):
    summary = trained(family)
    agent = rltrain.load_agent(summary["run_dir"])
    result = rltrain.evaluate(agent, episodes=3, seed=derive_seed(agent.config.seed, agent.step, 2))
    assert result["return_mean"] == summary["final_eval_return"]
    assert result["return_std"] == summary["final_eval_return_std"]
    if agent.config.dataset is not None:  # the tiny datasets carry reference scores
        assert result["normalized_score"] == pytest.approx(summary["final_normalized_score"])


def test_act_takes_numpy_or_torch_single_or_batched(trained):
    agent = rltrain.load_agent(trained("iql-offline")["run_dir"])  # a normalizer is folded in
    assert agent.config.dataset.normalize_observations
    obs = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    batch = agent.act(obs)
    assert isinstance(batch, np.ndarray) and batch.shape == (5, 1) and agent.action_space.contains(batch[0])
    np.testing.assert_array_equal(agent.act(obs[2]), batch[2])
    as_torch = agent.act(torch.from_numpy(obs).requires_grad_())
    assert isinstance(as_torch, torch.Tensor) and not as_torch.requires_grad
    np.testing.assert_array_equal(as_torch.numpy(), batch)
    assert not np.array_equal(agent.act(obs, deterministic=False), batch)  # a sample of the TanhNormal
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        agent.act(np.zeros(4))


def test_discrete_agent_acts_with_indices(trained):
    agent = rltrain.load_agent(trained("dqn-online-discrete")["run_dir"])
    env = agent.make_env()
    obs, _ = env.reset(seed=0)
    action = agent.act(obs)
    assert action.dtype == np.int64 and action.shape == () and env.action_space.contains(action)
    env.step(action)


def test_decision_transformer_needs_rewards_and_resets(trained):
    agent = rltrain.load_agent(trained("dt-sequence")["run_dir"])
    assert agent.has_memory and agent.needs_rewards
    obs = np.zeros(3, np.float32)
    first = agent.act(obs)
    with pytest.raises(RuntimeError, match="record"):
        agent.act(obs)
    agent.record(-1.0)
    agent.act(obs)  # a second step of the same episode
    agent.record(-1.0)
    agent.reset()
    np.testing.assert_array_equal(agent.act(obs), first)  # a new episode starts from the same context


def test_policies_with_memory_are_not_exported(trained, tmp_path):
    agent = rltrain.load_agent(trained("dt-sequence")["run_dir"])
    with pytest.raises(ConfigError, match="keeps a memory across steps. Act with rltrain.load_agent"):
        export_policy(agent, tmp_path / "policy.pt")
    assert not (tmp_path / "policy.pt").exists()


def test_act_temporal_ensemble_resets(trained):
    agent = rltrain.load_agent(trained("act-sequence")["run_dir"])
    assert agent.has_memory and not agent.needs_rewards
    obs = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    first = agent.act(obs)
    later = [agent.act(obs * (i + 2)) for i in range(3)]
    agent.reset(2)
    np.testing.assert_array_equal(agent.act(obs), first)
    assert not np.array_equal(later[-1], first)


def test_snapshot_and_best_checkpoints(trained):
    """checkpoint=<step> reads that policy snapshot; checkpoint=best reads checkpoints/best.pt, which
    has the snapshots' layout (objective, normalizer, eval)."""
    run_dir = trained("sac-online")["run_dir"]
    first = rltrain.load_agent(run_dir, checkpoint=200)
    assert first.step == 200 and first.eval_result["env_step"] == 200
    result = rltrain.evaluate(first, episodes=3, seed=derive_seed(0, 200, 2))
    assert result["return_mean"] == first.eval_result["return_mean"]
    best = rltrain.load_agent(run_dir, checkpoint="best")  # the Trainer keeps the best evaluation's policy
    snapshots = [rltrain.load_agent(run_dir, checkpoint=step) for step in (200, 400)]
    assert best.eval_result == max((s.eval_result for s in snapshots), key=lambda r: r["return_mean"])
    assert best.checkpoint.name == "best.pt" and best.step == best.eval_result["env_step"]
    with pytest.raises(ConfigError, match=r"policy snapshots at steps \[200, 400\]"):
        rltrain.load_agent(run_dir, checkpoint=300)
    with pytest.raises(ConfigError, match="accepted values are last, best"):
        rltrain.load_agent(run_dir, checkpoint="newest")


def test_train_rejects_a_bad_override_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="trainer.no_such_key"):
        rltrain.train(["trainer.no_such_key=1"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="trainer.batch_size must be an integer >= 1"):
        rltrain.train([*TINY, "trainer.batch_size=0"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_train_writes_the_cli_run_directory(trained):
    summary = trained("sac-online")
    run_dir = Path(summary["run_dir"])
    for name in ("config.yaml", "overrides.yaml", "git_commit.txt", ".hydra/config.yaml", ".hydra/overrides.yaml",
                 "checkpoints/last.pt", "summary.json"):
        assert (run_dir / name).exists(), name
    assert summary["env_steps"] == 400
