"""On-policy data: rollouts of the current policy for PPO, optionally rewarded by a GAIL discriminator.

A :class:`RolloutSource` is the Trainer's ``buffer`` for on-policy objectives::

    env_steps += source.collect()        # T steps of every env -> [T, N] rollout, (GAIL reward), GAE
    for _ in range(source.updates_per_rollout):
        batch = source.sample(minibatch_size)   # epochs x shuffled minibatches of the rollout's rows

Collection goes through :class:`rltrain.collect.Collector` (gymnasium's NEXT_STEP autoreset, true
final observations, terminated and truncated kept apart, finished-episode bookkeeping). The one
difference with off-policy collection: a rollout is a rectangle ``[T, N]`` of env steps, so the step
on which a sub-env is auto-reset (its action ignored, no transition) keeps its cell, marked invalid
in ``("collector", "mask")``. The step before it is *done*, which cuts the GAE recursion, so the
invalid cell never reaches a valid row's advantage; :meth:`RolloutSource.sample` and the
discriminator only ever see valid rows.

:class:`GAILRewardModel` replaces the environment's reward by the discriminator's
(:func:`rltrain.objectives.gail.gail_reward`) after training the discriminator on the rollout; its
:meth:`~GAILRewardModel.relabel` does the same for an off-policy transition batch (the SAC path).
"""

from __future__ import annotations

import gymnasium as gym
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from rltrain.collect import Collector
from rltrain.modules.actors import call_tensors
from rltrain.objectives.common import next_key
from rltrain.objectives.gail import GAILLoss, gail_reward
from rltrain.objectives.ppo import PPOLoss, action_log_prob

VALID_KEY = ("collector", "mask")
ENV_REWARD_KEY = ("next", "env_reward")


def valid_rows(rollout: TensorDictBase) -> TensorDictBase:
    """The rollout flattened to ``[M]``, its invalid cells (auto-reset steps) left out."""
    flat = rollout.reshape(-1)
    mask = flat.get(VALID_KEY, None)
    return flat if mask is None else flat[mask]


class GAILRewardModel:
    """The GAIL discriminator as a reward model: trained on every rollout, then scoring it.

    Args:
        loss: the :class:`~rltrain.objectives.GAILLoss` (it holds the discriminator). Its expert
            keys name the observation and action in expert batches *and* in rollouts/transitions.
        optimizer: the discriminator's optimizer.
        expert_sampler: expert demonstrations, with ``sample(batch_size) -> TensorDict`` holding the
            observation and action keys (e.g. :class:`rltrain.data.minari_data.TransitionSampler`).
            Observations must be on the scale the environment returns (the discriminator compares
            them with raw collected observations).
        updates_per_rollout: discriminator steps per :meth:`train` call.
        batch_size: expert rows (and as many collector rows) per step.
        seed: seeds the draw of collector rows.
    """

    def __init__(self, loss: GAILLoss, optimizer: torch.optim.Optimizer, expert_sampler, *,
                 updates_per_rollout: int, batch_size: int, seed: int = 0):
        if not isinstance(loss, GAILLoss):
            raise ValueError(f"GAILRewardModel needs a GAILLoss, got {type(loss).__name__}")
        if not hasattr(expert_sampler, "sample"):
            raise ValueError("expert_sampler must have sample(batch_size) -> TensorDict (e.g. a TransitionSampler)")
        if updates_per_rollout < 1 or batch_size < 1:
            raise ValueError(f"updates_per_rollout and batch_size must be >= 1, got {updates_per_rollout} and "
                             f"{batch_size}")
        self.loss = loss
        self.optimizer = optimizer
        self.expert_sampler = expert_sampler
        self.updates_per_rollout = int(updates_per_rollout)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_losses: TensorDictBase | None = None

    def _pairs(self, data: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.loss.tensor_keys
        return data.get(keys.expert_observation), data.get(keys.expert_action)

    def _discriminator_batch(self, collected: TensorDictBase) -> TensorDict:
        keys = self.loss.tensor_keys
        expert_obs, expert_action = self._pairs(self.expert_sampler.sample(self.batch_size))
        index = torch.randint(len(collected), (self.batch_size,), generator=self.generator).to(collected.device)
        collector_obs, collector_action = self._pairs(collected[index])
        device = collector_obs.device
        return TensorDict({
            keys.expert_observation: expert_obs.to(device), keys.expert_action: expert_action.to(device),
            keys.collector_observation: collector_obs, keys.collector_action: collector_action,
        }, batch_size=[self.batch_size], device=device)

    def train(self, rollout: TensorDictBase) -> TensorDictBase:
        """``updates_per_rollout`` discriminator steps on (expert batch, random valid rollout rows);
        returns the last step's losses (detached)."""
        collected = valid_rows(rollout)
        if len(collected) == 0:
            raise RuntimeError("GAILRewardModel.train: the rollout has no valid transitions")
        self.loss.train()
        for _ in range(self.updates_per_rollout):
            losses = self.loss(self._discriminator_batch(collected))
            self.optimizer.zero_grad(set_to_none=True)
            losses.get("loss").backward()
            self.optimizer.step()
        self.last_losses = losses.detach()
        return self.last_losses

    @torch.no_grad()
    def reward(self, data: TensorDictBase) -> torch.Tensor:
        """``gail_reward(D(s, a))`` for every row of ``data`` (any batch shape), ``[*B, 1]``."""
        return gail_reward(self.loss.discriminate(*self._pairs(data)))

    def relabel(self, batch: TensorDictBase, reward_key: str = "reward") -> TensorDictBase:
        """Write the GAIL reward into a transition batch's ``("next", reward_key)`` (in place)."""
        batch.set(next_key(reward_key), self.reward(batch))
        return batch

    def state_dict(self) -> dict:
        sampler = self.expert_sampler.state_dict() if hasattr(self.expert_sampler, "state_dict") else None
        return {"loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "expert_sampler": sampler}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if state["expert_sampler"] is not None:
            self.expert_sampler.load_state_dict(state["expert_sampler"])


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
        reward_model: e.g. a :class:`GAILRewardModel`: trained on each rollout, then its rewards replace
            the environment's (kept at ``("next", "env_reward")``).

    ``updates_per_rollout = epochs * (M // minibatch_size)``, ``M`` the rollout's valid rows (``T * N``
    less the auto-reset cells; ``T * N`` before the first rollout). Each epoch is a fresh permutation
    of the rows: every row is served at most once per epoch, and exactly once when ``minibatch_size``
    divides ``M``.
    """

    def __init__(self, envs: gym.vector.VectorEnv, actor: nn.Module, critic: nn.Module, objective: PPOLoss, *,
                 steps_per_env: int, epochs: int, minibatch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, reward_model: GAILRewardModel | None = None):
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
        self.generator = torch.Generator().manual_seed(seed)
        self.env_steps = 0
        self.rollouts = 0
        self.rollout: TensorDictBase | None = None  # the last rollout [T, N], after scoring
        self._rows: TensorDictBase | None = None
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._step_record: tuple[torch.Tensor, ...] | None = None
        self.collector = Collector(envs, self._act, self.device, seed)
        self._valid = torch.ones(self.num_envs, dtype=torch.bool)

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
        self._valid = torch.ones(self.num_envs, dtype=torch.bool)

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        """``(return, length)`` of the episodes finished since the last call, in environment reward."""
        return self.collector.pop_finished_episodes()

    # ---- collecting -----------------------------------------------------------------------------------
    def collect(self) -> int:
        """One rollout ``[T, N]``: collect, (reward model: train, relabel), GAE. Returns ``T * N`` env steps."""
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
        collected = self.steps_per_env * self.num_envs
        self.env_steps += collected
        self.rollouts += 1
        return collected

    def _collect_step(self) -> TensorDict:
        """One vector step as ``[N]`` cells; an env being auto-reset gives an invalid cell."""
        valid = self._valid
        transitions = self.collector.step()
        obs, action, log_prob, value = self._step_record
        if len(transitions) != int(valid.sum()):
            raise RuntimeError("RolloutSource lost track of the auto-resetting envs (was the Collector stepped "
                               "or reset elsewhere?)")
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
        # An env whose episode ended on this step is auto-reset on the next one.
        self._valid = ~done.squeeze(-1).cpu()
        return step

    # ---- serving ----------------------------------------------------------------------------------------
    def _new_epoch(self) -> None:
        self._order = torch.randperm(len(self._rows), generator=self.generator).to(self.device)
        self._cursor = 0

    @property
    def updates_per_rollout(self) -> int:
        rows = self.steps_per_env * self.num_envs if self._rows is None else len(self._rows)
        return self.epochs * (rows // self.minibatch_size)

    def sample(self, batch_size: int) -> TensorDictBase:
        """The next minibatch ``[batch_size]`` of the current rollout's rows; a new shuffled epoch
        starts when the current one has fewer than ``batch_size`` rows left."""
        if self._rows is None:
            raise RuntimeError("RolloutSource.sample: no rollout yet; call collect() first")
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
        """Shuffling generator, counters and the reward model. The rollout itself is not saved: a
        checkpoint falls between rollouts, and the envs restart from a seed on resume (:meth:`reset`)."""
        return {"generator": self.generator.get_state(), "env_steps": self.env_steps, "rollouts": self.rollouts,
                "reward_model": None if self.reward_model is None else self.reward_model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.env_steps, self.rollouts = state["env_steps"], state["rollouts"]
        if (state["reward_model"] is None) != (self.reward_model is None):
            raise ValueError("RolloutSource.load_state_dict: the checkpoint and this source disagree on having a "
                             "reward model (GAIL)")
        if self.reward_model is not None:
            self.reward_model.load_state_dict(state["reward_model"])
        self.rollout, self._rows, self._cursor = None, None, 0
