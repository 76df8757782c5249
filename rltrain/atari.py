"""Pixel environments: Atari (ALE, through ``ale-py``) and MinAtar, with their standard preprocessing.

Atari, the pipeline CleanRL's and SB3's ``AtariWrapper`` users compare against, built from gymnasium's
own wrappers plus three small ones here:

1. ``gym.make(id, frameskip=1)``: the ALE at its raw frame rate; v5's sticky actions (0.25) stay on.
2. ``AtariPreprocessing``: up to ``noop_max`` no-ops on reset, frame skip 4 with the max of the
   last two frames, 84x84 grayscale.
3. :class:`FireReset` where the game needs FIRE to start (``fire_reset: auto``): FIRE after a reset
   and after a lost life, so a policy never stalls waiting to serve.
4. Training only: :class:`EpisodicLife` (a lost life ends the learner's episode, the game goes on)
   and :class:`SignReward` (rewards clipped to their sign).
5. ``FrameStackObservation(4)``: uint8 ``[4, 84, 84]``, the start padded with the first frame.

Evaluation uses 1-3 and 5: full games, unclipped score.

MinAtar (``MinAtar/<Game>-v1``): the ``minatar`` package's games, 10x10xC binary channels turned into
uint8 ``[C, 10, 10]`` (:class:`ChannelsFirst`), each episode starting with no sticky action
(:class:`ForgetStickyAction`).
"""

from __future__ import annotations

import difflib
import importlib

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

from rltrain.errors import ConfigError

FIRE_AUTO = ("auto", True, False)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def is_minatar(env_id: str) -> bool:
    return env_id.startswith("MinAtar/")


def _missing_extra(package: str, extra: str, env_id: str) -> ConfigError:
    return ConfigError(f"env.id={env_id} needs the {package!r} package, which is not installed. Install it with: "
                       f'pip install "rltrain[{extra}]"')


def register_pixel_envs(env_id: str) -> None:
    """Register ALE or MinAtar ids with gymnasium (once), or say which extra to install."""
    if is_atari(env_id):
        try:
            ale_py = importlib.import_module("ale_py")
            importlib.import_module("cv2")  # AtariPreprocessing resizes with OpenCV
        except ImportError as err:
            raise _missing_extra(err.name or "ale-py", "atari", env_id) from None
        if not any(name.startswith("ALE/") for name in gym.registry):
            gym.register_envs(ale_py)
    elif is_minatar(env_id):
        try:
            minatar_gym = importlib.import_module("minatar.gym")
        except ImportError:
            raise _missing_extra("minatar", "minatar", env_id) from None
        if not any(name.startswith("MinAtar/") for name in gym.registry):
            minatar_gym.register_envs()


def check_pixel_env_id(env_id: str) -> None:
    """An ALE/MinAtar id that is not registered: close matches among that family's ids."""
    register_pixel_envs(env_id)
    if env_id in gym.registry:
        return
    prefix = env_id.split("/")[0] + "/"
    family = [name for name in gym.registry if name.startswith(prefix)]
    close = difflib.get_close_matches(env_id, family, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown environment id {env_id!r}.{hint} {len(family)} {prefix[:-1]} ids are registered "
                      f"(e.g. {family[0] if family else 'none'}).")


# ---- wrappers ------------------------------------------------------------------------------------

class FireReset(gym.Wrapper):
    """Press FIRE after a reset and after a lost life (games that wait for it to serve)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        if lives < self._lives and not (terminated or truncated):
            obs, more, terminated, truncated, info = self.env.step(1)
            reward += more
        self._lives = lives
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode for the learner; the next reset continues the game (a no-op step)
    unless the game itself is over (Mnih et al. 2015's training setting). A seeded reset always starts
    a new game: the seed alone decides what follows (autoresets pass none), so restarting the envs
    at a checkpoint gives the same episodes in a resumed process as in an uninterrupted one."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self._game_over or kwargs.get("seed") is not None:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info


class SignReward(gym.RewardWrapper):
    """Rewards clipped to {-1, 0, +1} (training only; evaluation reports the game's score)."""

    def reward(self, reward):
        return float(np.sign(reward))


class ChannelsFirst(gym.ObservationWrapper):
    """MinAtar's ``[10, 10, C]`` booleans as uint8 ``[C, 10, 10]`` (the layout of the CNNs)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (c, h, w), dtype=np.uint8)

    def observation(self, observation):
        return np.ascontiguousarray(np.moveaxis(observation, -1, 0), dtype=np.uint8)


class ForgetStickyAction(gym.Wrapper):
    """MinAtar repeats the previous action with its sticky-action probability, and its ``reset`` keeps
    that action from the episode before. Setting it back to no-op (0, the action a fresh game starts
    with) on reset makes an episode depend on its seed alone, so restarted training envs and evaluation
    envs behave the same in a resumed process as in an uninterrupted one."""

    def reset(self, **kwargs):
        self.env.unwrapped.game.last_action = 0
        return self.env.reset(**kwargs)


# ---- pipelines -----------------------------------------------------------------------------------

def needs_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


def check_atari_options(options: DictConfig | dict) -> None:
    """The ``env.atari`` block, before any env is made."""
    for key in ("noop_max", "frame_skip", "screen_size", "frame_stack"):
        value = options[key]
        low = 0 if key == "noop_max" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"env.atari.{key} must be an integer >= {low}, got {value!r}")
    if options["fire_reset"] not in FIRE_AUTO:
        raise ConfigError(f"env.atari.fire_reset must be auto, true or false, got {options['fire_reset']!r}")


def make_atari_env(env_id: str, options: DictConfig | dict, training: bool, max_episode_steps: int | None = None,
                   **kwargs) -> gym.Env:
    """The Atari pipeline of the module docstring; ``training`` adds episodic life and reward clipping."""
    check_atari_options(options)
    env = gym.make(env_id, frameskip=1, max_episode_steps=max_episode_steps, **kwargs)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=options["noop_max"], frame_skip=options["frame_skip"],
                                          screen_size=options["screen_size"], grayscale_obs=True)
    if training and options["episodic_life"]:
        env = EpisodicLife(env)
    fire = options["fire_reset"]
    if fire is True or (fire == "auto" and needs_fire(env)):
        env = FireReset(env)
    if training and options["clip_rewards"]:
        env = SignReward(env)
    return gym.wrappers.FrameStackObservation(env, options["frame_stack"])


def make_minatar_env(env_id: str, max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    return ChannelsFirst(ForgetStickyAction(gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)))
