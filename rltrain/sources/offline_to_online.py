"""Offline pre-training followed by online fine-tuning (CORL's offline-to-online protocol, Cal-QL, RLPD).

Two phases on one clock, ``step``::

    offline:  updates < offline_updates      one update per advance on the dataset;  step = update
    online:   env steps < online_env_steps   a replay source in the dataset's env;    step = offline_updates + env_step

Online batches mix the dataset and the collected data by ``mix``, the fraction of each batch drawn
from the dataset:

- ``mix=None``: the dataset is copied into the replay buffer once and online transitions are appended
  (CORL's IQL/CQL fine-tuning); offline batches come from that buffer too.
- ``mix=m``: ``round(m * B)`` rows from the dataset and the rest from the online buffer, concatenated
  (symmetric sampling with ``m=0.5``: Cal-QL, RLPD); the dataset is never copied.

What is collected goes through :class:`OnlineTransform` first: the offline phase's observation
normalization and reward transform, and for Cal-QL the Monte-Carlo return of each episode once it
ends (transitions of an unfinished episode wait for its end before they are stored).
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from rltrain.data.mc_returns import episode_returns
from rltrain.sources.base import EndsInterval
from rltrain.sources.replay import ReplaySource

COPY_CHUNK = 65_536  # dataset rows copied into the replay buffer at a time


class OnlineTransform:
    """Collected transitions -> what the offline phase trained on (see the module docstring).

    Args:
        normalizer: the dataset's observation normalizer, or ``None``.
        reward: the dataset's reward transform (``r -> multiplier * r + offset``), or ``None``.
        mc_return_gamma: label each transition with its episode's Monte-Carlo return (``mc_return``).
        num_envs: sub-envs of the collector (episodes are tracked per sub-env).
    """

    def __init__(self, normalizer, reward, mc_return_gamma: float | None, num_envs: int):
        self.normalizer = normalizer
        self.reward = reward
        self.gamma = mc_return_gamma
        self.num_envs = num_envs
        self.reset()

    def reset(self) -> None:
        """The collector restarted every env: no episode is pending, none is being auto-reset."""
        self._pending: list[list[TensorDictBase]] = [[] for _ in range(self.num_envs)]
        self._resetting = np.zeros(self.num_envs, dtype=bool)

    def state_dict(self) -> dict:
        """The transitions of unfinished episodes held back (Cal-QL) and which envs are being auto-reset."""
        return {"pending": [torch.cat(rows).to_dict() if rows else None for rows in self._pending],
                "resetting": self._resetting.copy()}

    def load_state_dict(self, state: dict) -> None:
        self._pending = [[] if rows is None else [TensorDict(rows, batch_size=[len(rows["observation"])])]
                         for rows in state["pending"]]
        self._resetting = state["resetting"].copy()

    def __call__(self, transitions: TensorDictBase) -> TensorDictBase:
        if self.normalizer is not None:
            transitions.set("observation", self.normalizer(transitions.get("observation")))
            transitions.set(("next", "observation"), self.normalizer(transitions.get(("next", "observation"))))
        if self.reward is not None:
            transitions.set(("next", "reward"), self.reward(transitions.get(("next", "reward"))))
        return transitions if self.gamma is None else self._finished_episodes(transitions)

    def _finished_episodes(self, transitions: TensorDictBase) -> TensorDictBase:
        """Hold each sub-env's transitions until its episode ends; return the episodes that ended,
        labelled with ``mc_return``. The collector yields one row per sub-env that is not being
        auto-reset (the step after its episode ended), in sub-env order."""
        envs = np.flatnonzero(~self._resetting)
        done = transitions.get(("next", "done")).squeeze(-1).cpu().numpy()
        finished = []
        for row, env in enumerate(envs):
            self._pending[env].append(transitions[row:row + 1])
            if done[row]:
                episode = torch.cat(self._pending[env])
                returns = episode_returns(episode.get(("next", "reward")).squeeze(-1).cpu(), self.gamma)
                episode.set("mc_return", returns.unsqueeze(-1).to(episode.device))
                finished.append(episode)
                self._pending[env] = []
        self._resetting[:] = False
        self._resetting[envs] = done
        if not finished:
            return transitions[:0].set("mc_return", torch.zeros(0, 1, device=transitions.device))
        return torch.cat(finished)


def online_rows(batch_size: int, mix: float | None) -> int:
    """Rows of each online-phase batch drawn from the online buffer (all of them with ``mix=None``,
    where that buffer also holds the dataset)."""
    return batch_size if mix is None else batch_size - round(mix * batch_size)


class OfflineToOnlineSource:
    """Offline updates on ``dataset``, then online fine-tuning with ``online`` (see the module docstring).

    Args:
        dataset: a :class:`~rltrain.data.minari_data.TransitionSampler` over the prepared dataset.
        online: the replay source of the online phase (its budget is the online env steps).
        offline_updates: gradient updates of the offline phase (0: online from the first step, RLPD).
        mix: the fraction of each online batch drawn from the dataset, or ``None`` (copy the dataset
            into the replay buffer).
        batch_size: rows per batch, in both phases.
    """

    kind = "offline_to_online"
    clock = "step"

    def __init__(self, dataset, online: ReplaySource, *, offline_updates: int, mix: float | None, batch_size: int):
        if mix is not None and not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be in [0, 1] or None, got {mix}")
        self.dataset = dataset
        self.online = online
        self.offline_updates = int(offline_updates)
        self.mix = mix
        self.batch_size = int(batch_size)
        self.dataset_rows = batch_size - online_rows(batch_size, mix)
        self.total = self.offline_updates + online.total
        if mix is None:
            self._copy_dataset_into_replay()

    def _copy_dataset_into_replay(self) -> None:
        rows = len(self.dataset)
        for start in range(0, rows, COPY_CHUNK):
            index = torch.arange(start, min(start + COPY_CHUNK, rows), device=self.dataset.device)
            self.online.buffer.extend(self.dataset.transitions(index))

    @property
    def env_steps(self) -> int:
        return self.online.env_steps

    def phase(self) -> str:
        return "offline" if self.online.env_steps == 0 else "online"

    def position(self, updates: int) -> int:
        if self.online.env_steps == 0:
            return min(updates, self.offline_updates)
        return self.offline_updates + self.online.env_steps

    def advance(self, updates: int, ends_interval: EndsInterval) -> int:
        if updates < self.offline_updates:
            return 1
        offset = self.offline_updates
        before, after = self.online.collect(lambda b, a: ends_interval(offset + b, offset + a))
        return self.online.schedule.updates_due(before, after, len(self.online.buffer))

    def sample(self) -> TensorDictBase:
        if self.mix is None:
            return self.online.buffer.sample(self.batch_size)
        if self.online.env_steps == 0 or self.dataset_rows == self.batch_size:
            return self.dataset.sample(self.batch_size)
        if self.dataset_rows == 0:
            return self.online.buffer.sample(self.batch_size)
        return torch.cat([self.dataset.sample(self.dataset_rows),
                          self.online.buffer.sample(self.batch_size - self.dataset_rows)])

    def reset(self, seed: int) -> None:
        self.online.reset(seed)

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        return self.online.pop_finished_episodes()

    def stored(self) -> int:
        return len(self.online.buffer) if self.mix is None else len(self.dataset) + len(self.online.buffer)

    def log_fields(self, updates: int) -> dict:
        return {"phase": self.phase()}

    def state_dict(self) -> dict:
        return {"dataset": self.dataset.state_dict(), "online": self.online.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state["dataset"])
        self.online.load_state_dict(state["online"])
