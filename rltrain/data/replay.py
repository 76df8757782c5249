"""A replay buffer preallocated on the training device that stores every observation once.

Layout. Storage is a ring of *rows*, one per observation the environment emitted. A row holds the
observation (a single frame when frames are stacked) and, when an action was taken from it, that
transition's fields (action, reward, terminated, truncated, ...). ``("next", "observation")`` is not
stored: each transition row links to the row of its next observation, which is the following
observation of the same episode, or, at the end of an episode, an extra row holding the episode's
real final observation (so a truncated episode still bootstraps from it). So a transition costs one
observation, and an episode one more: about half the memory of storing both observations.

Streams. A vector env interleaves several episodes in one batch. A transition continues an earlier
one when its observation equals the latest stored next observation (found by a hash of its bytes,
then checked exactly); otherwise it starts a new segment. The buffer therefore needs no env index
and is exact for any input: contiguous collection is stored once, anything else costs one row
more. Two envs at byte-identical observations may swap futures; each sampled one-step transition is
still one the env produced, and an n-step window then follows an identical observation.

Frame stacks (``frame_stack = S > 1``). Observations ``[S, *frame]`` are stored as their last
frame; a stack is rebuilt by following each row's link to the previous observation of its episode
``S - 1`` times. At an episode's start the first frame is repeated, as gymnasium's
``FrameStackObservation`` pads (``padding_type="reset"``). A segment that starts on a stack with
history writes that history as extra rows, so the rebuilt stack equals the one collected.

n-step returns (``n_step = n > 1``). A sample from row ``t`` follows the links over the ``K <= n``
transitions ``t .. t+K-1`` of its episode, stopping after a terminated or truncated step or where
collection has not gone further yet:

    reward = sum_{k<K} gamma^k r_{t+k},   ("next", "observation") = s_{t+K},
    terminated/truncated/done = those of step t+K-1,   steps_to_next_obs = K

so the objectives' target ``reward + gamma^K (1 - terminated) Q(s_{t+K})`` stops at termination and
bootstraps at truncation from the real final observation.

Capacity counts transitions: the newest ``capacity`` are sampled. Rows are ``capacity + reserve``
(final observations and segment history take rows); very short episodes can leave fewer than
``capacity`` transitions in the rows. Sampling is uniform with replacement over the transitions
held, by rejection of the non-transition rows, from the buffer's own ``torch.Generator`` so a
checkpoint restores it exactly.
"""

from __future__ import annotations

import zlib

import torch
from tensordict import TensorDict, TensorDictBase

NEXT_OBS = ("next", "observation")
OBS = ("observation",)
NO_ROW = -1


def _flat_key(key) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def _fingerprint(observation: torch.Tensor) -> int:
    """A hash of an observation's bytes that is the same in every process (checkpoints keep it)."""
    return zlib.crc32(observation.numpy().tobytes())


class ReplayBuffer:
    """Uniform ring-buffer of transitions (TensorDicts with a 1-D batch), each observation stored once.

    Args:
        capacity: maximum number of transitions kept; older ones are overwritten.
        device: where the storage lives (the training device).
        seed: seed of the sampling generator.
        frame_stack: ``S`` if observations are stacks ``[S, *frame]`` of the last ``S`` frames (stored
            as single frames, rebuilt by index), else 1.
        n_step: returns over up to ``n`` steps (adds ``steps_to_next_obs`` to samples when ``n > 1``).
        gamma: the discount of n-step returns.
        reserve: rows beyond ``capacity`` for final observations (default: 2% of capacity plus a few stacks).
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu", seed: int = 0, *, frame_stack: int = 1,
                 n_step: int = 1, gamma: float = 0.99, reserve: int | None = None):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        if frame_stack < 1 or n_step < 1:
            raise ValueError(f"frame_stack and n_step must be >= 1, got {frame_stack} and {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.capacity = int(capacity)
        self.frame_stack = int(frame_stack)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.reserve = int(reserve) if reserve is not None else self.capacity // 50 + 4 * self.frame_stack + 16
        self.rows = self.capacity + self.reserve
        if self.rows < 2 * self.frame_stack + 1:
            raise ValueError(f"replay buffer of {self.rows} rows cannot serve stacks of {self.frame_stack} frames "
                             f"(needs at least {2 * self.frame_stack + 1}); raise its capacity")
        self.device = torch.device(device)
        self._storage: dict[tuple[str, ...], torch.Tensor] | None = None
        rows = self.rows
        self._stamp = torch.full((rows,), NO_ROW, dtype=torch.long, device=self.device)  # absolute id in the slot
        self._prev = torch.full((rows,), NO_ROW, dtype=torch.long, device=self.device)   # previous obs, same episode
        self._next = torch.full((rows,), NO_ROW, dtype=torch.long, device=self.device)   # next obs (transition rows)
        self._number = torch.full((rows,), NO_ROW, dtype=torch.long, device=self.device)  # transition number
        self._next_slot = torch.zeros(rows, dtype=torch.long, device=self.device)  # _next % rows (sampling reads it)
        self._rows_written = 0
        self._transitions_written = 0
        self._transitions_in_rows = 0
        self._tails: dict[int, list[int]] = {}  # hash of an unfinished episode's latest observation -> rows
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return min(self.capacity, self._transitions_in_rows)

    # ---- writing ----------------------------------------------------------------------------------
    def _allocate(self, transitions: TensorDictBase) -> None:
        obs = transitions.get("observation")
        if self.frame_stack > 1 and (obs.dim() < 2 or obs.shape[1] != self.frame_stack):
            raise ValueError(f"replay buffer with frame_stack={self.frame_stack} needs observations "
                             f"[n, {self.frame_stack}, ...], got {tuple(obs.shape)}")
        self._storage = {}
        for key, value in transitions.items(include_nested=True, leaves_only=True):
            key = _flat_key(key)
            if key == NEXT_OBS:
                continue
            shape = value.shape[2:] if key == OBS and self.frame_stack > 1 else value.shape[1:]
            self._storage[key] = torch.zeros((self.rows, *shape), dtype=value.dtype, device=self.device)

    def extend(self, transitions: TensorDictBase) -> None:
        """Append a batch of transitions (batch shape ``[n]``, in collection order), overwriting the oldest."""
        if self._storage is None:
            self._allocate(transitions)
        # Each transition writes at most frame_stack + 1 rows: chunks never lap the ring.
        chunk = max(1, self.rows // (self.frame_stack + 1) - 1)
        for start in range(0, transitions.batch_size[0], chunk):
            self._extend_chunk(transitions[start:start + chunk])

    def _extend_chunk(self, transitions: TensorDictBase) -> None:
        n = transitions.batch_size[0]
        if n == 0:
            return
        obs, next_obs = transitions.get("observation"), transitions.get(NEXT_OBS)
        done = transitions.get(("next", "done"), None)
        if done is None:
            done = transitions.get(("next", "terminated")) | transitions.get(("next", "truncated"), torch.zeros_like(
                transitions.get(("next", "terminated"))))
        done = done.reshape(n).cpu().tolist()
        obs_cpu, next_cpu = obs.cpu(), next_obs.cpu()

        new_frames: list[torch.Tensor] = []   # one per new row
        new_prev: list[int] = []
        transition_rows: list[int] = []       # the row of each transition
        next_rows: list[int] = []
        pending: dict[int, list[int]] = {}    # tails added in this chunk (not yet written)
        pending_obs: dict[int, torch.Tensor] = {}
        survivor = self._rows_written + n * (self.frame_stack + 1) - self.rows  # older rows may be overwritten now

        def new_segment(stack: torch.Tensor) -> int:
            """Rows for an observation that continues nothing: its stack's history, then itself."""
            frames = list(stack) if self.frame_stack > 1 else [stack]
            first = 0
            while first < len(frames) - 1 and torch.equal(frames[first + 1], frames[0]):
                first += 1  # leading repeats are the padding the rebuild recreates
            prev = NO_ROW
            for frame in frames[first:]:
                row = self._rows_written + len(new_frames)
                new_frames.append(frame)
                new_prev.append(prev)
                prev = row
            return prev

        for i in range(n):
            row = self._claim_tail(_fingerprint(obs_cpu[i]), obs_cpu[i], pending, pending_obs, survivor)
            if row is None:
                row = new_segment(obs_cpu[i])
            transition_rows.append(row)
            next_row = self._rows_written + len(new_frames)
            new_frames.append(next_cpu[i][-1] if self.frame_stack > 1 else next_cpu[i])
            new_prev.append(row)
            next_rows.append(next_row)
            if not done[i]:
                next_key = _fingerprint(next_cpu[i])
                pending.setdefault(next_key, []).append(next_row)
                pending_obs[next_row] = next_cpu[i]
        for key, rows in pending.items():
            self._tails.setdefault(key, []).extend(rows)
        self._write_rows(torch.stack(new_frames), new_prev)
        self._write_transitions(transitions, transition_rows, next_rows)
        self._drop_dead_tails()

    def _claim_tail(self, key: int, observation: torch.Tensor, pending: dict, pending_obs: dict,
                    survivor: int) -> int | None:
        """The row of an unfinished episode whose latest observation is ``observation`` (and that this chunk's
        writes keep), removed from the tails."""
        for rows in (pending.get(key), self._tails.get(key)):
            if not rows:
                continue
            for j, row in enumerate(rows):
                if row < survivor and row not in pending_obs:
                    continue
                stored = pending_obs[row] if row in pending_obs else self._stored_observation(row)
                if stored is not None and torch.equal(stored, observation):
                    del rows[j]
                    return row
        return None

    def _live(self, rows: torch.Tensor) -> torch.Tensor:
        """Whether each absolute row id still holds its row (not overwritten, not ``NO_ROW``)."""
        slots = rows.clamp(min=0) % self.rows
        return (rows >= 0) & (self._stamp[slots] == rows)

    def _stored_observation(self, row: int) -> torch.Tensor | None:
        """The observation of row ``row`` as collected (a rebuilt stack), or None if it is gone."""
        rows = torch.tensor([row], device=self.device)
        if not self._history_live(rows).item():
            return None
        return self._observations(rows)[0].cpu()

    def _write_rows(self, frames: torch.Tensor, prev: list[int]) -> None:
        count = frames.shape[0]
        ids = torch.arange(self._rows_written, self._rows_written + count, device=self.device)
        slots = ids % self.rows
        overwritten = self._number[slots] >= 0
        self._transitions_in_rows -= int((overwritten & (self._stamp[slots] >= 0)).sum())
        self._storage[OBS].index_copy_(0, slots, frames.to(self.device, self._storage[OBS].dtype))
        self._stamp[slots] = ids
        self._prev[slots] = torch.tensor(prev, dtype=torch.long, device=self.device)
        self._next[slots] = NO_ROW
        self._number[slots] = NO_ROW
        self._rows_written += count

    def _write_transitions(self, transitions: TensorDictBase, rows: list[int], next_rows: list[int]) -> None:
        n = len(rows)
        rows_t = torch.tensor(rows, dtype=torch.long, device=self.device)
        slots = rows_t % self.rows
        for key, store in self._storage.items():
            if key != OBS:
                store.index_copy_(0, slots, transitions.get(key).to(self.device, non_blocking=True))
        self._next[slots] = torch.tensor(next_rows, dtype=torch.long, device=self.device)
        self._next_slot[slots] = self._next[slots] % self.rows
        self._number[slots] = torch.arange(self._transitions_written, self._transitions_written + n,
                                           device=self.device)
        self._transitions_written += n
        self._transitions_in_rows += n

    def _drop_dead_tails(self) -> None:
        oldest = self._rows_written - self.rows
        for key in [k for k, rows in self._tails.items() if not rows or min(rows) < oldest]:
            rows = [r for r in self._tails[key] if r >= oldest]
            if rows:
                self._tails[key] = rows
            else:
                del self._tails[key]

    # ---- reading ----------------------------------------------------------------------------------
    def _history(self, rows: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` absolute rows of each row's stack, oldest first, padded with the episode's first row."""
        chain = [rows]
        for _ in range(self.frame_stack - 1):
            prev = self._prev[chain[-1] % self.rows]
            chain.append(torch.where(prev >= 0, prev, chain[-1]))
        return torch.stack(chain[::-1], dim=1)

    def _history_live(self, rows: torch.Tensor) -> torch.Tensor:
        live = self._live(rows)
        if self.frame_stack > 1:
            live &= self._live(self._history(rows)).all(dim=1)
        return live

    def _observations(self, rows: torch.Tensor) -> torch.Tensor:
        store = self._storage[OBS]
        if self.frame_stack == 1:
            return store.index_select(0, rows % self.rows)
        history = self._history(rows) % self.rows
        return store.index_select(0, history.reshape(-1)).reshape(*history.shape, *store.shape[1:])

    def _sampleable(self, slots: torch.Tensor) -> torch.Tensor:
        """Transition rows among the newest ``capacity`` transitions whose stack history is still held."""
        oldest_number = max(self._transitions_written - self.capacity, 0)
        ok = self._number[slots] >= oldest_number  # a row overwritten since loses its number
        if self.frame_stack > 1:
            ok &= self._history_live(self._stamp[slots])
        return ok

    def _draw_slots(self, batch_size: int) -> torch.Tensor:
        filled = min(self._rows_written, self.rows)
        slots = torch.randint(filled, (batch_size,), device=self.device, generator=self.generator)
        for _ in range(64):
            bad = ~self._sampleable(slots)
            count = int(bad.sum())
            if count == 0:
                return slots
            slots[bad] = torch.randint(filled, (count,), device=self.device, generator=self.generator)
        candidates = torch.nonzero(self._sampleable(torch.arange(filled, device=self.device))).squeeze(-1)
        pick = torch.randint(len(candidates), (batch_size,), device=self.device, generator=self.generator)
        return candidates[pick]

    def sample(self, batch_size: int) -> TensorDict:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        return self._gather(self._draw_slots(batch_size))

    def _window(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The last transition slot of each n-step window, the discounted reward sum and the step count."""
        last = slots
        reward_key = ("next", "reward")
        reward = self._storage[reward_key].index_select(0, slots).clone() if reward_key in self._storage else None
        steps = torch.ones_like(slots)
        done = self._done(slots)
        for k in range(1, self.n_step):
            following = self._next[last]
            cont = ~done & (self._number[following % self.rows] >= 0) & self._live(following)
            last = torch.where(cont, following % self.rows, last)
            if reward is not None:
                step_reward = self._storage[reward_key].index_select(0, last)
                scale = (self.gamma ** k) * cont.to(step_reward.dtype).view(-1, *[1] * (step_reward.dim() - 1))
                reward += scale * step_reward
            steps += cont.long()
            done = done | ~cont | self._done(last)
        return last, reward, steps

    def _done(self, slots: torch.Tensor) -> torch.Tensor:
        done = self._storage.get(("next", "done"))
        if done is None:
            done = self._storage[("next", "terminated")]
            truncated = self._storage.get(("next", "truncated"))
            if truncated is not None:
                done = done | truncated
        return done.index_select(0, slots).reshape(len(slots)).bool()

    def _gather(self, slots: torch.Tensor) -> TensorDict:
        last, reward, steps = (slots, None, None) if self.n_step == 1 else self._window(slots)
        data: dict = {}
        for key, store in self._storage.items():
            node = data
            for part in key[:-1]:
                node = node.setdefault(part, {})
            if key == OBS:
                node[key[-1]] = store.index_select(0, slots) if self.frame_stack == 1 else \
                    self._observations(self._stamp[slots])
            elif key == ("next", "reward") and reward is not None:
                node[key[-1]] = reward
            else:
                node[key[-1]] = store.index_select(0, last if key[0] == "next" else slots)
        next_obs = self._storage[OBS].index_select(0, self._next_slot[last]) if self.frame_stack == 1 else \
            self._observations(self._next[last])
        data.setdefault("next", {})["observation"] = next_obs
        if steps is not None:
            data["steps_to_next_obs"] = steps.unsqueeze(-1)
        # Without the constructor's shape and device checks: the storage agrees with both by
        # construction, and on CPU the checks cost a third of a sample.
        return TensorDict._new_unsafe(data, batch_size=torch.Size([len(slots)]), device=self.device)

    def transitions_in_order(self) -> TensorDict:
        """Every transition held, oldest first (one-step, whatever ``n_step``), e.g. to write a dataset."""
        if self._storage is None:
            return TensorDict({}, batch_size=[0])
        filled = torch.arange(min(self._rows_written, self.rows), device=self.device)
        slots = filled[self._sampleable(filled)]
        slots = slots[torch.argsort(self._number[slots])]
        n_step, self.n_step = self.n_step, 1
        try:
            return self._gather(slots)
        finally:
            self.n_step = n_step

    @property
    def wrapped(self) -> bool:
        """Whether transitions were dropped (overwritten) since the buffer started."""
        return len(self) < self._transitions_written

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The filled rows, their links, the counters, the unfinished episodes and the sampling generator."""
        filled = min(self._rows_written, self.rows)
        storage = None if self._storage is None else {k: v[:filled].clone() for k, v in self._storage.items()}
        links = {name: getattr(self, f"_{name}")[:filled].clone() for name in ("stamp", "prev", "next", "number")}
        return {"storage": storage, "links": links, "rows_written": self._rows_written,
                "transitions_written": self._transitions_written, "transitions_in_rows": self._transitions_in_rows,
                "tails": {k: list(v) for k, v in self._tails.items()}, "generator": self.generator.get_state(),
                "capacity": self.capacity, "rows": self.rows, "frame_stack": self.frame_stack, "n_step": self.n_step}

    def load_state_dict(self, state: dict) -> None:
        for name in ("capacity", "rows", "frame_stack", "n_step"):
            if state[name] != getattr(self, name):
                raise ValueError(f"checkpointed replay buffer has {name} {state[name]}, this one {getattr(self, name)}")
        self._rows_written = state["rows_written"]
        self._transitions_written = state["transitions_written"]
        self._transitions_in_rows = state["transitions_in_rows"]
        self._tails = {k: list(v) for k, v in state["tails"].items()}
        self.generator.set_state(state["generator"])
        filled = min(self._rows_written, self.rows)
        for name, values in state["links"].items():
            getattr(self, f"_{name}")[:filled] = values.to(self.device)
        self._next_slot = self._next.clamp(min=0) % self.rows
        self._storage = None
        if state["storage"] is not None:
            self._storage = {}
            for key, values in state["storage"].items():
                store = torch.zeros((self.rows, *values.shape[1:]), dtype=values.dtype, device=self.device)
                store[:filled] = values.to(self.device)
                self._storage[key] = store

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> ReplayBuffer:
        """A buffer rebuilt from :meth:`state_dict` (e.g. a checkpoint's), for reading its transitions."""
        buffer = cls(state["capacity"], device, frame_stack=state["frame_stack"], n_step=state["n_step"],
                     reserve=state["rows"] - state["capacity"])
        buffer.load_state_dict(state)
        return buffer
