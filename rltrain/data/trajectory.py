r"""Trajectory data for sequence policies (Decision Transformer, Online DT).

**Layout.** A :class:`TrajectoryBuffer` keeps whole episodes back to back in flat tensors, one row
per step (states are stored already normalized)::

    observations   [N, obs]   s_t
    actions        [N, A]     a_t
    rewards        [N]        r_t
    return_to_go   [N]        R_t = rtg_scale * sum_{t' >= t} r_{t'}     (within the episode, undiscounted)
    timestep       [N]        t, the step's index in its episode
    episode_start  [N]        the row of the first step of the step's episode

The return-to-go is computed once per episode when it is stored; for an episode collected online it
is the *hindsight* return-to-go, from the rewards actually obtained (Online DT's relabelling).

**Windows.** A batch holds ``B`` context windows of ``T = context_len`` steps, batch shape ``[B, T]``.
Each window *ends* at a row drawn uniformly over all ``N`` stored steps (so an episode is drawn with
probability proportional to its length, as in Online DT) and covers steps ``t-T+1 .. t`` of that
episode. A window that would start before the episode's first step is LEFT-padded: its padded entries
are zero and ``pad_mask`` is True there. Keys::

    observation [B, T, obs]   action [B, T, A]   return_to_go [B, T, 1]
    timestep    [B, T] long (clamped to max_ep_len - 1)   pad_mask [B, T] bool (True = padded)

**Capacity.** With ``capacity`` (in episodes) the buffer keeps at most that many episodes. Offline
episodes are kept as Online DT does: the ``capacity`` episodes of highest return, sorted by
ascending return. Episodes added later push the first stored ones out (FIFO), offline ones first,
so the worst offline episodes leave first.

**Online fine-tuning.** :class:`rltrain.sources.FinetuneSource` (Online DT) adds the episodes it
collects with :meth:`TrajectoryBuffer.add_episode`.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rltrain.data.minari_data import OfflineData
from rltrain.errors import ConfigError



class ContextTooLongError(ConfigError):
    """A context window (or an action chunk) is longer than every episode of the data."""


def check_context_fits(episode_lengths: Sequence[int] | torch.Tensor, context_len: int, *,
                       what: str = "context length", option: str = "algo.context_len") -> None:
    """Raise :class:`ContextTooLongError` if ``context_len`` exceeds the longest episode.

    Args:
        episode_lengths: the lengths of the data's episodes.
        context_len: the window length (a DT context, an ACT chunk size).
        what: what the window is, for the message (``"context length"``, ``"chunk size"``).
        option: the config option that sets it, quoted in the fix.
    """
    lengths = torch.as_tensor(episode_lengths)
    if context_len < 1:
        raise ContextTooLongError(f"the {what} must be at least 1, got {context_len}; set {option}=<n> with n >= 1")
    if lengths.numel() == 0:
        raise ContextTooLongError(f"no episodes to take {what} windows from")
    longest = int(lengths.max())
    if context_len > longest:
        raise ContextTooLongError(
            f"the {what} {context_len} is longer than every episode of the data (the longest has {longest} "
            f"steps), so every window would be mostly padding. Use a shorter one, e.g. {option}={longest} "
            "or less, or data with longer episodes.")


def _as_float_tensor(x, name: str, dims: int) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
    if tensor.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimension(s), got shape {tuple(tensor.shape)}")
    return tensor


def returns_to_go(rewards: torch.Tensor, episode_lengths: torch.Tensor) -> torch.Tensor:
    """Undiscounted ``sum_{t' >= t} r_{t'}`` within each episode, for episodes stored back to back.

    Computed in float64 from one cumulative sum: ``R_t = C[end] - C[t] + r_t`` with ``C`` the running
    sum and ``end`` the episode's last row.
    """
    rewards64 = rewards.to(torch.float64)
    running = torch.cumsum(rewards64, 0)
    last_row = torch.cumsum(episode_lengths, 0) - 1
    episode_last_row = torch.repeat_interleave(last_row, episode_lengths)
    return (running[episode_last_row] - running + rewards64).to(torch.float32)


class TrajectoryBuffer:
    """Episodes stored back to back, sampled as left-padded context windows (module docstring).

    Args:
        observations: ``[N, obs]`` the states of the episodes, one after the other (normalized).
        actions: ``[N, A]`` their actions (continuous).
        rewards: ``[N]`` their rewards.
        episode_lengths: ``[E]`` the episodes' lengths (summing to ``N``).
        context_len: the window length ``T``.
        rtg_scale: the factor on returns-to-go (Decision Transformer: 1e-3 on MuJoCo).
        max_ep_len: timesteps are clamped to ``max_ep_len - 1`` (the size of the timestep embedding).
        capacity: the most episodes kept (``None``: unbounded); see the module docstring.
        device: where the episodes are kept and the batches are made.
        seed: seed of the sampler's own generator.
    """

    def __init__(self, observations, actions, rewards, episode_lengths, *, context_len: int,
                 rtg_scale: float = 1e-3, max_ep_len: int = 1000, capacity: int | None = None,
                 device: torch.device | str = "cpu", seed: int = 0):
        if max_ep_len < 1:
            raise ValueError(f"max_ep_len must be at least 1, got {max_ep_len}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be a positive number of episodes or None, got {capacity}")
        observations = _as_float_tensor(observations, "observations", 2)
        actions = _as_float_tensor(actions, "actions", 2)
        rewards = _as_float_tensor(rewards, "rewards", 1)
        lengths = torch.as_tensor(episode_lengths, dtype=torch.int64).reshape(-1)
        self._check_rows(observations, actions, rewards, lengths)
        self.context_len = int(context_len)
        self.rtg_scale = float(rtg_scale)
        self.max_ep_len = int(max_ep_len)
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = observations.shape[1], actions.shape[1]
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.online_episodes_added = 0
        self._num_online = 0  # the online episodes held: the last ones stored
        if capacity is not None:
            observations, actions, rewards, lengths = _top_return_episodes(
                observations, actions, rewards, lengths, min(capacity, lengths.numel()))
        check_context_fits(lengths, context_len)
        self._store(observations, actions, rewards, lengths)

    @classmethod
    def from_offline_data(cls, data: OfflineData, *, context_len: int, rtg_scale: float = 1e-3,
                          max_ep_len: int = 1000, capacity: int | None = None,
                          device: torch.device | str = "cpu", seed: int = 0) -> TrajectoryBuffer:
        """The episodes of an :class:`OfflineData` (normalize its observations first)."""
        if not isinstance(data.action_space, gym.spaces.Box):
            raise ConfigError(f"dataset {data.dataset_id!r} has a {type(data.action_space).__name__} action space; "
                              "the Decision Transformer policies here need continuous (Box) actions")
        try:
            check_context_fits(data.episode_lengths, context_len)
        except ContextTooLongError as err:
            raise ContextTooLongError(f"dataset {data.dataset_id!r}: {err}") from None
        states = data.observations.index_select(0, data.obs_index)
        return cls(states, data.actions, data.rewards, data.episode_lengths, context_len=context_len,
                   rtg_scale=rtg_scale, max_ep_len=max_ep_len, capacity=capacity, device=device, seed=seed)

    # ---- storage ------------------------------------------------------------------------------------
    @staticmethod
    def _check_rows(observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    lengths: torch.Tensor) -> None:
        rows = {"observations": observations.shape[0], "actions": actions.shape[0], "rewards": rewards.shape[0]}
        if len(set(rows.values())) != 1 or int(lengths.sum()) != rows["rewards"]:
            raise ValueError(f"episode arrays disagree: rows {rows}, episode lengths sum to {int(lengths.sum())}")
        if lengths.numel() and int(lengths.min()) < 1:
            raise ValueError("every episode needs at least one step")

    def _store(self, observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
               lengths: torch.Tensor) -> None:
        """Hold exactly these episodes (back to back) and derive the per-step columns."""
        starts = torch.cumsum(lengths, 0) - lengths
        episode_start = torch.repeat_interleave(starts, lengths)
        self._lengths = lengths.cpu()
        self._observations = observations.to(self.device)
        self._actions = actions.to(self.device)
        self._rewards = rewards.to(self.device)
        self._return_to_go = (returns_to_go(rewards.cpu(), self._lengths) * self.rtg_scale).to(self.device)
        self._episode_start = episode_start.to(self.device)
        self._timestep = (torch.arange(lengths.sum()) - episode_start).to(self.device)

    def add_episode(self, observations, actions, rewards) -> None:
        """Append one episode (``[L, obs]`` normalized states, ``[L, A]`` actions, ``[L]`` rewards);
        its return-to-go is computed from these rewards (hindsight). Beyond ``capacity`` the oldest
        episodes drop out."""
        observations = _as_float_tensor(observations, "observations", 2)
        actions = _as_float_tensor(actions, "actions", 2)
        rewards = _as_float_tensor(rewards, "rewards", 1)
        length = torch.tensor([rewards.shape[0]])
        self._check_rows(observations, actions, rewards, length)
        if observations.shape[1] != self.obs_dim or actions.shape[1] != self.action_dim:
            raise ValueError(f"episode has observation/action sizes {observations.shape[1]}/{actions.shape[1]}; "
                             f"the buffer holds {self.obs_dim}/{self.action_dim}")
        drop = 0 if self.capacity is None else max(0, self.num_episodes + 1 - self.capacity)
        dropped_rows = int(self._lengths[:drop].sum())
        lengths = torch.cat([self._lengths[drop:], length])
        self._store(torch.cat([self._observations[dropped_rows:], observations.to(self.device)]),
                    torch.cat([self._actions[dropped_rows:], actions.to(self.device)]),
                    torch.cat([self._rewards[dropped_rows:], rewards.to(self.device)]), lengths)
        self.online_episodes_added += 1
        self._num_online = min(self._num_online + 1, self.num_episodes)

    def __len__(self) -> int:
        return self._rewards.shape[0]

    @property
    def num_episodes(self) -> int:
        return self._lengths.shape[0]

    @property
    def episode_lengths(self) -> torch.Tensor:
        return self._lengths.clone()

    # ---- sampling -----------------------------------------------------------------------------------
    def sample(self, batch_size: int) -> TensorDict:
        """``batch_size`` windows ending at steps drawn uniformly with replacement."""
        end_rows = torch.randint(len(self), (batch_size,), device=self.device, generator=self.generator)
        return self.windows(end_rows)

    def windows(self, end_rows: torch.Tensor) -> TensorDict:
        """The context windows ending at the given flat rows (``[B]``), left-padded at episode starts."""
        end_rows = end_rows.to(self.device)
        offsets = torch.arange(1 - self.context_len, 1, device=self.device)
        rows = end_rows.unsqueeze(-1) + offsets                       # [B, T]
        first_rows = self._episode_start.index_select(0, end_rows).unsqueeze(-1)
        pad_mask = rows < first_rows
        rows = torch.maximum(rows, first_rows)                        # padded rows read a valid row, then zeroed
        valid = (~pad_mask).unsqueeze(-1)

        def gather(column: torch.Tensor) -> torch.Tensor:
            return column[rows]

        timestep = gather(self._timestep).clamp_max(self.max_ep_len - 1)
        return TensorDict({
            "observation": gather(self._observations) * valid,
            "action": gather(self._actions) * valid,
            "return_to_go": gather(self._return_to_go).unsqueeze(-1) * valid,
            "timestep": timestep.masked_fill(pad_mask, 0),
            "pad_mask": pad_mask,
        }, batch_size=rows.shape, device=self.device)

    # ---- exact resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The generator and the online episodes still held (the offline ones are re-read on resume)."""
        rows = int(self._lengths[self.num_episodes - self._num_online:].sum())
        tail = slice(len(self) - rows, len(self))
        return {
            "generator": self.generator.get_state(),
            "online_episodes_added": self.online_episodes_added,
            "online": {
                "lengths": self._lengths[self.num_episodes - self._num_online:].clone(),
                "observations": self._observations[tail].cpu(),
                "actions": self._actions[tail].cpu(),
                "rewards": self._rewards[tail].cpu(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore into a buffer freshly built from the same offline data and arguments."""
        if self.online_episodes_added:
            raise RuntimeError("TrajectoryBuffer.load_state_dict needs a freshly built buffer (this one already "
                               f"holds {self.online_episodes_added} online episodes); build it again, then load")
        online = state["online"]
        start = 0
        for length in online["lengths"].tolist():
            rows = slice(start, start + length)
            self.add_episode(online["observations"][rows], online["actions"][rows], online["rewards"][rows])
            start += length
        self.online_episodes_added = int(state["online_episodes_added"])
        self.generator.set_state(state["generator"])


def _top_return_episodes(observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                         lengths: torch.Tensor, count: int):
    """The ``count`` episodes of highest return, sorted by ascending return (ties in dataset order)."""
    episode = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    episode_returns = torch.zeros(lengths.numel(), dtype=torch.float64).index_add_(0, episode, rewards.double())
    keep = torch.sort(torch.topk(episode_returns, count).indices).values
    keep = keep[torch.sort(episode_returns[keep], stable=True).indices]
    starts = torch.cumsum(lengths, 0) - lengths
    rows = torch.cat([torch.arange(int(starts[e]), int(starts[e] + lengths[e])) for e in keep.tolist()])
    return observations[rows], actions[rows], rewards[rows], lengths[keep]
