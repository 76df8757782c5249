"""Optuna hyperparameter search end to end (``hparams_search=sac_pendulum`` on a tiny budget): every
trial trains each seed in its own run folder, the study maximizes the mean of the seeds' final
returns, a diverging trial is recorded as failed without stopping the search, and a SQLite study
keeps every trial."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import run_cli

with warnings.catch_warnings():   # optuna 2.x's models warn that they need SQLAlchemy < 2 (the optuna extra pins it)
    warnings.simplefilter("ignore", DeprecationWarning)
    import optuna

pytestmark = pytest.mark.slow

TINY = ["network.actor.num_cells=[16,16]", "network.critic.num_cells=[16,16]", "trainer.total_env_steps=300",
        "trainer.warmup_steps=100", "trainer.learning_starts=100", "trainer.eval_every=300",
        "trainer.eval_episodes=2", "env.eval_num_envs=2", "trainer.checkpoint_every=300", "trainer.log_every=100"]
SEARCHED = ["algo.optim.actor.lr", "algo.optim.qvalue.lr", "algo.updater.tau", "trainer.batch_size"]


def only_sweep(run_root: Path) -> Path:
    (sweep,) = (run_root / "sweeps" / "sac_pendulum_search").iterdir()   # one timestamped sweep folder
    return sweep


def trial_params(trial_dir: Path) -> dict:
    """The values Optuna sampled for a trial, from the trial's Hydra overrides."""
    overrides = dict(o.split("=", 1) for o in OmegaConf.load(trial_dir / ".hydra" / "overrides.yaml"))
    return {key: float(overrides[key]) for key in SEARCHED if key in overrides}


def final_return(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["final_eval_return"]


def test_each_trial_scores_the_mean_final_return_over_its_seeds(tmp_path):
    run_cli(["-m", "hparams_search=sac_pendulum", "hydra.sweeper.n_trials=2", "seeds=[0,1]", *TINY], tmp_path,
            timeout=300)
    sweep = only_sweep(tmp_path)
    trials = sorted(sweep.glob("trial*"))
    assert [t.name for t in trials] == ["trial0", "trial1"]

    means, params = [], []
    for trial in trials:
        assert [p.name for p in sorted(trial.glob("seed=*"))] == ["seed=0", "seed=1"]
        params.append(trial_params(trial))
        assert set(params[-1]) == set(SEARCHED)
        for seed in (0, 1):
            config = OmegaConf.load(trial / f"seed={seed}" / "config.yaml")
            assert config.seed == seed and config.seeds is None
            assert {key: OmegaConf.select(config, key) for key in SEARCHED} == pytest.approx(params[-1])
        means.append((final_return(trial / "seed=0") + final_return(trial / "seed=1")) / 2)
    assert params[0] != params[1], "the sampler proposes a new point per trial"

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    best = max(range(len(trials)), key=means.__getitem__)
    assert results.best_value == pytest.approx(means[best])
    assert dict(results.best_params) == pytest.approx(params[best])


def test_a_diverging_trial_fails_alone_and_sqlite_keeps_the_study(tmp_path):
    """The search's config sets multirun mode itself (no -m), and the storage folder is created. With
    sampler seed 1 the three trials draw the diverging learning rate, then the sound one, then the
    diverging one again."""
    storage = f"sqlite:///{tmp_path}/db/optuna.db"
    run_cli(["hparams_search=sac_pendulum", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=1", "seeds=[0]",
             *TINY, "algo.optim.qvalue.lr=choice(1e30,1e-3)", f"hydra.sweeper.storage={storage}"], tmp_path,
            timeout=300)
    study = optuna.load_study(study_name="sac_pendulum_search", storage=storage)
    trial_dirs = sorted(only_sweep(tmp_path).glob("trial*"))
    assert len(study.trials) == len(trial_dirs) == 3
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE,
                                               optuna.trial.TrialState.FAIL]
    for trial in study.trials:
        seed_run = trial_dirs[trial.number] / "seed=0"
        if trial.state == optuna.trial.TrialState.FAIL:
            assert trial.params["algo.optim.qvalue.lr"] == 1e30 and not (seed_run / "summary.json").exists()
        else:
            assert trial.params["algo.optim.qvalue.lr"] == 1e-3 and trial.value == pytest.approx(final_return(seed_run))
    results = OmegaConf.load(only_sweep(tmp_path) / "optimization_results.yaml")
    assert results.best_value == pytest.approx(study.trials[1].value)


def test_seeds_must_be_a_list_of_distinct_seeds(tmp_path):
    proc = run_cli(["seeds=[0,0]", *TINY], tmp_path, check=False)
    assert proc.returncode == 2 and "distinct seeds" in proc.stderr
