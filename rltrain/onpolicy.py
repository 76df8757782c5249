"""Learned rewards: GAIL's discriminator as a reward model.

:class:`GAILRewardModel` trains the discriminator (:class:`~rltrain.objectives.GAILLoss`) on collected
data against expert demonstrations and scores transitions with
:func:`rltrain.objectives.gail.gail_reward`. Two learners use it:

- PPO (:class:`rltrain.sources.RolloutSource`): each rollout trains the discriminator, then its rewards
  replace the environment's before GAE (rollout cells marked invalid in ``("collector", "mask")`` are
  left out, see :func:`valid_rows`).
- An off-policy learner such as SAC: :class:`RewardLabeler` is a step of the Trainer's update path:
  every ``train_every`` batches it first trains the discriminator on the batch just drawn (fresh policy
  data), then every batch gets the current reward at ``("next", "reward")``. The environment's reward
  stays in the replay storage and is never learned from.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from rltrain.objectives.common import next_key
from rltrain.objectives.gail import GAILLoss

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
        return self.loss.policy_reward(*self._pairs(data))

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


class RewardLabeler:
    """The reward model as a step of the off-policy update path (see the module docstring)."""

    def __init__(self, reward_model: GAILRewardModel, train_every: int = 1):
        if train_every < 1:
            raise ValueError(f"train_every must be >= 1, got {train_every}")
        self.reward_model = reward_model
        self.train_every = int(train_every)
        self.batches = 0

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        if self.batches % self.train_every == 0:
            self.reward_model.train(batch)
        self.batches += 1
        return self.reward_model.relabel(batch)

    @property
    def last_losses(self) -> TensorDictBase | None:
        return self.reward_model.last_losses

    def state_dict(self) -> dict:
        return {"reward_model": self.reward_model.state_dict(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.reward_model.load_state_dict(state["reward_model"])
        self.batches = int(state["batches"])
