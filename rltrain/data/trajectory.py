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

**Online fine-tuning.** :class:`OnlineFinetuneSource` is Online DT's data source: plain sampling during
offline pre-training, then every ``updates_per_episode`` samples it first rolls out whole episodes
with the exploring (sampling) policy conditioned on the online target return, and adds them to the
buffer with their hindsight return-to-go.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from rltrain.data.minari_data import OfflineData
from rltrain.envs import derive_seed
from rltrain.errors import ConfigError

# derive_seed purposes of the online rollouts: the env reset seeds and the policy's sampling noise.
_RESET_SEEDS, _POLICY_NOISE = 1, 2


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


class OnlineFinetuneSource:
    """Online DT's data source: offline pre-training, then online fine-tuning on a growing buffer.

    ``sample(batch_size)`` draws from ``buffer``. Once ``pretrain_updates`` samples have been drawn,
    every ``updates_per_episode``-th sample first collects ``episodes_per_collect`` whole episodes
    with ``policy`` and adds them to the buffer (with hindsight return-to-go). ``module`` (the
    objective) is put in eval mode while collecting and back in its previous mode afterwards.

    Episode ``k`` (counted over the whole run) is reset with a seed derived from ``(seed, k)`` and the
    policy's sampling noise of each collection is seeded from ``(seed, k)`` too (the global torch
    generator is left as it was), so a resumed run collects exactly what the original would have.

    Args:
        buffer: the trajectory buffer, built from the offline data.
        envs: a gymnasium vector env (NEXT_STEP autoreset); ``num_envs`` episodes run at a time.
        policy: a :class:`~rltrain.modules.DTPolicy` with ``deterministic=False`` and the online
            target return; its ``normalizer`` (if any) also normalizes the states stored.
        pretrain_updates: samples drawn before the first collection.
        updates_per_episode: samples drawn between two collections.
        episodes_per_collect: whole episodes collected each time.
        seed: the run seed.
        module: switched to eval mode during collection (the objective, or the actor).
    """

    def __init__(self, buffer: TrajectoryBuffer, envs: gym.vector.VectorEnv, policy, *, pretrain_updates: int,
                 updates_per_episode: int, episodes_per_collect: int = 1, seed: int = 0,
                 module: nn.Module | None = None):
        if pretrain_updates < 0:
            raise ValueError(f"pretrain_updates must be >= 0, got {pretrain_updates}")
        if updates_per_episode < 1:
            raise ValueError(f"updates_per_episode must be >= 1, got {updates_per_episode}")
        if episodes_per_collect < 1:
            raise ValueError(f"episodes_per_collect must be >= 1, got {episodes_per_collect}")
        if getattr(policy, "deterministic", False):
            raise ValueError("the online policy must explore: build its DTPolicy with deterministic=False")
        self.buffer = buffer
        self.envs = envs
        self.policy = policy
        self.module = module
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

    @property
    def online(self) -> bool:
        """Whether pre-training is over."""
        return self.samples_drawn >= self.pretrain_updates

    def sample(self, batch_size: int) -> TensorDict:
        online_samples = self.samples_drawn - self.pretrain_updates
        if online_samples >= 0 and online_samples % self.updates_per_episode == 0:
            self.collect()
        self.samples_drawn += 1
        return self.buffer.sample(batch_size)

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
        device = torch.device(getattr(self.policy, "device", self.buffer.device))
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
        normalize = getattr(self.policy, "normalizer", None)
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
