"""End to end through ``python -m rltrain``: run directory, determinism, exact resume after SIGKILL,
and bad input stopped before training with a clear message."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import SMALL_NETS, only_run_dir, run_cli

pytestmark = pytest.mark.slow

SHORT = [*SMALL_NETS, "trainer.total_env_steps=1200", "trainer.warmup_steps=200", "trainer.learning_starts=200",
         "trainer.batch_size=64", "trainer.eval_every=600", "trainer.eval_episodes=2", "trainer.log_every=200",
         "trainer.checkpoint_every=600", "logger.progress=false", "env.eval_num_envs=2"]
TIME_COLUMNS = {"time", "updates_per_s", "env_steps_per_s"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def test_default_job_writes_the_run_directory(tmp_path):
    proc = run_cli(SHORT, tmp_path)
    run_dir = only_run_dir(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:2] == ("sac", "Pendulum-v1")
    for name in ("config.yaml", "overrides.yaml", "git_commit.txt", "metrics.csv", "eval.csv", "summary.json",
                 "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1200 and summary["updates"] == 1000
    assert "rltrain finished: final eval return" in proc.stdout and str(run_dir) in proc.stdout
    evals = read_rows(run_dir / "eval.csv")
    assert [int(r["env_step"]) for r in evals] == [600, 1200]
    train = read_rows(run_dir / "metrics.csv")
    assert {"loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy", "episode_return"} <= set(train[-1])
    assert float(train[-1]["loss_qvalue"]) >= 0


def test_same_seed_same_metrics(tmp_path):
    run_cli([*SHORT, "seed=3"], tmp_path / "a")
    run_cli([*SHORT, "seed=3"], tmp_path / "b")
    a, b = only_run_dir(tmp_path / "a"), only_run_dir(tmp_path / "b")
    assert read_rows(a / "metrics.csv") == read_rows(b / "metrics.csv")
    assert read_rows(a / "eval.csv") == read_rows(b / "eval.csv")
    run_cli([*SHORT, "seed=4"], tmp_path / "c")
    assert read_rows(only_run_dir(tmp_path / "c") / "eval.csv") != read_rows(a / "eval.csv")


TINY_DT = ["algo.model={embed_dim:16,n_layer:1,n_head:1,inner_dim:32,dropout:0.1}", "algo.context_len=5",
           "algo.max_ep_len=200", "trainer.batch_size=16"]


@pytest.mark.parametrize("algo, counter", [
    ([], "env_steps"),  # SAC on Pendulum: soft targets, stochastic policy
    (["algo=dqn", "env=cartpole", "hparams=none", "algo.updater.value_network_update_interval=50",
      "algo.exploration.annealing_steps=2000"], "env_steps"),  # hard-update counter, epsilon-greedy, discrete env
    (["algo=iql", "dataset=minari", "dataset.id=rltrain-test/pendulum/tiny-v0",  # offline: dataset sampler,
      "trainer.total_updates=3000"], "updates"),                                 # normalizer, cosine lr
    (["algo=ppo", "env=cartpole", "algo.steps_per_env=250"], "env_steps"),  # rollouts, GAE, linear lr decay
    (["experiment=dqn_minatar", "algo.n_step=3", "algo.updater.value_network_update_interval=200",  # uint8 frames,
      "algo.exploration.annealing_steps=2000", "trainer.buffer_size=2000"], "env_steps"),  # CNN, storage-once replay
    (["algo=gail", "dataset=minari", "dataset.id=rltrain-test/cartpole/tiny-v0",  # + the discriminator and
      "algo.steps_per_env=250"], "env_steps"),                                     # its optimizer
    (["algo=online_dt", "dataset=minari", "dataset.id=rltrain-test/pendulum/tiny-v0", *TINY_DT,  # trajectory
      "algo.pretrain_updates=500", "algo.updates_per_episode=400", "trainer.total_updates=1500"], "updates"),
    (["algo=iql", "dataset=minari", "dataset.id=rltrain-test/pendulum/tiny-v0", "source=offline_to_online",
      "source.offline_updates=1500", "source.online_env_steps=1500"], "position"),  # killed offline, resumed
], ids=["sac", "dqn", "iql-offline", "ppo", "dqn-minatar", "gail", "online_dt", "offline-to-online"])          # across the switch
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, algo, counter, tiny_datasets):
    """Online DT's episodes (buffer, env seeds, sampling noise), warm-up schedule and alpha resume too."""
    args = [*SHORT, *algo, "trainer.total_env_steps=3000", "trainer.checkpoint_every=1000",
            "trainer.eval_every=1000", "trainer.warmup_steps=200", "trainer.learning_starts=200", "seed=7"]
    run_cli(args, tmp_path / "whole")
    whole = only_run_dir(tmp_path / "whole")

    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "rltrain", *args, f"run_root={tmp_path / 'cut'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "cut").rglob("checkpoints/last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.05)
    assert checkpoint is not None and proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = torch.load(checkpoint, weights_only=False)["counters"][counter]
    assert steps_at_kill < 3000

    cut = checkpoint.parent.parent
    run_cli([f"resume={cut}", f"run_root={tmp_path / 'ignored'}"], tmp_path / "cut")
    assert read_rows(cut / "eval.csv") == read_rows(whole / "eval.csv")
    assert read_rows(cut / "metrics.csv") == read_rows(whole / "metrics.csv")
    assert json.loads((cut / "summary.json").read_text())["final_eval_return"] == \
        json.loads((whole / "summary.json").read_text())["final_eval_return"]


def test_a_checkpoint_of_the_previous_format_is_refused_with_its_version(tmp_path):
    run_cli(SHORT, tmp_path)
    run_dir = only_run_dir(tmp_path)
    path = run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    del state["format"]  # as written before run modes became sources
    torch.save(state, path)
    proc = run_cli([f"resume={run_dir}", "trainer.total_env_steps=1800"], tmp_path, check=False)
    assert proc.returncode == 2 and "checkpoint has format 1" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_can_extend_a_finished_run(tmp_path):
    run_cli(SHORT, tmp_path)
    run_dir = only_run_dir(tmp_path)
    run_cli([f"resume={run_dir}", "trainer.total_env_steps=1800"], tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 1800
    bad = run_cli([f"resume={run_dir}", "algo=sac"], tmp_path, check=False)
    assert bad.returncode == 2 and "only existing leaf values may change" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["algo=nope"], "Could not find 'algo/nope'"),
    (["env=nope"], "Could not find 'env/nope'"),
    (["logger=nope"], "Could not find 'logger/nope'"),
    (["trainer.total_env_stepz=5"], "total_env_stepz"),
    (["env.id=Pendulumm-v1"], "unknown gymnasium environment id 'Pendulumm-v1'. Did you mean: Pendulum-v1"),
    (["env.id=CartPole-v1"], "needs a continuous (Box) action space"),
    (["+algo.loss.alpha_inti=0.5"], "unknown key(s) ['alpha_inti']"),
    (["resume=/nonexistent/run"], "no checkpoint at /nonexistent/run/checkpoints/last.pt"),
])
def test_bad_input_stops_before_training_with_a_clear_message(tmp_path, args, message):
    proc = run_cli([*SHORT, *args], tmp_path, timeout=120, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("metrics.csv")), "training started despite bad input"


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    args = [*SHORT, "trainer.checkpoint_every=400", "trainer.learning_starts=500", "trainer.warmup_steps=500",
            "algo.optim.qvalue.lr=1e30"]
    proc = run_cli(args, tmp_path, check=False)
    assert proc.returncode == 1
    assert "rltrain: error: non-finite loss" in proc.stderr and "at update" in proc.stderr
    assert "Traceback" not in proc.stderr
    checkpoint = next(tmp_path.rglob("checkpoints/last.pt"))
    state = torch.load(checkpoint, weights_only=False)
    assert state["counters"]["env_steps"] == 400
    assert all(torch.isfinite(v).all() for v in state["objective"].values() if v.is_floating_point())
