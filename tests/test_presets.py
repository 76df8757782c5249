"""Tuned presets (configs/hparams/<algo>_<env>.yaml) apply by default for their pair, under the user's
overrides; ``hparams=none`` gives the generic defaults; the run says which it used and records it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import rltrain.__main__  # noqa: F401  (registers the resolvers the configs use)
from rltrain import presets
from tests.helpers import SMALL_NETS, only_run_dir, run_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "hparams").glob("*.yaml"))
TINY_RUN = [*SMALL_NETS, "trainer.total_env_steps=300", "trainer.warmup_steps=100", "trainer.learning_starts=100",
            "trainer.eval_every=300", "trainer.eval_episodes=1", "env.eval_num_envs=1", "trainer.checkpoint_every=300",
            "trainer.log_every=100", "trainer.buffer_size=1000", "logger.progress=false", "torch_threads=1"]


def compose_config(*overrides: str):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def leaves(cfg, prefix: str = "") -> dict[str, object]:
    """Every leaf of a config as ``dotted.key -> value``."""
    out = {}
    for key, value in cfg.items():
        if OmegaConf.is_dict(value):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = OmegaConf.to_object(value) if OmegaConf.is_list(value) else value
    return out


def run_configs(root: Path) -> list[Path]:
    """The config.yaml of each run directory under ``root`` (not Hydra's own copies)."""
    return [p for p in root.rglob("config.yaml") if not p.parent.name.startswith(".hydra")]


def preset_values(name: str) -> dict[str, object]:
    return leaves(OmegaConf.load(CONFIGS / "hparams" / f"{name}.yaml"))


def generic_defaults(algo: str, env: str) -> OmegaConf:
    """The groups' own values in the defaults list's order (trainer, network, algo, env), no preset."""
    return OmegaConf.merge({"trainer": OmegaConf.load(CONFIGS / "trainer" / "default.yaml")},
                           {"network": OmegaConf.load(CONFIGS / "network" / "mlp.yaml")},
                           OmegaConf.load(CONFIGS / "algo" / f"{algo}.yaml"), OmegaConf.load(CONFIGS / "env" / f"{env}.yaml"))


def test_the_shipped_presets_cover_classic_control_mujoco_atari_and_minatar():
    assert presets.available() == PRESETS
    assert {"dqn_cartpole", "c51_cartpole", "sac_pendulum", "td3_pendulum", "ddpg_pendulum", "sac_hopper",
            "td3_walker2d", "dqn_atari", "ppo_minatar"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_is_picked_for_its_pair_and_by_its_experiment(name):
    algo, env = name.split("_", 1)
    for cfg in (compose_config(f"algo={algo}", f"env={env}"), compose_config(f"experiment={name}")):
        assert cfg.preset == name and cfg.algo.name == algo
        composed = leaves(cfg)
        differing = {k: (v, composed[k]) for k, v in preset_values(name).items() if composed[k] != v}
        assert not differing, f"{name}: the preset's values lost to a group's: {differing}"


def test_a_preset_replaces_generic_values_and_hparams_none_restores_them():
    tuned = preset_values("dqn_cartpole")
    generic = leaves(generic_defaults("dqn", "cartpole"))
    changed = [k for k, v in tuned.items() if k != "preset" and generic[k] != v]
    assert {"algo.optim.value.lr", "trainer.batch_size", "trainer.train_every"} <= set(changed)
    off = compose_config("algo=dqn", "env=cartpole", "hparams=none")
    assert off.preset is None
    assert {k: leaves(off)[k] for k in changed} == {k: generic[k] for k in changed}


def test_command_line_overrides_beat_the_preset():
    cfg = compose_config("algo=dqn", "env=cartpole", "trainer.batch_size=48", "algo.optim.value.lr=0.01",
                         "network.critic.num_cells=[32,32]")
    assert cfg.preset == "dqn_cartpole"
    assert (cfg.trainer.batch_size, cfg.algo.optim.value.lr, list(cfg.network.critic.num_cells)) == (48, 0.01, [32, 32])
    assert cfg.trainer.train_every == preset_values("dqn_cartpole")["trainer.train_every"]   # the rest stays tuned


def test_turning_a_preset_off_is_announced_as_such():
    off = compose_config("algo=dqn", "env=cartpole", "hparams=none")
    line = presets.announce(off, {"algo": "dqn", "env": "cartpole", "hparams": "none"})
    assert line == ("rltrain: hyperparameters: dqn's paper defaults (configs/algo/dqn.yaml); hparams=none turned off "
                    "the tuned preset dqn_cartpole")


def test_another_pairs_preset_can_be_chosen():
    cfg = compose_config("algo=dqn", "env=acrobot", "hparams=dqn_cartpole")
    assert cfg.preset == "dqn_cartpole" and cfg.env.id == "Acrobot-v1"


@pytest.mark.slow
def test_a_sweep_applies_each_jobs_preset_under_its_overrides_and_says_so(tmp_path):
    """One job has a preset (dqn_acrobot), the other not (c51 on Acrobot): each prints what it used
    and its config.yaml records it; the sweep's override beats the preset in both."""
    proc = run_cli(["-m", "algo=dqn,c51", "env=acrobot", "trainer.batch_size=48", *TINY_RUN, "sweep_name=presets"],
                   tmp_path, timeout=300)
    assert "tuned preset dqn_acrobot (configs/hparams/dqn_acrobot.yaml)" in proc.stdout
    assert "c51's paper defaults (configs/algo/c51.yaml); no tuned preset for env=acrobot" in proc.stdout
    configs = {cfg.algo.name: cfg for cfg in map(OmegaConf.load, run_configs(tmp_path / "sweeps" / "presets"))}
    assert configs["dqn"].preset == "dqn_acrobot" and configs["c51"].preset is None
    assert configs["dqn"].trainer.batch_size == configs["c51"].trainer.batch_size == 48
    assert configs["dqn"].algo.optim.value.lr == preset_values("dqn_acrobot")["algo.optim.value.lr"]


def test_an_unknown_preset_is_refused_before_training(tmp_path):
    proc = run_cli(["algo=dqn", "env=cartpole", "hparams=dqn_cartpol"], tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hparams=dqn_cartpol" in proc.stderr and "Did you mean: dqn_cartpole" in proc.stderr
    assert not run_configs(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_dqn_solves_cartpole_with_no_override_but_the_pair(tmp_path, seed):
    """RL Zoo's DQN CartPole hyperparameters apply by themselves and reach 475 within their budget."""
    run_cli(["algo=dqn", "env=cartpole", f"seed={seed}", "logger.progress=false"], tmp_path, timeout=900)
    run_dir = only_run_dir(tmp_path)
    assert OmegaConf.load(run_dir / "config.yaml").preset == "dqn_cartpole"
    with (run_dir / "eval.csv").open(newline="") as f:
        returns = [float(row["return_mean"]) for row in csv.DictReader(f)]
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == preset_values("dqn_cartpole")[
        "trainer.total_env_steps"]
    assert max(returns) >= 475.0, f"seed {seed}: evaluation returns {returns}"
