"""Online collection: a policy steps a vector env and yields transition TensorDicts.

Each call to :meth:`Collector.step` advances every env once and returns the valid transitions as a
TensorDict with the keys of DESIGN.md's data contract. A sub-env that ended its episode on the
previous step is being auto-reset on this one (gymnasium's NEXT_STEP mode); its step is dropped,
so no transition spans an episode boundary. Terminated and truncated stay separate.

Observations keep their kind: uint8 frames stay uint8 (the encoder scales them on the training
device), everything else becomes float32 (see :func:`observation_tensor`).

The collector's state (:meth:`Collector.state_dict`) is the seed its envs last restarted from and
every action sent to them since. Gymnasium envs are deterministic given their reset seed and their
actions, so :meth:`Collector.load_state_dict` rebuilds episodes in flight by replaying those actions
(simulator states, MuJoCo's included, cannot be pickled): a run stopped between checkpoints resumes
exactly where it stopped. It checks the rebuilt observations against the saved ones and, for an env
that does not reproduce them, starts fresh episodes instead and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict


def observation_dtype(array: np.ndarray) -> torch.dtype:
    """uint8 (frames, MinAtar channels) stays uint8; any other observation is float32."""
    return torch.uint8 if np.asarray(array).dtype == np.uint8 else torch.float32


def observation_tensor(obs: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """A batch of env observations as the tensor policies read (dtype from :func:`observation_dtype`)."""
    return torch.as_tensor(obs, dtype=observation_dtype(obs), device=device)


class Collector:
    """Step ``envs`` with ``policy`` (obs tensor ``[n, obs]`` -> action tensor ``[n, act]`` or ``[n]``).

    Args:
        envs: a gymnasium vector env in NEXT_STEP autoreset mode.
        policy: the behaviour policy on plain tensors (a stochastic policy's sample, or a
            deterministic/greedy action), called without gradient.
        device: where observations are put before calling the policy.
        seed: seeds the warm-up random actions and the first reset.
        exploration: optional strategy applied to the policy's action (``explore(action, env_step)``,
            ``reset(mask)`` for envs that start a new episode), see :mod:`rltrain.exploration`.
        normalizer: optional :class:`~rltrain.data.normalize.RunningObservationNormalizer`: every
            observation a step returns first updates its statistics, then every observation (reset
            ones included) is normalized before the policy and the transitions see it. Reset
            observations do not update the statistics, so envs restarted at a checkpoint (and on
            resume) leave them as they were.
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, seed: int, exploration=None, normalizer=None):
        self.envs = envs
        self.policy = policy
        self.exploration = exploration
        self.normalizer = normalizer
        self.device = device
        self.num_envs = envs.num_envs
        space = envs.single_action_space
        self._discrete = isinstance(space, gym.spaces.Discrete)
        self._low, self._high = (None, None) if self._discrete else (space.low, space.high)
        self.rng = np.random.default_rng(seed)
        self.finished_episodes: list[tuple[float, int]] = []
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Start fresh episodes in every env (seeded ``seed, seed+1, ...``)."""
        obs, _ = self.envs.reset(seed=seed)
        self._restart_seed = seed
        self._actions_sent: list[np.ndarray] = []
        self._raw_obs = obs
        self._obs = self._normalized(obs)
        self._autoresetting = np.zeros(self.num_envs, dtype=bool)
        self._episode_return = np.zeros(self.num_envs)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        if self.exploration is not None:
            self.exploration.reset(np.ones(self.num_envs, dtype=bool))

    @torch.no_grad()
    def _normalized(self, obs: np.ndarray) -> np.ndarray:
        if self.normalizer is None:
            return obs
        return self.normalizer(torch.as_tensor(obs, dtype=torch.float32, device=self.normalizer.mean.device)).cpu().numpy()

    def _random_actions(self) -> np.ndarray:
        if self._discrete:
            return self.rng.integers(self.envs.single_action_space.n, size=self.num_envs)
        return self.rng.uniform(self._low, self._high, size=(self.num_envs, *self._low.shape)).astype(np.float32)

    @torch.no_grad()
    def _policy_actions(self, env_step: int) -> np.ndarray:
        action = self.policy(observation_tensor(self._obs, self.device))
        if self.exploration is not None:
            action = self.exploration.explore(action, env_step)
        return action.cpu().numpy()

    def step(self, random: bool = False, env_step: int = 0) -> TensorDict:
        """Step all envs once; return the valid transitions (a source that ends its episodes at a
        checkpoint marks them truncated, then calls :meth:`reset`: see
        :class:`rltrain.sources.ReplaySource`).

        Args:
            random: act uniformly at random (warm-up) instead of with the policy.
            env_step: env steps so far, for exploration schedules.
        """
        actions = self._random_actions() if random else self._policy_actions(env_step)
        next_obs, reward, terminated, truncated, _ = self.envs.step(actions)
        self._actions_sent.append(np.array(actions, copy=True))
        self._raw_obs = next_obs
        if self.normalizer is not None:
            self.normalizer.update(torch.as_tensor(next_obs, dtype=torch.float32, device=self.normalizer.mean.device))
        next_obs = self._normalized(next_obs)
        valid = ~self._autoresetting
        self._record_episodes(reward, terminated | truncated, valid)
        transitions = self._transitions(self._obs, actions, next_obs, reward, terminated, truncated, valid)
        self._obs = next_obs
        self._autoresetting = terminated | truncated
        if self.exploration is not None and self._autoresetting.any():
            self.exploration.reset(self._autoresetting)
        return transitions

    def _record_episodes(self, reward, done, valid) -> None:
        """Returns and lengths of the episodes that ended; one cut by a :meth:`reset` is not reported."""
        self._episode_return += np.where(valid, reward, 0.0)
        self._episode_length += valid
        for i in np.flatnonzero(done & valid):
            self.finished_episodes.append((float(self._episode_return[i]), int(self._episode_length[i])))
        self._episode_return[done] = 0.0
        self._episode_length[done] = 0

    def _transitions(self, obs, actions, next_obs, reward, terminated, truncated, valid) -> TensorDict:
        def column(x, dtype):
            return torch.as_tensor(np.asarray(x)[valid], dtype=dtype)

        action_dtype = torch.long if self._discrete else torch.float32
        terminated_t = column(terminated, torch.bool).unsqueeze(-1)
        truncated_t = column(truncated, torch.bool).unsqueeze(-1)
        return TensorDict({
            "observation": column(obs, observation_dtype(obs)),
            "action": column(actions, action_dtype),
            "next": {
                "observation": column(next_obs, observation_dtype(next_obs)),
                "reward": column(reward, torch.float32).unsqueeze(-1),
                "terminated": terminated_t,
                "truncated": truncated_t,
                "done": terminated_t | truncated_t,
            },
        }, batch_size=[int(valid.sum())])

    def pop_finished_episodes(self) -> list[tuple[float, int]]:
        """``(return, length)`` of the episodes finished since the last call."""
        finished, self.finished_episodes = self.finished_episodes, []
        return finished

    @property
    def autoresetting(self) -> np.ndarray:
        """Which envs ended their episode on the last step (their next step only resets them)."""
        return self._autoresetting

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The episodes in flight, as the seed of the last restart and the actions sent since (see the
        module docstring), with the running returns, the unreported finished episodes, the warm-up
        generator and the exploration state."""
        return {
            "restart_seed": self._restart_seed,
            "actions": np.stack(self._actions_sent) if self._actions_sent else None,
            "raw_observation": np.array(self._raw_obs, copy=True),
            "observation": np.array(self._obs, copy=True),
            "autoresetting": self._autoresetting.copy(),
            "episode_return": self._episode_return.copy(),
            "episode_length": self._episode_length.copy(),
            "finished_episodes": list(self.finished_episodes),
            "rng": self.rng.bit_generator.state,
            "exploration": None if self.exploration is None else self.exploration.state_dict(),
        }

    def load_state_dict(self, state: dict, fallback_seed: int) -> bool:
        """Rebuild the episodes in flight by replaying the saved actions from the saved seed. Returns
        whether they were rebuilt; if the envs do not reproduce the saved observations they restart from
        ``fallback_seed`` instead (with a warning)."""
        self.rng.bit_generator.state = state["rng"]
        self.finished_episodes = list(state["finished_episodes"])
        self.reset(state["restart_seed"])
        actions = state["actions"]
        for action in actions if actions is not None else ():
            self._raw_obs = self.envs.step(action)[0]
            self._actions_sent.append(action)
        if not np.array_equal(self._raw_obs, state["raw_observation"]):
            warnings.warn(f"the training envs did not reproduce their state from seed {state['restart_seed']} and "
                          f"{len(self._actions_sent)} replayed steps (an env that is not deterministic given its "
                          "seed and actions); they start fresh episodes, so this resumed run is correct but no "
                          "longer identical to an uninterrupted one", RuntimeWarning, stacklevel=2)
            self.reset(fallback_seed)
            return False
        self._obs = state["observation"]
        self._autoresetting = state["autoresetting"]
        self._episode_return, self._episode_length = state["episode_return"], state["episode_length"]
        if self.exploration is not None:
            self.exploration.load_state_dict(state["exploration"])
        return True
