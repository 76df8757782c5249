"""Gymnasium environments: validation, single/vector factories, spaces -> specs, seeding.

Training runs on a vector env (``num_envs >= 1``) in gymnasium's ``NEXT_STEP`` autoreset mode:
after an episode ends, the env's *next* ``step`` ignores its action and returns the first
observation of a new episode. The collector drops that step, so no stored transition spans an
episode boundary. ``env.vectorization`` picks gymnasium's ``SyncVectorEnv`` (every env in this
process, the default) or ``AsyncVectorEnv`` (one worker process per env: worth it when one env step
costs much more than the inter-process round trip, see README).

Atari (``ALE/...``) and MinAtar (``MinAtar/...``) ids get their preprocessing from
:mod:`rltrain.atari`; an observation is a flat Box (MLP networks) or a ``[C, H, W]`` image Box
(convolutional encoders).
"""

from __future__ import annotations

import difflib
import importlib
import random

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec

from rltrain.atari import check_pixel_env_id, is_atari, is_minatar, make_atari_env, make_minatar_env
from rltrain.errors import ConfigError
from rltrain.modules.specs import Bounded, Categorical, spec_from_space


def check_env_id(env_id: str) -> None:
    """Raise :class:`ConfigError` naming close matches if ``env_id`` is not registered.

    ``module:Env-v0`` (gymnasium's form for custom envs) first imports ``module``, which registers
    its envs."""
    if is_atari(env_id) or is_minatar(env_id):
        check_pixel_env_id(env_id)
        return
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module is reported the same way
            raise ConfigError(f"env.id={env_id!r}: could not import module {module!r} ({type(err).__name__}: {err}). "
                              "The module must be importable (on PYTHONPATH) and register the env with "
                              "gymnasium.register") from err
    if name in gym.registry:
        return
    close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    where = f" (module {module!r} did not register it)" if module else ""
    raise ConfigError(f"unknown gymnasium environment id {name!r}{where}.{hint} "
                      "Set env.id to a registered id (see gymnasium.pprint_registry()), module:Env-v0 for an env "
                      "your module registers, or pick env=<name> from configs/env/.")


def make_env(env_id: str | EnvSpec, max_episode_steps: int | None = None, *, atari=None, training: bool = True,
             **kwargs) -> gym.Env:
    """``gym.make`` with a clear error; ``Dict`` observations are flattened for the MLPs (in
    ``gymnasium.spaces.flatten`` order, as the offline data loader flattens them). ALE ids get the
    Atari pipeline with the ``atari`` options (``env.atari``; training adds episodic life and reward
    clipping), MinAtar ids channels-first uint8 observations."""
    if isinstance(env_id, str):
        check_env_id(env_id)
    name = env_id if isinstance(env_id, str) else env_id.id
    try:
        if is_atari(name):
            if atari is None:
                raise ConfigError(f"env.id={name} is an Atari game: its preprocessing options come with env=atari "
                                  f"(python -m rltrain env=atari env.id={name})")
            return make_atari_env(name, atari, training, max_episode_steps, **kwargs)
        if is_minatar(name):
            return make_minatar_env(name, max_episode_steps, **kwargs)
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    except (gym.error.Error, ImportError) as err:
        raise ConfigError(f"could not create environment {name!r}: {err}") from err
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    return env


VECTORIZATIONS = ("sync", "async")


def make_vector_env(env_id: str | EnvSpec, num_envs: int = 1, max_episode_steps: int | None = None, *,
                    vectorization: str = "sync", atari=None, training: bool = True,
                    **kwargs) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` (an id or an ``EnvSpec``), NEXT_STEP autoreset, stepped in this
    process (``vectorization="sync"``) or in one worker process each (``"async"``)."""
    if num_envs < 1:
        raise ConfigError(f"env.num_envs must be >= 1, got {num_envs}")
    if vectorization not in VECTORIZATIONS:
        raise ConfigError(f"env.vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")

    def factory():
        return make_env(env_id, max_episode_steps, atari=atari, training=training, **kwargs)

    first = factory()  # validates once, here, with a clear error
    if vectorization == "async":
        first.close()
        return gym.vector.AsyncVectorEnv([factory] * num_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    fns = [lambda: first] + [factory] * (num_envs - 1)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def vector_env_from_config(env_cfg, num_envs: int, training: bool = True) -> gym.vector.VectorEnv:
    """The ``env`` config group's vector env: training envs (``training=True``) or evaluation envs
    (Atari: full games, unclipped score)."""
    kwargs = dict(env_cfg.get("kwargs") or {})
    atari = env_cfg.get("atari")
    return make_vector_env(env_cfg.id, num_envs, env_cfg.max_episode_steps,
                           vectorization=env_cfg.get("vectorization", "sync"),
                           atari=None if atari is None else dict(atari), training=training, **kwargs)


def env_specs(env: gym.Env | gym.vector.VectorEnv) -> tuple[Bounded, Bounded | Categorical]:
    """Observation and action specs of a single env (or of one env of a vector env): a flat Box
    (state vectors) or a ``[C, H, W]`` Box (images)."""
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) not in (1, 3):
        raise ConfigError(f"rltrain's networks need a flat Box observation space (MLP) or an image Box [C, H, W] "
                          f"(convolutional encoder), got {obs_space}")
    if not isinstance(act_space, gym.spaces.Box | gym.spaces.Discrete):
        name = env.spec.id if env.spec is not None else type(env).__name__
        raise ConfigError(f"env.id={name} has a {type(act_space).__name__} action space ({act_space}); rltrain's "
                          "objectives act in a Box (continuous) or a Discrete space. Wrap the env to flatten its "
                          "actions into one of those (e.g. a Discrete space over the combinations).")
    return spec_from_space(obs_space), spec_from_space(act_space)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed determined by ``parts`` (e.g. run seed, env step, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
