"""Offline runs end to end in-process: dataset configs, bad input, the offline Trainer (normalized
scores, normalizer in checkpoints, term windows, learning-rate schedules) and the dataset factory."""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

import rltrain.__main__  # noqa: F401  (registers the resolvers the configs use)
from rltrain.build import build_trainer, load_offline_data
from rltrain.checkpoint import load
from rltrain.data.minari_data import load_minari, to_offline_data, write_minari_dataset
from rltrain.data.replay import ReplayBuffer
from rltrain.errors import ConfigError
from rltrain.make_dataset import make_dataset, random_policy, rollout, split_into_episodes
from tests.helpers import SMALL_NETS, only_run_dir, run_cli

TINY = ["device=cpu", "logger.progress=false", *SMALL_NETS, "trainer.batch_size=32", "trainer.eval_episodes=2",
        "env.eval_num_envs=2", "trainer.total_updates=20", "trainer.eval_every=10", "trainer.log_every=10",
        "trainer.checkpoint_every=10"]


def compose_config(*overrides: str, name: str = "config"):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def offline(dataset_id: str, *overrides: str):
    return compose_config("dataset=minari", f"dataset.id={dataset_id}", *TINY, *overrides)


def file_hashes(root) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, env_id", [("hopper", "Hopper-v5"), ("halfcheetah", "HalfCheetah-v5"),
                                         ("walker2d", "Walker2d-v5"), ("ant", "Ant-v5")])
@pytest.mark.parametrize("quality", ["random", "medium", "expert", "medium-expert"])
def test_d4rl_configs_resolve_to_minari_ids(env, env_id, quality):
    cfg = compose_config(f"dataset=d4rl/{env}", f"dataset.quality={quality}")
    assert cfg.dataset.id == f"mujoco/{env}/{quality}-v0"
    assert cfg.dataset.ref_max_score > cfg.dataset.ref_min_score
    assert cfg.trainer.total_updates == 1_000_000 and cfg.trainer.eval_every == 5000


def test_missing_medium_expert_is_made_from_medium_and_expert(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1")
    parts = {}
    for seed, quality in enumerate(["medium", "expert"]):
        episodes = rollout(env, random_policy(env, seed), 400, seed=seed)
        write_minari_dataset(f"mix/pendulum/{quality}-v0", episodes, env="Pendulum-v1", ref_min_score=-1200.0,
                             ref_max_score=-150.0, algorithm_name="random")
        parts[quality] = to_offline_data(load_minari(f"mix/pendulum/{quality}-v0", download=False))
    cfg = compose_config("dataset=minari", "dataset.id=mix/pendulum/medium-expert-v0", "dataset.download=false")
    data = load_offline_data(cfg.dataset)
    assert data.dataset_id == "mix/pendulum/medium-expert-v0"
    assert torch.equal(data.observations, torch.cat([parts["medium"].observations, parts["expert"].observations]))
    assert torch.equal(data.actions, torch.cat([parts["medium"].actions, parts["expert"].actions]))
    assert data.num_episodes == parts["medium"].num_episodes + parts["expert"].num_episodes

    damaged = tmp_path / "mix" / "pendulum" / "medium-expert-v0" / "data"   # present but unreadable: reported
    damaged.mkdir(parents=True)
    (damaged / "metadata.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        load_offline_data(cfg.dataset)


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_env, algo, message", [
    ("cartpole", "iql", "algo=iql needs a continuous (Box) action space, but dataset rltrain-test/cartpole"),
    ("cartpole", "td3bc", "needs a continuous (Box) action space"),
    ("pendulum", "discrete_cql", "algo=discrete_cql needs a discrete action space, but dataset rltrain-test"),
    ("pendulum", "discrete_iql", "needs a discrete action space"),
])
def test_data_that_does_not_fit_the_objective_fails_before_training(tmp_path, tiny_datasets, data_env, algo,
                                                                     message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_trainer(offline(tiny_datasets[data_env], f"algo={algo}"), tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["algo=bc"], "algo=bc learns from a dataset: add dataset="),
    (["dataset=minari"], "dataset=minari needs the dataset's id"),
    (["dataset=d4rl/hopper", "dataset.download=false"],
     "Create it locally with: python -m rltrain.make_dataset env=hopper quality=medium "
     "dataset_id=mujoco/hopper/medium-v0"),
    (["dataset=minari", "dataset.id=no-version", "dataset.download=false"], "malformed Minari dataset id"),
])
def test_bad_dataset_choices_fail_with_the_fix(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    with pytest.raises(ConfigError, match=message):
        build_trainer(compose_config(*overrides, "algo=iql" if "algo=bc" not in overrides else "env=pendulum",
                                     *TINY), tmp_path)


def test_an_eval_env_that_does_not_fit_the_data_is_refused(tmp_path, tiny_datasets):
    with pytest.raises(ConfigError, match="does not fit its eval env 'CartPole-v1'"):
        build_trainer(offline(tiny_datasets["pendulum"], "algo=iql", "dataset.eval_env=CartPole-v1"), tmp_path)


# ---- the offline Trainer ---------------------------------------------------------------------------

def test_offline_run_reports_normalized_scores_and_keeps_the_dataset_intact(tmp_path, tiny_datasets,
                                                                           minari_session_root):
    before = file_hashes(minari_session_root / "rltrain-test" / "pendulum")
    trainer = build_trainer(offline(tiny_datasets["pendulum"], "algo=iql"), tmp_path)
    summary = trainer.fit()
    assert trainer.updates == 20 and trainer.env_steps == 0 and summary["mode"] == "dataset"
    ret = trainer.last_eval["return_mean"]
    assert trainer.last_eval["normalized_score"] == pytest.approx(100 * (ret + 1200.0) / (-150.0 + 1200.0))
    assert summary["final_normalized_score"] == trainer.last_eval["normalized_score"]
    assert (summary["ref_min_score"], summary["ref_max_score"]) == (-1200.0, -150.0)
    assert json.loads((tmp_path / "summary.json").read_text())["best_normalized_score"] is not None
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert len(rows) == 3 and "normalized_score" in rows[0]
    assert file_hashes(minari_session_root / "rltrain-test" / "pendulum") == before


def test_normalizer_is_stored_applied_at_evaluation_and_restored(tmp_path, tiny_datasets):
    trainer = build_trainer(offline(tiny_datasets["pendulum"], "algo=td3bc"), tmp_path)
    data = to_offline_data(load_minari(tiny_datasets["pendulum"], download=False))
    raw = data.observations[data.obs_index]
    assert torch.allclose(trainer.normalizer.mean, raw.mean(0), atol=1e-5)
    batch = trainer.source.sampler.sample(64)
    assert batch["observation"].mean(0).abs().max() < 0.5  # the sampler serves normalized observations
    trainer.fit()
    saved = load(trainer.checkpoint_path)["normalizer"]
    assert torch.equal(saved["mean"], trainer.normalizer.mean) and torch.equal(saved["std"], trainer.normalizer.std)

    resumed = build_trainer(offline(tiny_datasets["pendulum"], "algo=td3bc"), tmp_path / "other")
    with torch.no_grad():
        resumed.normalizer.mean.add_(3.0)
    resumed.load_state_dict(load(trainer.checkpoint_path))
    assert torch.equal(resumed.normalizer.mean, trainer.normalizer.mean)
    obs = torch.randn(4, 3)
    assert torch.equal(resumed.eval_policy(obs), trainer.eval_policy(obs))


def test_normalization_and_reward_transform_are_switches(tmp_path, tiny_datasets):
    plain = build_trainer(offline(tiny_datasets["pendulum"], "algo=iql", "dataset.normalize_observations=false",
                                  "dataset.reward_transform=none"), tmp_path)
    scaled = build_trainer(offline(tiny_datasets["pendulum"], "algo=iql"), tmp_path / "scaled")  # return_range
    data = to_offline_data(load_minari(tiny_datasets["pendulum"], download=False))
    assert torch.equal(plain.normalizer.mean, torch.zeros(3)) and torch.equal(plain.normalizer.std, torch.ones(3))
    returns = data.episode_returns
    factor = 1000.0 / float(returns.max() - returns.min())
    assert torch.allclose(scaled.source.sampler._rewards.squeeze(-1), data.rewards * factor, rtol=1e-5)
    assert torch.equal(plain.source.sampler._rewards.squeeze(-1), data.rewards)


def test_cql_bc_warmup_window_trains_loss_actor_bc_first(tmp_path, tiny_datasets):
    trainer = build_trainer(offline(tiny_datasets["pendulum"], "algo=cql", "algo.bc_warmup_updates=2",
                                    "algo.loss.num_random=2"), tmp_path)
    seen = []
    for _ in range(4):
        trainer.update()
        seen.append(("loss_actor_bc" in trainer._last_losses.keys(), "loss_actor" in trainer._last_losses.keys()))
    assert seen == [(True, False), (True, False), (False, True), (False, True)]


def test_iql_actor_learning_rate_follows_a_cosine_over_the_run(tmp_path, tiny_datasets):
    trainer = build_trainer(offline(tiny_datasets["pendulum"], "algo=iql"), tmp_path)
    groups = {g.name: g for g in trainer.groups}
    for _ in range(5):
        trainer.update()
    lr = groups["actor"].optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(3e-4 * 0.5 * (1 + np.cos(np.pi * 5 / 20)))
    assert groups["qvalue"].optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    state = trainer.state_dict()
    assert state["schedulers"]["actor"]["last_epoch"] == 5 and "qvalue" not in state["schedulers"]


# ---- the dataset factory ---------------------------------------------------------------------------

def factory(*overrides: str):
    return compose_config(*overrides, name="make_dataset")


def test_random_dataset_is_written_reproducibly_with_reference_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    args = ["env=cartpole", "steps=300", "ref_episodes=3", "ref_max_score=500", "seed=3"]
    first = make_dataset(factory(*args))
    again = make_dataset(factory(*args, "dataset_id=rltrain/cartpole/random-again-v0"))
    meta = first.storage.metadata
    assert meta["dataset_id"] == "rltrain/cartpole/random-v0" and meta["ref_max_score"] == 500.0
    assert meta["ref_min_score"] < 60 and first.total_steps >= 300
    a, b = to_offline_data(first), to_offline_data(again)
    assert torch.equal(a.observations, b.observations) and torch.equal(a.actions, b.actions)
    assert first.recover_environment(eval_env=True).spec.id == "CartPole-v1"


@pytest.mark.parametrize("overrides, message", [
    (["quality=medium"], "quality=medium collects with an rltrain run's policies: pass source_run="),
    (["quality=great"], "unknown quality 'great'; accepted: random, medium, expert, medium-replay, medium-expert"),
    (["dataset_id=nope"], "malformed Minari dataset id"),
    (["medium_fraction=1.5"], "medium_fraction must lie in (0, 1)"),
    (["quality=expert", "source_run=/nonexistent"], "is not an rltrain run with policies"),
])
def test_factory_bad_input_fails_before_any_rollout(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_dataset(factory("env=cartpole", *overrides))
    assert not any(tmp_path.iterdir())


def test_factory_refuses_to_overwrite_an_existing_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    make_dataset(factory("env=cartpole", "steps=50", "ref_episodes=1"))
    with pytest.raises(ConfigError, match="already exists"):
        make_dataset(factory("env=cartpole", "steps=50", "ref_episodes=1"))


@pytest.mark.slow
def test_every_quality_from_a_real_source_run(tmp_path, monkeypatch, capsys):
    """A short SAC run with policy snapshots feeds expert, medium, medium-replay and medium-expert data."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    run_cli([*SMALL_NETS, "trainer.total_env_steps=1200", "trainer.warmup_steps=200", "trainer.learning_starts=200",
             "trainer.eval_every=300", "trainer.eval_episodes=2", "env.eval_num_envs=2", "logger.progress=false",
             "trainer.policy_snapshots=true", "trainer.batch_size=64"], tmp_path / "runs")
    source = only_run_dir(tmp_path / "runs")
    common = ["env=pendulum", f"source_run={source}", "steps=400", "ref_episodes=2"]
    made = {q: make_dataset(factory(*common, f"quality={q}")) for q in ("expert", "medium", "medium-replay",
                                                                         "medium-expert")}
    snapshots = {p.name: load(p) for p in sorted((source / "checkpoints").glob("policy_*.pt"))}
    assert len(snapshots) == 4
    meta = made["medium"].storage.metadata
    target = meta["ref_min_score"] + 0.5 * (meta["ref_max_score"] - meta["ref_min_score"])
    nearest = min(snapshots, key=lambda name: abs(snapshots[name]["eval"]["return_mean"] - target))
    assert nearest in meta["description"]
    assert made["expert"].storage.metadata["ref_max_score"] == meta["ref_max_score"]
    assert made["medium-expert"].total_steps == made["medium"].total_steps + made["expert"].total_steps

    replay = to_offline_data(made["medium-replay"])
    rows = snapshots[nearest]["buffer_size"]
    stored = ReplayBuffer.from_state_dict(load(source / "checkpoints" / "last.pt")["source"]["buffer"])
    stored = stored.transitions_in_order()[:rows]
    assert len(replay) == rows
    assert torch.equal(replay.observations[replay.obs_index], stored["observation"])
    assert torch.equal(replay.observations[replay.obs_index + 1], stored["next", "observation"])
    assert torch.equal(replay.actions, stored["action"])
    assert torch.equal(replay.terminated, stored["next", "terminated"].squeeze(-1))
    chosen = snapshots[nearest]["eval"]["return_mean"]
    assert f"{nearest} scored {chosen:.1f}" in capsys.readouterr().out  # the choice against its target, said

    # A run stopped before its first checkpoint is a source too: its last snapshot is the final policy.
    (source / "checkpoints" / "last.pt").unlink()
    medium = make_dataset(factory(*common, "quality=medium", "dataset_id=rltrain/pendulum/medium-v1"))
    assert medium.total_steps >= 400 and "policy_" in medium.storage.metadata["description"]
    with pytest.raises(ConfigError, match="pick quality=medium instead"):
        make_dataset(factory(*common, "quality=medium-replay", "dataset_id=rltrain/pendulum/medium-replay-v1"))


def test_replay_rows_split_into_episodes_at_done_and_at_the_cut():
    done = np.array([False, True, False, False])
    data = {("observation",): np.arange(4.0)[:, None], ("next", "observation"): np.arange(1.0, 5.0)[:, None],
            ("action",): np.zeros((4, 1)), ("next", "reward"): np.ones((4, 1)),
            ("next", "terminated"): np.array([False, True, False, False])[:, None],
            ("next", "truncated"): np.zeros((4, 1), dtype=bool), ("next", "done"): done[:, None]}
    first, second = split_into_episodes(data)
    assert first["observations"].ravel().tolist() == [0.0, 1.0, 2.0]
    assert first["terminations"].tolist() == [False, True] and not first["truncations"].any()
    assert second["observations"].ravel().tolist() == [2.0, 3.0, 4.0]
    assert second["truncations"].tolist() == [False, True]  # cut where the data stops: still bootstraps
