"""Learning checks: real training through ``python -m rltrain``, asserting the returns reached."""

from __future__ import annotations

import json

import pytest

from tests.helpers import only_run_dir, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1])
def test_sac_learns_pendulum_within_15k_steps(tmp_path, seed):
    run_cli([f"seed={seed}", "network.actor.num_cells=[64,64]", "network.critic.num_cells=[64,64]",
             "trainer.total_env_steps=15000", "trainer.eval_every=5000", "trainer.eval_episodes=10",
             "logger.progress=false"], tmp_path, timeout=900)
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["env_steps"] == 15000
    assert summary["final_eval_return"] >= -250, summary
