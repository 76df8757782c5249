"""Hydra multirun end to end: the smoke benchmark grid (sweep -> runs -> table -> plot), W&B runs
grouped by sweep and named by overrides, and a failing job that does not stop the others."""

from __future__ import annotations

import csv
import json

import pytest
from omegaconf import OmegaConf

from rltrain.results import plot_curves, write_table
from tests.helpers import SMALL_NETS, run_cli

pytestmark = pytest.mark.slow

TINY = [*SMALL_NETS, "trainer.total_env_steps=600", "trainer.warmup_steps=200", "trainer.learning_starts=200",
        "trainer.batch_size=64", "trainer.eval_every=300", "trainer.eval_episodes=2", "env.eval_num_envs=2",
        "trainer.checkpoint_every=600", "trainer.log_every=200", "logger.progress=false"]


def job_dirs(sweep_root):
    return sorted(p.parent for p in sweep_root.rglob("config.yaml") if not p.parent.name.startswith(".hydra"))


def test_smoke_grid_runs_every_job_then_tables_and_plots_them(tmp_path):
    run_cli(["experiment=benchmark_smoke", "logger=wandb", "logger.wandb.mode=offline"], tmp_path, timeout=900)
    (sweep,) = (tmp_path / "sweeps" / "benchmark_smoke").iterdir()   # one timestamped sweep folder
    jobs = job_dirs(sweep)
    assert [p.name for p in jobs] == [f"algo={a},experiment=benchmark_smoke,logger.wandb.mode=offline,logger=wandb,"
                                      f"seed={s}" for a in ("sac", "td3") for s in (0, 1)]
    for job in jobs:
        assert (job / "metrics.csv").exists() and json.loads((job / "summary.json").read_text())["env_steps"] == 1000
        wandb_cfg = OmegaConf.load(job / "config.yaml").logger.wandb
        assert wandb_cfg.group == f"benchmark_smoke-{sweep.name}" and wandb_cfg.name == job.name
        assert list((job / "wandb").glob("offline-run-*")), "each job has its own (closed) W&B run"

    markdown, table = write_table(sweep, tmp_path / "tables")
    rows = {row["algo"]: row for row in csv.DictReader(table.open())}
    assert set(rows) == {"sac", "td3"} and all(r["task"] == "Pendulum-v1" and r["finished"] == "2" for r in rows.values())
    finals = [json.loads((job / "summary.json").read_text())["final_eval_return"] for job in jobs[:2]]
    assert float(rows["sac"]["final_mean"]) == pytest.approx(sum(finals) / 2)
    assert plot_curves(sweep, tmp_path / "curves.png").stat().st_size > 10_000


def test_a_failing_job_does_not_stop_the_others(tmp_path):
    """The diverging job (first) stops with its error; the next one still runs and finishes. Job folders
    are named by their overrides, or job number and hash when, as here, those are too long."""
    proc = run_cli(["-m", *TINY, "algo.optim.qvalue.lr=1e30,3e-4", "sweep_name=lr"], tmp_path, check=False, timeout=600)
    jobs = {OmegaConf.load(p / "config.yaml").algo.optim.qvalue.lr: p for p in job_dirs(tmp_path / "sweeps" / "lr")}
    assert set(jobs) == {1e30, 3e-4}
    assert jobs[1e30].name.startswith("job0-") and jobs[3e-4].name.startswith("job1-")
    assert not (jobs[1e30] / "summary.json").exists()
    assert json.loads((jobs[3e-4] / "summary.json").read_text())["env_steps"] == 600
    assert "non-finite loss" in proc.stderr and proc.returncode != 0


@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_launchers_write_one_run_folder_per_job(tmp_path, launcher):
    run_cli(["-m", f"hydra/launcher={launcher}", *TINY, "seed=0,1", "sweep_name=launch"], tmp_path, timeout=600)
    jobs = job_dirs(tmp_path / "sweeps" / "launch")
    assert sorted(OmegaConf.load(p / "config.yaml").seed for p in jobs) == [0, 1]
    for job in jobs:
        assert (job / "metrics.csv").exists() and (job / "eval.csv").exists()
        assert json.loads((job / "summary.json").read_text())["env_steps"] == 600
