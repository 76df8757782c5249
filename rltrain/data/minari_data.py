"""Minari datasets as rltrain offline data: loading, conversion, sampling and writing.

A Minari dataset stores episodes; episode ``k`` of length ``T_k`` holds ``T_k + 1`` observations
(the first one is the reset observation), ``T_k`` actions, rewards, terminations and truncations.
:func:`to_offline_data` lays the episodes out back to back in one :class:`OfflineData`:

    observations   [N + E, obs]   every episode's T_k + 1 observations, one copy
    obs_index      [N]            row of s_t in ``observations``; s_{t+1} is the next row

With ``N = sum_k T_k`` transitions and ``E`` episodes, transition ``j`` of episode ``k`` has
``obs_index = j + k`` (each earlier episode contributes one observation more than it has
transitions), so next observations are read by index and never stored twice.

:class:`TransitionSampler` draws transitions uniformly with replacement and returns TensorDicts
with exactly the keys, dtypes and shapes of online collection (DESIGN.md's data contract), so an
objective cannot tell an offline batch from an online one. Terminated and truncated flags are kept
as recorded: bootstrapping masks with ``terminated`` only.

Only what rltrain's MLPs take is supported: flat (1-D) ``Box`` observations, and ``Dict``
observations whose leaves are ``Box`` spaces (e.g. AntMaze), which are flattened in
``gymnasium.spaces.flatten``'s order (keys in the space's order, each leaf row-major); the
evaluation env then needs ``gymnasium.wrappers.FlattenObservation``. Actions must be a 1-D ``Box``
or a ``Discrete`` space starting at 0.

Dataset files are only ever opened read-only. A dataset is found in Minari's local root
(``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``) or downloaded from Minari's remote; a
missing, truncated or unreadable dataset raises :class:`DatasetError` saying how to fix it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import warnings
from dataclasses import dataclass

import gymnasium as gym
import minari
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage.datasets_root_dir import get_dataset_path
from tensordict import TensorDict

from rltrain.envs import check_env_id
from rltrain.data.mc_returns import discounted_returns
from rltrain.errors import ConfigError

METADATA_FILE = "metadata.json"
HDF5_FILE = "main_data.hdf5"


class DatasetError(ConfigError):
    """A dataset is missing, damaged, malformed or unsupported; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------
# Locating and opening datasets


def minari_root() -> pathlib.Path:
    """Minari's local dataset root: ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``."""
    return get_dataset_path()


def check_dataset_id(dataset_id: str) -> None:
    """Raise :class:`DatasetError` unless ``dataset_id`` is ``(namespace/)name-vN`` (Minari's grammar)."""
    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as err:  # TypeError: a missing -vN makes Minari call int(None)
        raise DatasetError(
            f"malformed Minari dataset id {dataset_id!r}: ids look like namespace/env/name-vN, "
            "e.g. 'D4RL/door/human-v2' or 'rltrain/pendulum/random-v0' (the -vN version is required)."
        ) from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _delete_advice(dataset_id: str, make_hint: str | None) -> str:
    create = f"re-create it ({make_hint})" if make_hint else "re-create it"
    return (f"Delete the dataset (`minari delete {dataset_id}`, or remove {get_dataset_path(dataset_id)}) "
            f"and {create} or re-download it (`minari download {dataset_id}`).")


def _damaged(dataset_id: str, file: pathlib.Path, err: BaseException, make_hint: str | None) -> DatasetError:
    return DatasetError(f"Minari dataset {dataset_id!r}: file {file} is corrupt, truncated or unreadable "
                        f"({_one_line(err)}). {_delete_advice(dataset_id, make_hint)}")


# Minari's remotes (MINARI_REMOTE, default hf://farama-minari) and the host each one talks to.
_REMOTE_HOSTS = {"hf": "huggingface.co", "gcp": "storage.googleapis.com"}


def _remote_unreachable() -> str | None:
    """Why Minari's remote cannot be reached (one line), or None if a connection opens.

    Without this probe an offline machine waits through the HTTP client's retries (tens of
    seconds) before the download fails."""
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    host = _REMOTE_HOSTS.get(remote.partition("://")[0])
    if host is None:
        return None
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"no network: {host} is unreachable ({_one_line(err)})"
    return None


def _try_download(dataset_id: str) -> str | None:
    """Download ``dataset_id`` with Minari; the error in one line, or None on success."""
    unreachable = _remote_unreachable()
    if unreachable:
        return unreachable
    try:
        minari.download_dataset(dataset_id)
    except Exception as err:  # no network, no huggingface_hub, unknown remote id, ...
        return _one_line(err)
    return None


def load_minari(dataset_id: str, *, download: bool = True, make_hint: str | None = None) -> minari.MinariDataset:
    """Open a Minari dataset read-only: from the local root first, else downloaded when ``download``.

    Args:
        dataset_id: Minari id, e.g. ``"D4RL/door/human-v2"``.
        download: try ``minari.download_dataset`` when the dataset is not on disk.
        make_hint: the command that creates the dataset locally, quoted in the error messages.

    Raises:
        DatasetError: the id is malformed; the dataset is neither on disk nor downloadable (the
            message names the id, the root searched, the download error and ``make_hint``); or one
            of its files is corrupt (the message names the file and how to replace it).
    """
    check_dataset_id(dataset_id)
    data_path = get_dataset_path(dataset_id) / "data"
    if not data_path.exists():
        download_error = _try_download(dataset_id) if download else "download=False"
        if not data_path.exists():
            raise _not_found(dataset_id, data_path, download_error or "it downloaded nothing", make_hint)
    return _open_read_only(dataset_id, data_path, make_hint)


def _not_found(dataset_id: str, data_path: pathlib.Path, download_error: str,
               make_hint: str | None) -> DatasetError:
    fix = (f"Create it locally with: {make_hint}" if make_hint
           else f"Download it where there is network access (`minari download {dataset_id}`) "
                "and copy it into the local root")
    return DatasetError(
        f"Minari dataset {dataset_id!r} was not found in the local root {minari_root()} "
        f"(looked for {data_path}; set MINARI_DATASETS_PATH to use another root) and could not be "
        f"downloaded ({download_error}). {fix}.")


def _open_read_only(dataset_id: str, data_path: pathlib.Path, make_hint: str | None) -> minari.MinariDataset:
    metadata_file = data_path / METADATA_FILE
    try:
        with open(metadata_file) as file:
            metadata = json.load(file)
        data_format, total_episodes = metadata["data_format"], int(metadata["total_episodes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _damaged(dataset_id, metadata_file, err, make_hint) from err
    if data_format == "hdf5":
        _check_hdf5_file(dataset_id, data_path / HDF5_FILE, total_episodes, make_hint)
    try:
        return minari.MinariDataset(data_path)
    except ImportError as err:
        raise DatasetError(f"reading Minari dataset {dataset_id!r} needs a missing package: {err}") from err
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise _damaged(dataset_id, metadata_file, err, make_hint) from err


def _check_hdf5_file(dataset_id: str, path: pathlib.Path, total_episodes: int, make_hint: str | None) -> None:
    """Open the HDF5 file read-only: HDF5 itself detects a truncated file on open."""
    try:
        import h5py
    except ImportError as err:
        raise DatasetError(f"reading Minari dataset {dataset_id!r} needs h5py: "
                           'pip install "minari[hdf5]"') from err
    try:
        with h5py.File(path, "r") as file:
            stored = len(file)
    except OSError as err:
        raise _damaged(dataset_id, path, err, make_hint) from err
    if stored != total_episodes:
        raise _damaged(dataset_id, path, ValueError(
            f"{stored} episodes stored but {METADATA_FILE} says {total_episodes}"), make_hint)


# ----------------------------------------------------------------------------------------------
# OfflineData


@dataclass
class OfflineData:
    """A dataset's transitions and episodes as CPU tensors (see the module docstring for the layout).

    ``rewards``, ``terminated`` and ``truncated`` are as recorded until a transform is applied
    (:mod:`rltrain.data.normalize`); ``episode_returns`` always hold the undiscounted returns of
    the raw rewards.
    """

    observations: torch.Tensor      # [N + E, obs] float32
    obs_index: torch.Tensor         # [N] int64, row of s_t; s_{t+1} is the row after it
    actions: torch.Tensor           # [N, act] float32 (Box) or [N] int64 (Discrete)
    rewards: torch.Tensor           # [N] float32
    terminated: torch.Tensor        # [N] bool
    truncated: torch.Tensor         # [N] bool
    episode_index: torch.Tensor     # [N] int64
    step_index: torch.Tensor        # [N] int64
    episode_starts: torch.Tensor    # [E] int64, first transition row of each episode
    episode_lengths: torch.Tensor   # [E] int64
    episode_returns: torch.Tensor   # [E] float64
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box | gym.spaces.Discrete
    env_spec: EnvSpec | None
    eval_env_spec: EnvSpec | None
    ref_min_score: float | None
    ref_max_score: float | None
    dataset_id: str

    def __len__(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_episodes(self) -> int:
        return self.episode_lengths.shape[0]

    @classmethod
    def concatenate(cls, parts: list[OfflineData], dataset_id: str) -> OfflineData:
        """Episodes of ``parts`` one after the other (e.g. D4RL medium-expert = medium + expert).

        Spaces must match. Env specs come from the first part; reference scores are kept only
        where every part has the same ones.
        """
        if not parts:
            raise DatasetError(f"cannot build {dataset_id!r} from zero datasets")
        first = parts[0]
        for part in parts[1:]:
            if part.observation_space != first.observation_space or part.action_space != first.action_space:
                raise DatasetError(
                    f"cannot concatenate {first.dataset_id!r} and {part.dataset_id!r} into {dataset_id!r}: "
                    f"spaces differ (observations {first.observation_space} vs {part.observation_space}, "
                    f"actions {first.action_space} vs {part.action_space})")
        obs_offsets = _offsets([p.observations.shape[0] for p in parts])
        step_offsets = _offsets([len(p) for p in parts])
        episode_offsets = _offsets([p.num_episodes for p in parts])

        def cat(name: str, offsets: list[int] | None = None) -> torch.Tensor:
            tensors = [getattr(p, name) for p in parts]
            if offsets is not None:
                tensors = [t + offset for t, offset in zip(tensors, offsets)]
            return torch.cat(tensors)

        return cls(
            observations=cat("observations"), obs_index=cat("obs_index", obs_offsets),
            actions=cat("actions"), rewards=cat("rewards"), terminated=cat("terminated"),
            truncated=cat("truncated"), episode_index=cat("episode_index", episode_offsets),
            step_index=cat("step_index"), episode_starts=cat("episode_starts", step_offsets),
            episode_lengths=cat("episode_lengths"), episode_returns=cat("episode_returns"),
            observation_space=first.observation_space, action_space=first.action_space,
            env_spec=first.env_spec, eval_env_spec=first.eval_env_spec,
            ref_min_score=_common([p.ref_min_score for p in parts]),
            ref_max_score=_common([p.ref_max_score for p in parts]),
            dataset_id=dataset_id,
        )


def _offsets(sizes: list[int]) -> list[int]:
    return [int(x) for x in np.cumsum([0, *sizes[:-1]])]


def _common(values: list):
    return values[0] if all(v == values[0] for v in values) else None


# ----------------------------------------------------------------------------------------------
# Minari dataset -> OfflineData


def _is_box_tree(space: gym.Space) -> bool:
    if isinstance(space, gym.spaces.Dict):
        return all(_is_box_tree(sub) for sub in space.spaces.values())
    return isinstance(space, gym.spaces.Box)


def flat_observation_space(space: gym.Space) -> gym.spaces.Box:
    """The 1-D Box rltrain trains on: the space itself, or a Dict of Boxes flattened."""
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return space
    if isinstance(space, gym.spaces.Dict) and _is_box_tree(space):
        return gym.spaces.flatten_space(space)
    raise DatasetError(f"unsupported observation space {space}: rltrain's MLPs take a 1-D Box, "
                       "or a Dict of Box spaces (flattened)")


def _check_action_space(space: gym.Space) -> None:
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return
    if isinstance(space, gym.spaces.Discrete) and int(space.start) == 0:
        return
    raise DatasetError(f"unsupported action space {space}: rltrain supports a 1-D Box or a Discrete "
                       "space starting at 0")


def _flatten_observations(space: gym.Space, observations) -> np.ndarray:
    """``[T+1, flat]`` from a batch of observations, in ``gymnasium.spaces.flatten``'s order."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([_flatten_observations(sub, observations[key])
                               for key, sub in space.spaces.items()], axis=1)
    batch = np.asarray(observations)
    return batch.reshape(batch.shape[0], -1)


def _data_file(dataset: minari.MinariDataset) -> pathlib.Path:
    data_path = pathlib.Path(dataset.storage.data_path)
    return data_path / HDF5_FILE if (data_path / HDF5_FILE).exists() else data_path


def to_offline_data(dataset: minari.MinariDataset) -> OfflineData:
    """Read every episode of ``dataset`` once into preallocated tensors.

    Memory: the tensors, plus one episode at a time as Minari returns it (its observations, and
    a flattened copy for Dict spaces).
    """
    observation_space = flat_observation_space(dataset.observation_space)
    action_space = dataset.action_space
    _check_action_space(action_space)
    n, num_episodes = dataset.total_steps, dataset.total_episodes
    if n == 0:
        raise DatasetError(f"Minari dataset {dataset.id!r} has no transitions")
    discrete = isinstance(action_space, gym.spaces.Discrete)
    observations = torch.empty((n + num_episodes, observation_space.shape[0]), dtype=torch.float32)
    actions = torch.empty((n,) if discrete else (n, action_space.shape[0]),
                          dtype=torch.int64 if discrete else torch.float32)
    rewards = torch.empty(n, dtype=torch.float32)
    terminated = torch.empty(n, dtype=torch.bool)
    truncated = torch.empty(n, dtype=torch.bool)
    episode_lengths = torch.empty(num_episodes, dtype=torch.int64)
    episode_returns = torch.empty(num_episodes, dtype=torch.float64)

    step = 0
    try:
        for k, episode in enumerate(dataset.iterate_episodes()):
            length = len(episode.rewards)
            episode_obs = _flatten_observations(dataset.observation_space, episode.observations)
            if episode_obs.shape[0] != length + 1 or step + length > n:
                raise DatasetError(
                    f"Minari dataset {dataset.id!r}: episode {episode.id} does not match the metadata "
                    f"({episode_obs.shape[0]} observations for {length} steps; metadata: {n} steps, "
                    f"{num_episodes} episodes). {_delete_advice(dataset.id, None)}")
            rows = slice(step, step + length)
            observations[step + k: step + k + length + 1] = torch.from_numpy(episode_obs)
            actions[rows] = torch.as_tensor(np.asarray(episode.actions))
            rewards[rows] = torch.as_tensor(np.asarray(episode.rewards))
            terminated[rows] = torch.as_tensor(np.asarray(episode.terminations, dtype=bool))
            truncated[rows] = torch.as_tensor(np.asarray(episode.truncations, dtype=bool))
            episode_lengths[k] = length
            episode_returns[k] = float(np.sum(episode.rewards, dtype=np.float64))
            step += length
    except (OSError, KeyError) as err:
        raise _damaged(dataset.id, _data_file(dataset), err, None) from err
    if step != n:
        raise DatasetError(f"Minari dataset {dataset.id!r}: {step} steps read but the metadata says {n}. "
                           f"{_delete_advice(dataset.id, None)}")

    episode_starts = torch.cumsum(episode_lengths, 0) - episode_lengths
    _check_finite(dataset.id, observations, actions, rewards, episode_starts, episode_lengths)
    episode_index = torch.repeat_interleave(torch.arange(num_episodes), episode_lengths)
    metadata = dataset.storage.metadata
    return OfflineData(
        observations=observations,
        obs_index=torch.arange(n) + episode_index,
        actions=actions, rewards=rewards, terminated=terminated, truncated=truncated,
        episode_index=episode_index,
        step_index=torch.arange(n) - episode_starts[episode_index],
        episode_starts=episode_starts, episode_lengths=episode_lengths, episode_returns=episode_returns,
        observation_space=observation_space, action_space=action_space,
        env_spec=dataset.env_spec,
        # Minari parses the eval spec (with its gymnasium-1.0 compatibility fixes) but has no public
        # property for it; without one, Minari itself evaluates on the data-collection env.
        eval_env_spec=getattr(dataset, "_eval_env_spec", None) or dataset.env_spec,
        ref_min_score=_optional_float(metadata.get("ref_min_score")),
        ref_max_score=_optional_float(metadata.get("ref_max_score")),
        dataset_id=dataset.id,
    )


def _first_non_finite(values: torch.Tensor) -> tuple[int, int] | None:
    """(first row holding a NaN or an infinity, number of such rows), or None when all are finite."""
    finite = torch.isfinite(values)
    bad_rows = ~(finite.all(dim=-1) if values.dim() > 1 else finite)
    count = int(bad_rows.sum())
    return (int(bad_rows.nonzero()[0, 0]), count) if count else None


def _check_finite(dataset_id: str, observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                  episode_starts: torch.Tensor, episode_lengths: torch.Tensor) -> None:
    """NaN or infinite observations, actions or rewards would surface much later as a misleading
    error (a zero std, a diverging loss): name the field, the first bad episode and step here."""
    # observation rows of episode k start at episode_starts[k] + k (each episode has length + 1 of them)
    observation_starts = episode_starts + torch.arange(episode_starts.shape[0])
    fields = [("observations", observations, observation_starts), ("rewards", rewards, episode_starts)]
    if actions.is_floating_point():
        fields.insert(1, ("actions", actions, episode_starts))
    for name, values, starts in fields:
        found = _first_non_finite(values)
        if found is None:
            continue
        row, count = found
        episode = int(torch.searchsorted(starts, torch.tensor(row), right=True)) - 1
        raise DatasetError(
            f"Minari dataset {dataset_id!r}: {name} hold non-finite values (NaN or inf), first at episode {episode}, "
            f"step {row - int(starts[episode])} ({count} bad rows in all); rltrain cannot train on them. "
            f"{_delete_advice(dataset_id, None)}")


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------------------------
# Sampling


class TransitionSampler:
    """Uniform sampling with replacement of an :class:`OfflineData`'s transitions.

    The offline twin of :meth:`rltrain.data.ReplayBuffer.sample`: batches have the keys, dtypes and
    shapes of online collection. Tensors are moved to ``device`` once, at construction, so normalize
    or transform the data before building the sampler.

    Args:
        data: the transitions.
        device: the training device.
        seed: seed of the sampler's own generator.
        mc_return_gamma: also serve each transition's Monte-Carlo return ``mc_return`` ``[B, 1]`` with
            this discount (:mod:`rltrain.data.mc_returns`; Cal-QL).
    """

    def __init__(self, data: OfflineData, device: torch.device | str = "cpu", seed: int = 0,
                 mc_return_gamma: float | None = None):
        if len(data) == 0:
            raise DatasetError(f"dataset {data.dataset_id!r} has no transitions to sample")
        self.device = torch.device(device)
        self._size = len(data)
        self._observations = data.observations.to(self.device)
        self._obs_index = data.obs_index.to(self.device)
        self._actions = data.actions.to(self.device)
        self._rewards = data.rewards.unsqueeze(-1).to(self.device)
        self._terminated = data.terminated.unsqueeze(-1).to(self.device)
        self._truncated = data.truncated.unsqueeze(-1).to(self.device)
        self._done = self._terminated | self._truncated
        self._mc_returns = None
        if mc_return_gamma is not None:
            self._mc_returns = discounted_returns(data.rewards, data.episode_starts, data.episode_lengths,
                                                  mc_return_gamma).unsqueeze(-1).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    def sample(self, batch_size: int) -> TensorDict:
        """``batch_size`` transitions drawn uniformly with replacement."""
        index = torch.randint(self._size, (batch_size,), device=self.device, generator=self.generator)
        return self.transitions(index)

    def transitions(self, index: torch.Tensor) -> TensorDict:
        """The transitions at rows ``index`` ``[B]``."""
        rows = self._obs_index.index_select(0, index)
        batch = TensorDict({
            "observation": self._observations.index_select(0, rows),
            "action": self._actions.index_select(0, index),
            "next": {
                "observation": self._observations.index_select(0, rows + 1),
                "reward": self._rewards.index_select(0, index),
                "terminated": self._terminated.index_select(0, index),
                "truncated": self._truncated.index_select(0, index),
                "done": self._done.index_select(0, index),
            },
        }, batch_size=[index.shape[0]], device=self.device)
        if self._mc_returns is not None:
            batch.set("mc_return", self._mc_returns.index_select(0, index))
        return batch

    def state_dict(self) -> dict:
        """The generator state only: the data is re-read from the dataset on resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


# ----------------------------------------------------------------------------------------------
# Writing


# Minari warns about every optional metadata field left empty; these two rltrain never has.
_MINARI_NOISE = r"`(code_permalink|author_email)` is set to None"


def _leading_length(values) -> int:
    """Number of rows of an array, or of the first leaf of a nested dict of arrays."""
    while isinstance(values, dict):
        values = next(iter(values.values()))
    return len(values)


def _episode_buffer(index: int, episode: dict) -> EpisodeBuffer:
    length = len(episode["rewards"])
    lengths = {"observations": _leading_length(episode["observations"]),
               "actions": _leading_length(episode["actions"]),
               "terminations": len(episode["terminations"]), "truncations": len(episode["truncations"])}
    expected = {"observations": length + 1, "actions": length, "terminations": length, "truncations": length}
    if lengths != expected or length == 0:
        raise DatasetError(f"episode {index} has {length} rewards and lengths {lengths}; expected {expected} "
                           "(T >= 1 steps, T + 1 observations)")
    seed = episode.get("seed")
    return EpisodeBuffer(
        id=index, seed=None if seed is None else int(seed),
        observations=episode["observations"], actions=np.asarray(episode["actions"]),
        rewards=np.asarray(episode["rewards"]),
        terminations=np.asarray(episode["terminations"], dtype=bool),
        truncations=np.asarray(episode["truncations"], dtype=bool),
    )


def _check_env(env: str | EnvSpec | None) -> None:
    if isinstance(env, str):
        check_env_id(env)
    elif env is not None and not isinstance(env, EnvSpec):
        raise DatasetError(f"env must be a gymnasium env id or EnvSpec, got {type(env).__name__}")


def write_minari_dataset(dataset_id: str, episodes: list[dict], *, env: str | EnvSpec,
                         eval_env: str | EnvSpec | None = None, ref_min_score: float | None = None,
                         ref_max_score: float | None = None, algorithm_name: str, author: str = "rltrain",
                         description: str | None = None,
                         num_episodes_average_score: int = 100) -> minari.MinariDataset:
    """Write ``episodes`` as a new local Minari dataset (HDF5) with ``create_dataset_from_buffers``.

    Args:
        dataset_id: ``(namespace/)name-vN``; an existing id is never overwritten.
        episodes: dicts of arrays ``observations [T+1, ...]``, ``actions [T, ...]``, ``rewards [T]``,
            ``terminations [T]``, ``truncations [T]``, and ``seed`` (int or None).
        env: the env id or spec the data comes from; ``eval_env`` the one to evaluate on
            (default: ``env``, recorded explicitly).
        ref_min_score, ref_max_score: normalized-score references. Minari records them only when
            ``ref_max_score`` is given; without ``ref_min_score`` it then averages a random policy's
            return over ``num_episodes_average_score`` episodes of the eval env.
        algorithm_name, author, description: metadata.

    Raises:
        DatasetError: malformed id, existing dataset, inconsistent episode arrays, a reference
            minimum without a maximum.
    """
    check_dataset_id(dataset_id)
    path = get_dataset_path(dataset_id)
    if path.exists():
        raise DatasetError(f"Minari dataset {dataset_id!r} already exists at {path}; rltrain never overwrites "
                           f"a dataset. Delete it first (`minari delete {dataset_id}`) or write a new version.")
    if not episodes:
        raise DatasetError(f"no episodes to write to {dataset_id!r}")
    if ref_min_score is not None and ref_max_score is None:
        raise DatasetError("ref_min_score needs ref_max_score: Minari records reference scores only with a maximum")
    _check_env(env)
    _check_env(eval_env)
    buffers = [_episode_buffer(i, episode) for i, episode in enumerate(episodes)]
    env_name = env if isinstance(env, str) else env.id
    description = description or f"{len(buffers)} episodes of {env_name} ({algorithm_name}), written by rltrain"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MINARI_NOISE)
            return minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, eval_env=env if eval_env is None else eval_env,
                algorithm_name=algorithm_name, author=author, description=description, ref_min_score=ref_min_score,
                ref_max_score=ref_max_score, num_episodes_average_score=num_episodes_average_score)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # it did not exist before: leave no half-written dataset
        raise
