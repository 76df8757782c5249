"""Online DT's source: offline pre-training on a trajectory buffer, then online fine-tuning.

The clock counts updates. For the first ``pretrain_updates`` advances the source only serves
windows of the dataset; after that, every ``updates_per_episode``-th advance first rolls out
``episodes_per_collect`` whole episodes with the exploring (sampling) policy conditioned on the
online target return and adds them to the buffer with their hindsight return-to-go. The collection
happens in :meth:`FinetuneSource.advance`, where the loop shows it; :meth:`~FinetuneSource.sample`
only samples.

Episode ``k`` (counted over the whole run) is reset with a seed derived from ``(seed, k)`` and the
policy's sampling noise of each collection is seeded from ``(seed, k)`` too (the global torch
generator is left as it was), so a resumed run collects exactly what the original would have.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from rltrain.data.trajectory import TrajectoryBuffer
from rltrain.envs import derive_seed
from rltrain.sources.base import EndsInterval

# derive_seed purposes of the online rollouts: the env reset seeds and the policy's sampling noise.
_RESET_SEEDS, _POLICY_NOISE = 1, 2


class FinetuneSource:
    """Online DT's data source (see the module docstring).

    Args:
        buffer: the trajectory buffer, built from the offline data.
        envs: a gymnasium vector env (NEXT_STEP autoreset); ``num_envs`` episodes run at a time.
        policy: a :class:`~rltrain.modules.DTPolicy` with ``deterministic=False`` and the online
            target return; its ``normalizer`` (if any) also normalizes the states stored.
        batch_size: windows per :meth:`sample`.
        total_updates: the budget.
        pretrain_updates: updates on the dataset alone before the first collection.
        updates_per_episode: updates between two collections.
        episodes_per_collect: whole episodes collected each time.
        seed: the run seed.
        module: switched to eval mode during collection (the objective, or the actor).
    """

    kind = "finetune"
    clock = "update"

    def __init__(self, buffer: TrajectoryBuffer, envs: gym.vector.VectorEnv, policy, *, batch_size: int = 1,
                 total_updates: int = 0, pretrain_updates: int, updates_per_episode: int,
                 episodes_per_collect: int = 1, seed: int = 0, module: nn.Module | None = None):
        if pretrain_updates < 0:
            raise ValueError(f"pretrain_updates must be >= 0, got {pretrain_updates}")
        if updates_per_episode < 1:
            raise ValueError(f"updates_per_episode must be >= 1, got {updates_per_episode}")
        if episodes_per_collect < 1:
            raise ValueError(f"episodes_per_collect must be >= 1, got {episodes_per_collect}")
        if policy.deterministic:
            raise ValueError("the online policy must explore: build its DTPolicy with deterministic=False")
        self.buffer = buffer
        self.envs = envs
        self.policy = policy
        self.module = module
        self.batch_size = int(batch_size)
        self.total = int(total_updates)
        self.pretrain_updates = pretrain_updates
        self.updates_per_episode = updates_per_episode
        self.episodes_per_collect = episodes_per_collect
        self.seed = seed
        self.samples_drawn = 0
        self.episodes_collected = 0
        self.env_steps = 0
        self._finished: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self.buffer)

    def stored(self) -> int:
        return len(self.buffer)

    @property
    def online(self) -> bool:
        """Whether pre-training is over."""
        return self.samples_drawn >= self.pretrain_updates

    def position(self, updates: int) -> int:
        return updates

    def advance(self, updates: int = 0, ends_interval: EndsInterval | None = None) -> int:
        """One update owed; the first of every ``updates_per_episode`` online ones collects first."""
        online_samples = self.samples_drawn - self.pretrain_updates
        if online_samples >= 0 and online_samples % self.updates_per_episode == 0:
            self.collect()
        self.samples_drawn += 1
        return 1

    def sample(self) -> TensorDict:
        return self.buffer.sample(self.batch_size)

    def reset(self, seed: int) -> None:
        pass  # episodes are collected whole: none is running at a checkpoint

    def log_fields(self, updates: int) -> dict:
        return {}

    def collect(self) -> None:
        """Roll out ``episodes_per_collect`` whole episodes and add them to the buffer."""
        was_training = self.module.training if self.module is not None else None
        if self.module is not None:
            self.module.eval()
        try:
            remaining = self.episodes_per_collect
            while remaining > 0:
                count = min(remaining, self.envs.num_envs)
                for episode in self._rollout(count):
                    self._store(*episode)
                remaining -= count
        finally:
            if self.module is not None:
                self.module.train(was_training)

    @torch.no_grad()
    def _rollout(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``count`` episodes, one per sub-env (the others run on and are ignored): ``(obs, actions, rewards)``."""
        n, first = self.envs.num_envs, self.episodes_collected
        device = torch.device(self.policy.device)
        obs, _ = self.envs.reset(seed=[derive_seed(self.seed, first + i, _RESET_SEEDS) for i in range(n)])
        self.policy.reset(n)
        running = np.arange(n) < count
        observations, actions, rewards, alive = [], [], [], []
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(derive_seed(self.seed, first, _POLICY_NOISE))
            while running.any():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                action = self.policy(obs_t)
                obs, reward, terminated, truncated, _ = self.envs.step(action.cpu().numpy())
                reward_t = torch.as_tensor(reward, dtype=torch.float32, device=device)
                self.policy.record(reward_t)
                observations.append(obs_t)
                actions.append(action.to(torch.float32))
                rewards.append(reward_t)
                alive.append(running.copy())
                running &= ~(terminated | truncated)
        normalize = self.policy.normalizer
        alive_t = torch.as_tensor(np.stack(alive))  # [steps, n]
        episodes = []
        for i in range(count):
            length = int(alive_t[:, i].sum())  # the steps of env i's first episode are the first `length` ones
            states = torch.stack([o[i] for o in observations[:length]])
            episodes.append((normalize(states) if normalize is not None else states,
                             torch.stack([a[i] for a in actions[:length]]),
                             torch.stack([r[i] for r in rewards[:length]])))
        return episodes

    def _store(self, observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> None:
        self.buffer.add_episode(observations, actions, rewards)
        self.episodes_collected += 1
        self.env_steps += rewards.shape[0]
        self._finished.append((float(rewards.double().sum()), int(rewards.shape[0])))

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        """``(return, length)`` of the episodes collected since the last call."""
        finished, self._finished = self._finished, []
        return finished

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "samples_drawn": self.samples_drawn,
                "episodes_collected": self.episodes_collected, "env_steps": self.env_steps,
                "finished": list(self._finished)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.samples_drawn = int(state["samples_drawn"])
        self.episodes_collected = int(state["episodes_collected"])
        self.env_steps = int(state["env_steps"])
        self._finished = [tuple(x) for x in state["finished"]]
