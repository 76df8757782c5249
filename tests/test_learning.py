"""Learning checks: real training through ``python -m rltrain``, asserting the returns reached.

Budgets are CI-sized (small networks, short runs on a 2-core CPU). SAC must end at the threshold;
for the others the issue's criterion is that training *reaches* it: the best deterministic
evaluation (10 episodes, every few thousand env steps) within the budget. CartPole agents are known
to oscillate once they solve the task, so a final-only check would test luck, not learning.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import LEARNING_NETS as SMALL
from tests.helpers import only_run_dir, run_cli

pytestmark = pytest.mark.slow

PENDULUM = -250.0
CARTPOLE = 475.0

CASES = {
    "td3": ["algo=td3", "hparams=none", *SMALL, "trainer.total_env_steps=15000", "trainer.eval_every=2500"],
    "ddpg": ["algo=ddpg", "hparams=none", *SMALL, "trainer.total_env_steps=15000", "trainer.eval_every=2500"],
    "redq": ["algo=redq", *SMALL, "trainer.updates_per_step=5", "trainer.total_env_steps=3000",
             "trainer.eval_every=500"],
    "crossq": ["algo=crossq", *SMALL, "trainer.total_env_steps=10000", "trainer.eval_every=2500"],
    "c51": ["experiment=c51_cartpole", "logger.progress=false", "trainer.total_env_steps=40000",
            "trainer.eval_every=5000"],
}
THRESHOLDS = {"td3": PENDULUM, "ddpg": PENDULUM, "redq": PENDULUM, "crossq": PENDULUM, "dqn": CARTPOLE,
              "c51": CARTPOLE}


def eval_returns(run_dir) -> list[float]:
    with (run_dir / "eval.csv").open(newline="") as f:
        return [float(row["return_mean"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("seed", [0, 1])
def test_sac_learns_pendulum_within_15k_steps(learning_run, seed):
    summary = json.loads((learning_run("sac_pendulum", seed) / "summary.json").read_text())
    assert summary["env_steps"] == 15000
    assert summary["final_eval_return"] >= PENDULUM, summary


@pytest.mark.parametrize("seed", [0, 1])
def test_dqn_reaches_cartpole_threshold(learning_run, seed):
    returns = eval_returns(learning_run("dqn_cartpole", seed))
    assert max(returns) >= CARTPOLE, f"dqn seed {seed}: evaluation returns {returns}"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("algo", list(CASES))
def test_algorithm_reaches_its_threshold(tmp_path, algo, seed):
    run_cli([*CASES[algo], f"seed={seed}"], tmp_path, timeout=900)
    returns = eval_returns(only_run_dir(tmp_path))
    assert max(returns) >= THRESHOLDS[algo], f"{algo} seed {seed}: evaluation returns {returns}"
