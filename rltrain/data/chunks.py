r"""Action chunks for ACT: for a step ``t`` of an episode, the next ``H`` actions.

With the :class:`~rltrain.data.minari_data.OfflineData` layout (transitions back to back, episode
``k`` of length ``T_k`` starting at row ``episode_starts[k]``), the chunk of transition row ``j``
(step ``t`` of its episode) holds the actions of rows ``j .. j + H - 1``; entry ``h`` is padded when
``t + h >= T_k`` (the episode ended first): its action is zeros and ``action_is_pad[h]`` is True.
Chunks never cross into the next episode. Every transition is a chunk start, drawn uniformly with
replacement, so chunks near an episode's end (partly padded) are sampled as often as any other.

Batch (batch shape ``[B]``)::

    observation               [B, obs]     s_t
    action                    [B, A]       a_t (the chunk's first action)
    ("vla_action", "chunk")   [B, H, A]    a_t .. a_{t+H-1}, zeros where padded
    action_is_pad             [B, H]       bool, True where padded
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from rltrain.data.minari_data import DatasetError, OfflineData
from rltrain.data.trajectory import ContextTooLongError, check_context_fits

CHUNK_KEY = ("vla_action", "chunk")
PAD_KEY = "action_is_pad"


class ChunkSampler:
    """Uniform sampling with replacement of action chunks of an :class:`OfflineData`.

    Tensors are moved to ``device`` once, at construction (normalize the data first).

    Args:
        data: the episodes (continuous actions).
        chunk_size: ``H``, the number of actions per chunk.
        device: the training device.
        seed: seed of the sampler's own generator.

    Raises:
        DatasetError (a ``ValueError``): no transitions, or discrete actions.
        ContextTooLongError (a ``ValueError``): ``chunk_size < 1``, or a chunk longer than every
            episode of the dataset.
    """

    def __init__(self, data: OfflineData, chunk_size: int, device: torch.device | str = "cpu", seed: int = 0):
        self._check(data, chunk_size)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self._size = len(data)
        self._observations = data.observations.to(self.device)
        self._obs_index = data.obs_index.to(self.device)
        self._actions = data.actions.to(self.device)
        # Steps left in the episode from each transition, itself included.
        steps_left = data.episode_lengths.index_select(0, data.episode_index) - data.step_index
        self._steps_left = steps_left.to(self.device)
        self._offsets = torch.arange(self.chunk_size, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @staticmethod
    def _check(data: OfflineData, chunk_size: int) -> None:
        if len(data) == 0:
            raise DatasetError(f"dataset {data.dataset_id!r} has no transitions to sample")
        if data.actions.dim() != 2 or not data.actions.is_floating_point():
            raise DatasetError(f"action chunks need continuous (Box) actions; dataset {data.dataset_id!r} has "
                               f"actions of shape {tuple(data.actions.shape)} and dtype {data.actions.dtype}")
        try:
            check_context_fits(data.episode_lengths, chunk_size, what="chunk size", option="algo.chunk_size")
        except ContextTooLongError as err:
            raise ContextTooLongError(f"dataset {data.dataset_id!r}: {err}") from None

    def __len__(self) -> int:
        return self._size

    def chunks(self, index: torch.Tensor) -> TensorDict:
        """The batch of the chunks starting at transition rows ``index [B]``."""
        rows = index.unsqueeze(-1) + self._offsets                                   # [B, H]
        is_pad = self._offsets >= self._steps_left.index_select(0, index).unsqueeze(-1)
        rows = torch.where(is_pad, index.unsqueeze(-1), rows)                        # stay in range
        chunk = self._actions[rows].masked_fill(is_pad.unsqueeze(-1), 0.0)
        return TensorDict({
            "observation": self._observations.index_select(0, self._obs_index.index_select(0, index)),
            "action": self._actions.index_select(0, index),
            CHUNK_KEY: chunk,
            PAD_KEY: is_pad,
        }, batch_size=[index.shape[0]], device=self.device)

    def sample(self, batch_size: int) -> TensorDict:
        """``batch_size`` chunks whose starts are drawn uniformly with replacement."""
        index = torch.randint(self._size, (batch_size,), device=self.device, generator=self.generator)
        return self.chunks(index)

    def state_dict(self) -> dict:
        """The generator state only: the data is re-read from the dataset on resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
