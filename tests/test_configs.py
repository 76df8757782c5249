"""Every shipped config composes and builds a Trainer on the real environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import rltrain.__main__  # noqa: F401  (registers the resolvers the configs use)
from rltrain.build import build_trainer
from rltrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ENVS = sorted(p.stem for p in (CONFIGS / "env").glob("*.yaml"))
ALGOS = sorted(p.stem for p in (CONFIGS / "algo").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if not p.stem.startswith("benchmark_"))
GRIDS = sorted(p.stem for p in (CONFIGS / "experiment").glob("benchmark_*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIGS / "logger").glob("*.yaml"))
DISCRETE_ENVS = {"cartpole", "acrobot", "mountaincar", "lunarlander", "atari", "minatar"}
PIXEL_SMALL = ["trainer.buffer_size=1000"]  # not the Atari presets' 1M frames
ENV_ID_PREFIXES = {"atari": "ale/", "minatar": "minatar/"}  # experiment <algo>_<env> -> env.id's start
DISCRETE_ALGOS = {"dqn", "c51", "discrete_iql", "discrete_cql"}
OFFLINE_ALGOS = {"cal_ql", "iql", "cql", "td3bc", "bc", "discrete_iql", "discrete_cql", "dt", "online_dt",
                 "diffusion_bc", "act"}
IMITATION_ALGOS = {"gail", "gail_sac"}      # demonstrations + online (on-policy) training in their env
DATA_AND_ENV_ALGOS = {"rlpd"}               # online from the first step, half of each batch from a dataset
ON_POLICY_ALGOS = {"ppo", "gail"}
DATASETS = sorted(str(p.relative_to(CONFIGS / "dataset").with_suffix("")) for p in (CONFIGS / "dataset").rglob("*.yaml"))
SMALL = ["device=cpu", "logger.progress=false", "trainer.eval_episodes=1", "network.critic.num_cells=[16,16]",
         "network.actor.num_cells=[16,16]"]


def compose_config(*overrides: str):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def build(tmp_path, *overrides: str):
    trainer = build_trainer(compose_config(*overrides, *SMALL), tmp_path)
    advances = {"replay": 3, "rollout": 1}.get(trainer.source.kind, 0)
    for _ in range(advances):
        trainer.source.advance(0, lambda before, after: False)
    return trainer


def test_the_required_configs_exist():
    assert {"pendulum", "halfcheetah", "hopper", "walker2d", "ant", "cartpole", "acrobot", "mountaincar"} <= set(ENVS)
    assert {"sac", "td3", "ddpg", "redq", "crossq", "dqn", "c51"} <= set(ALGOS)


@pytest.mark.parametrize("env", ENVS)
def test_env_config_builds_and_collects(env, tmp_path):
    algo = "dqn" if env in DISCRETE_ENVS else "sac"
    trainer = build(tmp_path, f"env={env}", f"algo={algo}", *PIXEL_SMALL)
    obs_shape = trainer.source.collector.envs.single_observation_space.shape
    assert trainer.source.buffer.sample(2)["observation"].shape == (2, *obs_shape)


@pytest.mark.parametrize("algo", ALGOS)
def test_algo_config_builds_and_updates(algo, tmp_path, request):
    env = "cartpole" if algo in DISCRETE_ALGOS else "pendulum"
    source = [f"env={env}"]
    if algo in OFFLINE_ALGOS | IMITATION_ALGOS | DATA_AND_ENV_ALGOS:
        source = ["dataset=minari", f"dataset.id={request.getfixturevalue('tiny_datasets')[env]}"]
    if algo in ON_POLICY_ALGOS:
        source.append("algo.steps_per_env=8")
    trainer = build(tmp_path, f"algo={algo}", *source, "trainer.batch_size=3")
    expected = "rollout" if algo in ON_POLICY_ALGOS else "finetune" if algo == "online_dt" else \
        "dataset" if algo in OFFLINE_ALGOS else "offline_to_online" if algo in DATA_AND_ENV_ALGOS else "replay"
    assert trainer.source.kind == expected
    trainer.update()
    assert trainer.updates == 1
    assert {g.name for g in trainer.groups} == set(trainer.objective.parameter_groups)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_presets_build(experiment, tmp_path):
    cfg = compose_config(f"experiment={experiment}")
    algo, env = experiment.split("_", 1)
    assert cfg.algo.name == algo and cfg.env.id.lower().startswith(ENV_ID_PREFIXES.get(env, env[:4]))
    build(tmp_path, f"experiment={experiment}", *PIXEL_SMALL)


@pytest.mark.parametrize("overrides, message", [
    (["algo=dqn", "env=pendulum"], "needs a discrete action space"),
    (["algo=td3", "env=cartpole"], "needs a continuous (Box) action space"),
    (["algo=redq", "algo.loss.sub_sample_len=10"], "sub_sample_len"),
    (["algo=dqn", "env=cartpole", "algo.loss.double_dqn=true", "algo.loss.delay_value=false"], "double_dqn"),
    (["algo=c51", "env=cartpole", "algo.support.vmin=5", "algo.support.vmax=5"], "vmin < vmax"),
    (["algo=td3", "algo.exploration.type=egreedy"], "needs a discrete action space"),
    (["algo=dt"], "learns from a dataset"),
    (["algo=gail"], "imitates demonstrations"),
    (["algo=ppo", "env=cartpole", "algo.steps_per_env=8", "trainer.batch_size=64"], "minibatch_size 64 exceeds"),
    (["algo=redq", "trainer.updates_per_step=0.5"], "algo.optim.actor.every must be a whole number"),
    (["algo=td3", "algo.optim.actor.every=0"], "algo.optim.actor.every must be a whole number"),
    (["algo=sac", "env=minatar"], "algo=sac takes flat observation vectors, but MinAtar/Breakout-v1 observes images "
                                  "of shape .4, 10, 10.; the algorithms that take images are algo=dqn, algo=c51"),
    (["experiment=dqn_atari", "trainer.buffer_size=8"], "trainer.buffer_size=8 cannot serve env.atari.frame_stack=4"),
    (["experiment=dqn_minatar", "algo.n_step=0"], "algo.n_step must be a whole number of steps >= 1"),
    (["experiment=dqn_minatar", "network.encoder=nature"], "network.encoder=nature needs images of at least 36x36"),
    (["algo=dqn", "env=cartpole", "network.encoder=minatar"], "network.encoder=minatar is a convolutional encoder"),
])
def test_mismatched_or_invalid_algorithm_settings_fail_clearly(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_trainer(compose_config(*overrides, *SMALL), tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (["algo=dt", "algo.context_len=500"], "longer than every episode"),
    (["algo=online_dt", "algo.context_len=500"], "longer than every episode"),
    (["algo=act", "algo.chunk_size=500"], "longer than every episode"),
    (["algo=dt", "algo.sequence=null"], "return_to_go, timestep, pad_mask"),
    (["algo=act", "algo.sequence=trajectory"], "action_is_pad"),
    (["algo=diffusion_bc", "cartpole"], "needs a continuous (Box) action space"),
    (["algo=act", "cartpole"], "needs a continuous (Box) action space"),
    (["algo=dt", "cartpole"], "needs a continuous (Box) action space"),
])
def test_sequence_and_generative_input_errors_name_the_fix(overrides, message, tmp_path, tiny_datasets):
    *settings, env = overrides if overrides[-1] == "cartpole" else [*overrides, "pendulum"]
    data = ["dataset=minari", f"dataset.id={tiny_datasets[env]}"]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_trainer(compose_config(*settings, *data, *SMALL), tmp_path)


@pytest.mark.parametrize("logger", LOGGERS)
def test_logger_configs_compose(logger):
    assert compose_config(f"logger={logger}").logger.backends is not None


def test_sac_v1_config_builds(tmp_path):
    trainer = build(tmp_path, "algo.value_network=true")
    assert [g.name for g in trainer.groups] == ["actor", "qvalue", "alpha", "value"]


def test_redq_steps_actor_and_temperature_once_per_env_step(tmp_path):
    trainer = build(tmp_path, "algo=redq", "trainer.updates_per_step=4", "trainer.batch_size=3")
    assert {g.name: g.every for g in trainer.groups} == {"actor": 4, "qvalue": 1, "alpha": 4}
    trainer.update()
    assert set(trainer._last_losses.keys()) >= {"loss_qvalue"} and "loss_actor" not in trainer._last_losses.keys()
    for _ in range(3):
        trainer.update()
    assert {"loss_actor", "loss_alpha"} <= set(trainer._last_losses.keys())


def test_groups_step_only_when_due(tmp_path):
    trainer = build(tmp_path, "algo=td3", "algo.optim.qvalue.every=2", "algo.optim.actor.every=4",
                    "trainer.batch_size=3")
    before = [p.clone() for p in trainer.objective.parameters()]
    trainer.update()  # update 1: no group due, nothing computed or stepped
    assert trainer.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.objective.parameters()))
    trainer.update()  # update 2: the critic only, without the actor term
    assert "loss_actor" not in trainer._last_losses.keys()
    actor = trainer.objective.group_parameters("actor")
    assert all(p.grad is None for p in actor)
