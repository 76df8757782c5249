"""On-policy data: rollouts of the current policy for PPO (and GAIL with PPO), on the env-step clock.

Each :meth:`RolloutSource.advance` collects one rollout, scores it and owes its updates::

    rollout = T steps of every env -> [T, N]      (GAIL: train the discriminator, relabel rewards)
    GAE on the rollout
    owe epochs x (valid rows // minibatch_size) updates; sample() serves shuffled minibatches

Collection goes through :class:`rltrain.collect.Collector` (gymnasium's NEXT_STEP autoreset, true
final observations, terminated and truncated kept apart, finished-episode bookkeeping). The one
difference with off-policy collection: a rollout is a rectangle ``[T, N]`` of env steps, so the step
on which a sub-env is auto-reset (its action ignored, no transition) keeps its cell, marked invalid
in ``("collector", "mask")``. The step before it is *done*, which cuts the GAE recursion, so the
invalid cell never reaches a valid row's advantage; :meth:`RolloutSource.sample` and the
discriminator only ever see valid rows. The clock counts the valid cells (real transitions).
"""

from __future__ import annotations

import gymnasium as gym
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.collect import Collector
from rltrain.envs import derive_seed
from rltrain.modules.actors import call_tensors
from rltrain.objectives.common import next_key
from rltrain.objectives.ppo import PPOLoss, action_log_prob
from rltrain.onpolicy import ENV_REWARD_KEY, VALID_KEY, GAILRewardModel, valid_rows
from rltrain.sources.base import EndsInterval
from rltrain.sources.replay import RESTART_SEEDS


class RolloutSource:
    """Rollouts of ``actor`` in ``envs``, scored (GAE) and served as shuffled minibatches.

    Args:
        envs: a gymnasium vector env in NEXT_STEP autoreset mode (:func:`rltrain.envs.make_vector_env`).
        actor: the stochastic policy (``distribution(obs)``), sampled to act.
        critic: ``V(s)``, recorded with each step (``V_old`` for value clipping).
        objective: the :class:`~rltrain.objectives.PPOLoss`; its keys name the rollout's entries and
            its :meth:`~rltrain.objectives.PPOLoss.compute_advantage` scores each rollout.
        steps_per_env: rollout length ``T`` (steps of every env per :meth:`collect`).
        epochs: passes over each rollout.
        minibatch_size: rows per :meth:`sample`.
        device: where the rollout is stored (the networks' device).
        seed: the first reset of the envs and the shuffling generator.
        reward_model: e.g. a :class:`~rltrain.onpolicy.GAILRewardModel`: trained on each rollout, then its
            rewards replace the environment's (kept at ``("next", "env_reward")``).
        total_env_steps: the budget.
        normalizer: online observation normalization for the collector (``env.normalize_observations``).

    ``updates_per_rollout = epochs * (M // minibatch_size)``, ``M`` the rollout's valid rows (``T * N``
    less the auto-reset cells; ``T * N`` before the first rollout). Each epoch is a fresh permutation
    of the rows: every row is served at most once per epoch, and exactly once when ``minibatch_size``
    divides ``M``.
    """

    kind = "rollout"
    clock = "env_step"

    def __init__(self, envs: gym.vector.VectorEnv, actor: nn.Module, critic: nn.Module, objective: PPOLoss, *,
                 steps_per_env: int, epochs: int, minibatch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, reward_model: GAILRewardModel | None = None, total_env_steps: int = 0,
                 normalizer=None):
        next_step = gym.vector.AutoresetMode.NEXT_STEP
        if envs.metadata.get("autoreset_mode", next_step) != next_step:
            raise ValueError("RolloutSource needs a vector env in NEXT_STEP autoreset mode; build it with "
                             "rltrain.envs.make_vector_env")
        if not hasattr(actor, "distribution"):
            raise ValueError("RolloutSource needs a stochastic actor with a distribution (ProbabilisticActor or "
                             f"CategoricalActor), got {type(actor).__name__}")
        if len(actor.in_keys) != 1 or list(critic.in_keys) != list(actor.in_keys):
            raise ValueError("RolloutSource: the actor and the critic must read the one observation key; their "
                             f"in_keys are {list(actor.in_keys)} and {list(critic.in_keys)}")
        if not hasattr(objective, "compute_advantage"):
            raise ValueError(f"RolloutSource needs an on-policy objective with compute_advantage (PPOLoss), got "
                             f"{type(objective).__name__}")
        for name, value in (("steps_per_env", steps_per_env), ("epochs", epochs), ("minibatch_size", minibatch_size)):
            if value < 1:
                raise ValueError(f"RolloutSource: {name} must be >= 1, got {value}")
        if minibatch_size > steps_per_env * envs.num_envs:
            raise ValueError(f"RolloutSource: minibatch_size {minibatch_size} exceeds the rollout's "
                             f"{steps_per_env} x {envs.num_envs} = {steps_per_env * envs.num_envs} rows")
        self.actor, self.critic, self.objective = actor, critic, objective
        self.reward_model = reward_model
        self.steps_per_env, self.epochs, self.minibatch_size = int(steps_per_env), int(epochs), int(minibatch_size)
        self.device = torch.device(device)
        self.num_envs = envs.num_envs
        self.obs_key = actor.in_keys[0]
        self.seed = seed
        self.total = int(total_env_steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.env_steps = 0
        self.rollouts = 0
        self.rollout: TensorDictBase | None = None  # the last rollout [T, N], after scoring
        self._rows: TensorDictBase | None = None
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._step_record: tuple[torch.Tensor, ...] | None = None
        self.collector = Collector(envs, self._act, self.device, seed, normalizer=normalizer)

    # ---- acting -------------------------------------------------------------------------------------
    def _act(self, obs: torch.Tensor) -> torch.Tensor:
        """The behaviour policy the Collector calls (without gradient): a sample, whose log-probability
        (scored like the loss scores it) and ``V(s)`` are kept for the rollout."""
        dist = self.actor.distribution(obs)
        action = dist.sample()
        value = call_tensors(self.critic, obs)[0]
        self._step_record = (obs, action, action_log_prob(dist, action), value)
        return action

    def reset(self, seed: int) -> None:
        """Start fresh episodes in every env (seeded ``seed, seed+1, ...``); unfinished ones are not reported."""
        self.collector.reset(seed)

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        """``(return, length)`` of the episodes finished since the last call, in environment reward."""
        return self.collector.pop_finished_episodes()

    # ---- collecting -----------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.minibatch_size

    def position(self, updates: int) -> int:
        return self.env_steps

    def advance(self, updates: int, ends_interval: EndsInterval) -> int:
        """Collect and score one rollout; owes ``updates_per_rollout`` updates. At a checkpoint the
        envs restart from a seed derived from the env step (the rollout itself is complete)."""
        before = self.env_steps
        after = before + self.collect()
        if ends_interval(before, after):
            self.reset(derive_seed(self.seed, after, RESTART_SEEDS))
        return self.updates_per_rollout

    def stored(self) -> int:
        return len(self)

    def log_fields(self, updates: int) -> dict:
        return {}

    def collect(self) -> int:
        """One rollout ``[T, N]``: collect, (reward model: train, relabel), GAE. Returns the real
        transitions collected (the valid cells)."""
        steps = [self._collect_step() for _ in range(self.steps_per_env)]
        rollout = torch.stack(steps, dim=0)
        if self.reward_model is not None:
            self.reward_model.train(rollout)
            reward_key = next_key(self.objective.tensor_keys.reward)
            rollout.set(ENV_REWARD_KEY, rollout.get(reward_key))
            rollout.set(reward_key, self.reward_model.reward(rollout))
        self.objective.compute_advantage(rollout)
        self.rollout = rollout
        self._rows = valid_rows(rollout)
        self._new_epoch()
        collected = len(self._rows)
        self.env_steps += collected
        self.rollouts += 1
        return collected

    def _collect_step(self) -> TensorDict:
        """One vector step as ``[N]`` cells; an env being auto-reset gives an invalid cell."""
        valid = torch.as_tensor(~self.collector.autoresetting)  # an env being auto-reset yields no transition
        transitions = self.collector.step()
        obs, action, log_prob, value = self._step_record
        transitions = transitions.to(self.device)
        index = valid.nonzero().squeeze(-1).to(self.device)
        keys = self.objective.tensor_keys
        n = self.num_envs

        def cells(column: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
            return fill.clone().index_copy_(0, index, column)

        false = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        done = cells(transitions.get(("next", "done")), false)
        step = TensorDict({
            self.obs_key: obs,
            keys.action: action,
            keys.sample_log_prob: log_prob,
            keys.value: value,
            VALID_KEY: valid.to(self.device),
            "next": {
                self.obs_key: cells(transitions.get(("next", "observation")), obs),
                keys.reward: cells(transitions.get(("next", "reward")), torch.zeros(n, 1, device=self.device)),
                keys.terminated: cells(transitions.get(("next", "terminated")), false),
                "truncated": cells(transitions.get(("next", "truncated")), false),
                keys.done: done,
            },
        }, batch_size=[n], device=self.device)
        return step

    # ---- serving ----------------------------------------------------------------------------------------
    def _new_epoch(self) -> None:
        self._order = torch.randperm(len(self._rows), generator=self.generator).to(self.device)
        self._cursor = 0

    @property
    def updates_per_rollout(self) -> int:
        rows = self.steps_per_env * self.num_envs if self._rows is None else len(self._rows)
        return self.epochs * (rows // self.minibatch_size)

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """The next minibatch ``[batch_size]`` of the current rollout's rows; a new shuffled epoch
        starts when the current one has fewer than ``batch_size`` rows left."""
        batch_size = self.minibatch_size if batch_size is None else batch_size
        if self._rows is None:
            raise RuntimeError("RolloutSource.sample: no rollout yet; call advance() or collect() first")
        if batch_size != self.minibatch_size:
            raise ValueError(f"RolloutSource.sample: batch_size {batch_size} differs from the source's minibatch_size "
                             f"{self.minibatch_size}; set the trainer's batch size to the PPO minibatch size")
        if batch_size > len(self._rows):
            raise ValueError(f"RolloutSource.sample: batch_size {batch_size} exceeds the rollout's {len(self._rows)} "
                             "valid rows; use a smaller minibatch or a longer rollout")
        if self._cursor + batch_size > len(self._order):
            self._new_epoch()
        index = self._order[self._cursor:self._cursor + batch_size]
        self._cursor += batch_size
        return self._rows[index]

    def __len__(self) -> int:
        return 0 if self._rows is None else len(self._rows)

    # ---- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Shuffling generator, counters, the reward model and the collector's episodes in flight. The
        rollout itself is not saved: a checkpoint falls between rollouts, after their updates."""
        return {"generator": self.generator.get_state(), "env_steps": self.env_steps, "rollouts": self.rollouts,
                "reward_model": None if self.reward_model is None else self.reward_model.state_dict(),
                "collector": self.collector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.env_steps, self.rollouts = state["env_steps"], state["rollouts"]
        if (state["reward_model"] is None) != (self.reward_model is None):
            raise ValueError("RolloutSource.load_state_dict: the checkpoint and this source disagree on having a "
                             "reward model (GAIL)")
        if self.reward_model is not None:
            self.reward_model.load_state_dict(state["reward_model"])
        self.rollout, self._rows, self._cursor = None, None, 0
        restart_seed = derive_seed(self.seed, self.env_steps, RESTART_SEEDS)
        if "collector" not in state:  # written before collectors saved their episodes in flight
            self.reset(restart_seed)
            return
        self.collector.load_state_dict(state["collector"], fallback_seed=restart_seed)
