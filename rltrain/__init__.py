"""rltrain: config-driven online and offline reinforcement learning.

The Python API (README, "Using a trained agent")::

    rltrain.train(overrides, run_dir=None) -> summary     # python -m rltrain <overrides>
    rltrain.load_agent(run_dir, checkpoint="last")        # -> Agent: act, reset, record
    rltrain.evaluate(agent, env=None, episodes=10)        # -> return statistics
"""

from rltrain.agent import Agent, load_agent
from rltrain.api import evaluate, train

__all__ = ["Agent", "evaluate", "load_agent", "train"]
