"""A replay buffer preallocated on the training device.

Storage is one flat dict of tensors ``key -> [capacity, *shape]`` (nested keys as tuples),
allocated on the first :meth:`ReplayBuffer.extend` from the shapes and dtypes of the incoming
transitions: memory is ``capacity x transition size`` and nothing more. Writes wrap around (ring);
sampling is uniform with replacement over the filled part, drawn from the buffer's own
``torch.Generator`` so that a checkpoint can restore it exactly.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase


class ReplayBuffer:
    """Uniform ring-buffer of transitions (TensorDicts with a 1-D batch).

    Args:
        capacity: maximum number of transitions kept; older ones are overwritten.
        device: where the storage lives (the training device).
        seed: seed of the sampling generator.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu", seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self._storage: dict[tuple[str, ...], torch.Tensor] | None = None
        self._cursor = 0
        self._size = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    def _allocate(self, transitions: TensorDictBase) -> None:
        self._storage = {
            key if isinstance(key, tuple) else (key,): torch.empty(
                (self.capacity, *value.shape[1:]), dtype=value.dtype, device=self.device)
            for key, value in transitions.items(include_nested=True, leaves_only=True)
        }

    def extend(self, transitions: TensorDictBase) -> None:
        """Append a batch of transitions (batch shape ``[n]``), overwriting the oldest when full."""
        if self._storage is None:
            self._allocate(transitions)
        n = transitions.batch_size[0]
        if n == 0:
            return
        if n > self.capacity:
            transitions, n = transitions[-self.capacity:], self.capacity
        index = (torch.arange(n) + self._cursor) % self.capacity
        index = index.to(self.device)
        for key, store in self._storage.items():
            store.index_copy_(0, index, transitions.get(key).to(self.device, non_blocking=True))
        self._cursor = (self._cursor + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size: int) -> TensorDict:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self._size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(self._size, (batch_size,), device=self.device, generator=self.generator)
        data: dict = {}
        for key, store in self._storage.items():
            node = data
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = store.index_select(0, index)
        # Without the constructor's shape and device checks: the storage agrees with both by
        # construction, and on CPU the checks cost a third of a sample.
        return TensorDict._new_unsafe(data, batch_size=torch.Size([batch_size]), device=self.device)

    def state_dict(self) -> dict:
        """The filled part of the storage, the write cursor and the sampling generator."""
        storage = None if self._storage is None else {k: v[: self._size].clone() for k, v in self._storage.items()}
        return {"storage": storage, "cursor": self._cursor, "size": self._size,
                "generator": self.generator.get_state(), "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpointed replay buffer has capacity {state['capacity']}, this one {self.capacity}")
        self._cursor, self._size = state["cursor"], state["size"]
        self.generator.set_state(state["generator"])
        self._storage = None
        if state["storage"] is not None:
            self._storage = {}
            for key, filled in state["storage"].items():
                store = torch.empty((self.capacity, *filled.shape[1:]), dtype=filled.dtype, device=self.device)
                store[: self._size] = filled.to(self.device)
                self._storage[key] = store


class RewardRelabelingReplay:
    """A replay buffer whose sampled rewards come from a learned reward model (GAIL with an
    off-policy learner such as SAC).

    Every ``train_every`` samples, the reward model first trains on the batch just drawn (fresh
    policy data for GAIL's discriminator); every sampled batch then gets the model's current reward
    at ``("next", "reward")``, so rewards follow the model as it learns. The environment's reward
    stays in the storage and is never sampled for learning.

    Args:
        buffer: the :class:`ReplayBuffer` the collector fills.
        reward_model: has ``train(batch)``, ``relabel(batch)``, ``state_dict()``, ``load_state_dict()``
            (e.g. :class:`rltrain.onpolicy.GAILRewardModel`).
        train_every: samples between reward-model trainings.
    """

    def __init__(self, buffer: ReplayBuffer, reward_model, train_every: int = 1):
        if train_every < 1:
            raise ValueError(f"train_every must be >= 1, got {train_every}")
        self.buffer = buffer
        self.reward_model = reward_model
        self.train_every = int(train_every)
        self.samples = 0

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, transitions: TensorDictBase) -> None:
        self.buffer.extend(transitions)

    def sample(self, batch_size: int) -> TensorDict:
        batch = self.buffer.sample(batch_size)
        if self.samples % self.train_every == 0:
            self.reward_model.train(batch)
        self.samples += 1
        return self.reward_model.relabel(batch)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "reward_model": self.reward_model.state_dict(),
                "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.reward_model.load_state_dict(state["reward_model"])
        self.samples = state["samples"]
