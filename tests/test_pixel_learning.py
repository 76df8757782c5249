"""Learning from pixels: DQN and PPO on MinAtar Breakout through ``python -m rltrain``, each reaching
a mean evaluation return at least 4x a uniform-random policy's (measured here, on the same env).

"Reaching" is the best of the deterministic evaluations within the budget, as in test_learning.py.
The budgets are CI-sized: the MinAtar presets with a larger learning rate and a short exploration
schedule (DQN, 3-step returns), and shorter, more frequent PPO rounds; each run takes well under a
minute of one core.
"""

from __future__ import annotations

import csv

import pytest
import torch

from rltrain.envs import make_vector_env
from rltrain.evaluate import evaluate
from tests.helpers import only_run_dir, run_cli

pytestmark = pytest.mark.slow

ENV_ID = "MinAtar/Breakout-v1"
FACTOR = 4.0
RANDOM_EPISODES = 3000
COMMON = ["torch_threads=1", "logger.progress=false", "trainer.eval_episodes=20", "trainer.checkpoint_every=1000000",
          f"env.id={ENV_ID}"]
CASES = {
    "dqn": ["experiment=dqn_minatar", *COMMON, "trainer.total_env_steps=6000", "trainer.eval_every=2000",
            "trainer.warmup_steps=1000", "trainer.learning_starts=1000", "algo.exploration.annealing_steps=5000",
            "algo.exploration.eps_end=0.05", "algo.updater.value_network_update_interval=250", "algo.n_step=3",
            "algo.optim.value.lr=1e-3"],
    "ppo": ["experiment=ppo_minatar", *COMMON, "trainer.total_env_steps=20000", "trainer.eval_every=5000",
            "algo.steps_per_env=64", "trainer.batch_size=128", "algo.optim.model.lr=1e-3"],
}


@pytest.fixture(scope="module")
def random_return() -> float:
    """A uniform-random policy's mean return over RANDOM_EPISODES seeded episodes."""
    envs = make_vector_env(ENV_ID, 10)
    generator = torch.Generator().manual_seed(0)
    n = envs.single_action_space.n
    policy = lambda obs: torch.randint(n, (obs.shape[0],), generator=generator)  # noqa: E731
    result = evaluate(envs, policy, RANDOM_EPISODES, seed=0, device=torch.device("cpu"))
    envs.close()
    assert result["episodes"] == RANDOM_EPISODES and result["return_mean"] > 0
    return result["return_mean"]


def eval_returns(run_dir) -> list[float]:
    with (run_dir / "eval.csv").open(newline="") as f:
        return [float(row["return_mean"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("algo", list(CASES))
def test_reaches_four_times_random_on_minatar_breakout(tmp_path, random_return, algo, seed):
    run_cli([*CASES[algo], f"seed={seed}"], tmp_path, timeout=600)
    returns = eval_returns(only_run_dir(tmp_path))
    assert max(returns) >= FACTOR * random_return, \
        f"{algo} seed {seed}: evaluation returns {returns}, random policy {random_return:.3f}"
