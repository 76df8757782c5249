"""Every shipped config composes, and every env config builds a Trainer on the real environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import rltrain.__main__  # noqa: F401  (registers the resolvers the configs use)
from rltrain.build import build_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ENVS = sorted(p.stem for p in (CONFIGS / "env").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIGS / "logger").glob("*.yaml"))


def compose_config(*overrides: str):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return cfg


def test_the_required_env_configs_exist():
    assert {"pendulum", "halfcheetah", "hopper", "walker2d", "ant"} <= set(ENVS)


@pytest.mark.parametrize("env", ENVS)
def test_env_config_builds_a_trainer(env, tmp_path):
    cfg = compose_config(f"env={env}", "device=cpu", "logger.progress=false", "trainer.eval_episodes=1")
    trainer = build_trainer(cfg, tmp_path)
    obs_dim = trainer.collector.envs.single_observation_space.shape[0]
    assert trainer.objective.qvalue_network.weight_0.shape[1] == obs_dim + trainer.collector.envs.single_action_space.shape[0]
    batch = trainer.collector.step(random=True)
    assert batch["observation"].shape == (1, obs_dim)


@pytest.mark.parametrize("logger", LOGGERS)
def test_logger_configs_compose(logger):
    cfg = compose_config(f"logger={logger}")
    assert OmegaConf.select(cfg, "logger.backends") is not None


def test_sac_v1_config_builds(tmp_path):
    cfg = compose_config("algo.value_network=true", "device=cpu", "logger.progress=false")
    trainer = build_trainer(cfg, tmp_path)
    assert [g.name for g in trainer.groups] == ["actor", "qvalue", "alpha", "value"]
