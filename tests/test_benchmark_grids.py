"""The offline benchmark grid's jobs, as Hydra's basic sweeper expands them, composed (no training):
each (algo, dataset) cell runs with its CORL per-dataset preset."""

from __future__ import annotations

import importlib.resources
import os

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import rltrain.__main__  # noqa: F401  (registers the run-directory resolvers)

CORL_PRESETS = str(importlib.resources.files("rltrain.configs") / "experiment" / "corl")  # a checkout or a wheel
ALGOS, ENVS, QUALITIES = ("iql", "cql", "td3bc", "bc"), ("halfcheetah", "hopper", "walker2d"), ("medium", "medium_expert")


def grid_jobs(arguments: list[str]) -> list[list[str]]:
    """The override lists of the jobs ``python -m rltrain <arguments>`` launches: the sweeper's
    params, then the command line's arguments (which replace a param of the same key)."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    single = [arg for arg, override in zip(arguments, parser.parse_overrides(arguments)) if not override.is_sweep_override()]
    cfg = compose("config", overrides=single, return_hydra_config=True)  # the sweep's own config
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(params + arguments), max_batch_size=None)
    return batch


def preset_leaves(name: str) -> dict[str, object]:
    """``{"algo.updater.tau": 0.001, ...}``: every value a CORL preset file sets."""
    with open(os.path.join(CORL_PRESETS, f"{name}.yaml")) as f:
        preset = yaml.safe_load(f)
    preset.pop("defaults")
    leaves = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                leaves[f"{prefix}{key}"] = value
    walk(preset, "")
    return leaves


@pytest.fixture(scope="module")
def d4rl_grid():
    """{preset name: composed job config (seed 0)} and the grid's job override lists."""
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        jobs = grid_jobs(["experiment=benchmark_d4rl"])
        configs = {}
        for job in jobs:
            overrides = dict(o.split("=", 1) for o in job)
            if overrides["seed"] == "0":
                configs[overrides["experiment/corl"]] = compose("config", overrides=job)
    return jobs, configs


def test_d4rl_grid_is_every_algo_dataset_cell_times_three_seeds(d4rl_grid):
    jobs, configs = d4rl_grid
    assert set(configs) == {f"{a}_{e}_{q}" for a in ALGOS for e in ENVS for q in QUALITIES}
    assert sorted(sorted(job) for job in jobs) == sorted(
        sorted([f"experiment/corl={cell}", f"seed={seed}", "experiment=benchmark_d4rl"])
        for cell in configs for seed in (0, 1, 2))
    for cell, cfg in configs.items():
        algo, env, quality = cell.split("_", 2)
        assert cfg.algo.name == algo and cfg.dataset.id == f"mujoco/{env}/{quality.replace('_', '-')}-v0", cell
        assert cfg.sweep_name == "benchmark_d4rl" and cfg.trainer.checkpoint_every == 100_000


def test_each_d4rl_grid_cell_carries_its_corl_values(d4rl_grid):
    _, configs = d4rl_grid
    for cell, cfg in configs.items():
        for key, value in preset_leaves(cell).items():
            assert OmegaConf.select(cfg, key) == value, f"{cell}: {key}"
    hopper_medium = configs["iql_hopper_medium"]
    assert hopper_medium.algo.policy == "deterministic" and hopper_medium.algo.updater.tau == 0.001
    assert hopper_medium.dataset.reward_transform == "return_range"
    # CORL tunes per dataset: the same algo and env on medium-expert differ.
    hopper_medium_expert = configs["iql_hopper_medium_expert"]
    assert (hopper_medium_expert.algo.loss.temperature, hopper_medium_expert.algo.loss.expectile) == (6.0, 0.5)
    assert (hopper_medium.algo.loss.temperature, hopper_medium.algo.loss.expectile) == (3.0, 0.7)


def test_the_d4rl_grid_narrows_from_the_command_line():
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        jobs = grid_jobs(["experiment=benchmark_d4rl", "experiment/corl=iql_hopper_medium,cql_hopper_medium", "seed=0"])
    assert sorted(sorted(job) for job in jobs) == sorted(
        sorted([f"experiment/corl={algo}_hopper_medium", "seed=0", "experiment=benchmark_d4rl"]) for algo in ("iql", "cql"))
