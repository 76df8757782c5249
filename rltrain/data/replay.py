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
``capacity`` transitions in the rows.

Which transitions are held. Transition ``j`` (numbered in collection order, ``T`` written so far)
needs its *first row*, the oldest row of its rebuilt stack (its own row when ``S = 1``); every other
row it reads (its next observation, the n-step window, their stacks) lies later on the same chain of
links, and rows are overwritten oldest first, so ``j`` is held exactly while ``j >= T - capacity``
and its first row is not overwritten yet. First rows are not monotone in ``j`` (a stream's next row
is claimed by its following transition, after other streams' rows were written), so the held
numbers are a range ``[oldest, T)`` less a few *holes*. Each write keeps both: the transitions that
an overwritten row ends are found by following links forward from it (``S - 1`` steps with stacks),
a transition whose claimed row keeps its place but loses stack history in the same write is found
from the stack rows noted while claiming, and ``oldest`` moves past leading holes, so the list of
holes (sorted, on the host, mirrored on the device) stays about as long as the envs are many.

Sampling is uniform with replacement over the held transitions, with no rejection and no read back to
the host: draw ``v`` uniformly in ``[oldest, oldest + held)``, step over the holes at or below it by a
binary search, ``j = v + #{i : holes[i] - i <= v}``, look ``j``'s row up in a ring indexed by
``j % capacity``, and gather. The draws come from the buffer's own ``torch.Generator``, so a
checkpoint restores them exactly; checkpoints hold the links only, and the ring, the holes and the
slot links that reading follows are rebuilt from them on load.
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
        rows, device = self.rows, self.device
        # Links, stored (checkpoints hold them): absolute row ids, NO_ROW where none. Row ``r`` lives in slot
        # ``r % rows`` while ``r >= rows_written - rows``.
        self._prev = torch.full((rows,), NO_ROW, dtype=torch.long, device=device)    # previous obs, same episode
        self._next = torch.full((rows,), NO_ROW, dtype=torch.long, device=device)    # next obs (transition rows)
        # (One entry more: the slot ``rows``, never written, where child links that lead nowhere point.)
        self._number = torch.full((rows + 1,), NO_ROW, dtype=torch.long, device=device)  # transition number
        # Derived from the links (rebuilt on load): slots, so that reading needs no modulo or liveness test.
        self._next_slot = torch.zeros(rows, dtype=torch.long, device=device)
        self._prev_slot = torch.arange(rows, device=device)  # a row's own slot at an episode's first row
        self._child_slot = torch.full((rows + 1,), rows, dtype=torch.long, device=device)  # the row linking here
        self._slot_of = torch.zeros(self.capacity, dtype=torch.long, device=device)  # transition number % capacity
        self._rows_written = 0
        self._transitions_written = 0
        self._oldest = 0             # the lowest transition number that may be held
        self._holes: list[int] = []  # numbers in (oldest, written) no longer held, ascending
        self._hole_ranks: torch.Tensor | None = None  # holes[i] - i on the device (None without holes)
        self._tails: dict[int, list[int]] = {}  # hash of an unfinished episode's latest observation -> rows
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self._transitions_written - self._oldest - len(self._holes)

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
        # Each transition writes at most frame_stack + 1 rows: chunks never lap the ring (nor the number ring).
        chunk = min(max(1, self.rows // (self.frame_stack + 1) - 1), self.capacity)
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
        first_rows: list[int] = []            # the oldest row of each transition's stack
        pending: dict[int, list[int]] = {}    # tails added in this chunk (not yet written)
        pending_obs: dict[int, tuple[torch.Tensor, list[int]]] = {}  # their observations and stack rows
        survivor = self._rows_written + n * (self.frame_stack + 1) - self.rows  # older rows may be overwritten now

        def new_segment(stack: torch.Tensor) -> tuple[int, list[int]]:
            """Rows for an observation that continues nothing: its stack's history, then itself."""
            frames = list(stack) if self.frame_stack > 1 else [stack]
            first = 0
            while first < len(frames) - 1 and torch.equal(frames[first + 1], frames[0]):
                first += 1  # leading repeats are the padding the rebuild recreates
            rows = []
            for frame in frames[first:]:
                new_prev.append(rows[-1] if rows else NO_ROW)
                rows.append(self._rows_written + len(new_frames))
                new_frames.append(frame)
            return rows[-1], [rows[0]] * (self.frame_stack - len(rows)) + rows

        for i in range(n):
            claimed = self._claim_tail(_fingerprint(obs_cpu[i]), obs_cpu[i], pending, pending_obs, survivor)
            row, stack_rows = claimed if claimed is not None else new_segment(obs_cpu[i])
            transition_rows.append(row)
            first_rows.append(stack_rows[0])
            next_row = self._rows_written + len(new_frames)
            new_frames.append(next_cpu[i][-1] if self.frame_stack > 1 else next_cpu[i])
            new_prev.append(row)
            next_rows.append(next_row)
            if not done[i]:
                next_key = _fingerprint(next_cpu[i])
                pending.setdefault(next_key, []).append(next_row)
                pending_obs[next_row] = (next_cpu[i], [*stack_rows[1:], next_row])
        for key, rows in pending.items():
            self._tails.setdefault(key, []).extend(rows)
        ended = self._write_rows(torch.stack(new_frames), new_prev)
        # A claimed row survives this chunk's writes (``survivor``), but with stacks its history may not.
        oldest_row = self._rows_written - self.rows
        ended += [self._transitions_written + i for i, first in enumerate(first_rows) if first < oldest_row]
        self._write_transitions(transitions, transition_rows, next_rows)
        self._drop_dead_tails()
        self._retire(ended)

    def _claim_tail(self, key: int, observation: torch.Tensor, pending: dict, pending_obs: dict,
                    survivor: int) -> tuple[int, list[int]] | None:
        """The row of an unfinished episode whose latest observation is ``observation`` (and that this chunk's
        writes keep), removed from the tails, with its stack's rows."""
        for rows in (pending.get(key), self._tails.get(key)):
            if not rows:
                continue
            for j, row in enumerate(rows):
                if row < survivor and row not in pending_obs:
                    continue
                stored = pending_obs[row] if row in pending_obs else self._stored_observation(row)
                if stored is not None and torch.equal(stored[0], observation):
                    del rows[j]
                    return row, stored[1]
        return None

    def _live(self, rows: torch.Tensor) -> torch.Tensor:
        """Whether each absolute row id is still held (written, not overwritten, not ``NO_ROW``)."""
        return rows >= max(self._rows_written - self.rows, 0)

    def _slot_rows(self, filled: int) -> torch.Tensor:
        """The absolute id of the row in each of the first ``filled`` slots."""
        oldest = max(self._rows_written - self.rows, 0)
        return oldest + (torch.arange(filled, device=self.device) - oldest) % self.rows

    def _stored_observation(self, row: int) -> tuple[torch.Tensor, list[int]] | None:
        """The observation of row ``row`` as collected (a rebuilt stack) and its stack's rows, oldest first,
        or None if one of them is gone."""
        history = self._history(torch.tensor([row], device=self.device))
        stack_rows = history[0].tolist()
        # Rows are overwritten oldest first and links lead back: past a gone row the chain reads other rows'
        # links, but the minimum is already below the oldest row held.
        if min(stack_rows) < max(self._rows_written - self.rows, 0):
            return None
        stack = self._frames(history % self.rows)[0]
        return (stack if self.frame_stack > 1 else stack[0]).cpu(), stack_rows

    def _write_rows(self, frames: torch.Tensor, prev: list[int]) -> list[int]:
        """Write new rows over the oldest; the numbers of the transitions this overwrites (some may repeat)."""
        count = frames.shape[0]
        ids = torch.arange(self._rows_written, self._rows_written + count, device=self.device)
        slots = ids % self.rows
        ended = self._transitions_reading(slots) if self._rows_written + count > self.rows else []
        self._storage[OBS].index_copy_(0, slots, frames.to(self.device, self._storage[OBS].dtype))
        own = [(self._rows_written + i) % self.rows for i in range(count)]
        prev_slots = [p % self.rows if p >= 0 else slot for p, slot in zip(prev, own)]
        linked = [(p % self.rows, slot) for p, slot in zip(prev, own) if p >= 0]
        self._prev[slots] = torch.tensor(prev, dtype=torch.long, device=self.device)
        self._prev_slot[slots] = torch.tensor(prev_slots, dtype=torch.long, device=self.device)
        self._next[slots] = NO_ROW
        self._number[slots] = NO_ROW
        self._child_slot[slots] = self.rows
        self._child_slot[torch.tensor([p for p, _ in linked], dtype=torch.long, device=self.device)] = torch.tensor(
            [child for _, child in linked], dtype=torch.long, device=self.device)
        self._rows_written += count
        return ended

    def _transitions_reading(self, slots: torch.Tensor) -> list[int]:
        """Numbers of the transitions whose stacks read the rows in ``slots``: the transition of each row and,
        with stacks, those of the next ``S - 1`` rows along its episode."""
        numbers = [self._number.index_select(0, slots)]
        chain = slots
        for _ in range(self.frame_stack - 1):
            chain = self._child_slot.index_select(0, chain)
            numbers.append(self._number.index_select(0, chain))
        return [number for number in torch.cat(numbers).tolist() if number >= 0]

    def _write_transitions(self, transitions: TensorDictBase, rows: list[int], next_rows: list[int]) -> None:
        n = len(rows)
        rows_t = torch.tensor(rows, dtype=torch.long, device=self.device)
        slots = rows_t % self.rows
        for key, store in self._storage.items():
            if key != OBS:
                store.index_copy_(0, slots, transitions.get(key).to(self.device, non_blocking=True))
        next_t = torch.tensor(next_rows, dtype=torch.long, device=self.device)
        numbers = torch.arange(self._transitions_written, self._transitions_written + n, device=self.device)
        self._next[slots] = next_t
        self._next_slot[slots] = next_t % self.rows
        self._number[slots] = numbers
        self._slot_of[numbers % self.capacity] = slots
        self._transitions_written += n

    def _retire(self, ended: list[int]) -> None:
        """Update the held range and its holes after transitions ``ended`` lost rows and new ones were written."""
        oldest = max(self._oldest, self._transitions_written - self.capacity)
        if not ended and not self._holes:
            self._oldest = oldest
            return
        holes = sorted({number for number in (*self._holes, *ended) if number >= oldest})
        leading = 0
        while leading < len(holes) and holes[leading] == oldest + leading:
            leading += 1
        self._set_holes(oldest + leading, holes[leading:])

    def _set_holes(self, oldest: int, holes: list[int]) -> None:
        self._oldest, self._holes = oldest, holes
        self._hole_ranks = torch.tensor([hole - i for i, hole in enumerate(holes)], dtype=torch.long,
                                        device=self.device) if holes else None

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

    def _stack_slots(self, slots: torch.Tensor) -> list[torch.Tensor]:
        """The slots of each row's stack, newest first (``S`` tensors), padded with the episode's first row."""
        chain = [slots]
        for _ in range(self.frame_stack - 1):
            chain.append(self._prev_slot.index_select(0, chain[-1]))
        return chain

    def _frames(self, stack_slots: torch.Tensor) -> torch.Tensor:
        """Observations ``[B, S, *frame]`` from ``[B, S]`` slots, oldest first."""
        store = self._storage[OBS]
        return store.index_select(0, stack_slots.reshape(-1)).view(*stack_slots.shape, *store.shape[1:])

    def _draw_slots(self, batch_size: int) -> torch.Tensor:
        """Slots of ``batch_size`` held transitions, uniform with replacement (see the module docstring)."""
        numbers = torch.randint(self._oldest, self._oldest + len(self), (batch_size,), device=self.device,
                                generator=self.generator)
        if self._hole_ranks is not None:
            numbers += torch.searchsorted(self._hole_ranks, numbers, right=True)
        return self._slot_of.index_select(0, numbers % self.capacity)

    def sample(self, batch_size: int) -> TensorDict:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        return self._gather(self._draw_slots(batch_size))

    def _window(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The last transition slot of each n-step window, the discounted reward sum and the step count.

        A held transition's following rows are newer than its own, hence held too: no liveness test."""
        last = slots
        reward_key = ("next", "reward")
        reward = self._storage[reward_key].index_select(0, slots) if reward_key in self._storage else None
        steps = torch.ones_like(slots)
        done = self._done(slots)
        for k in range(1, self.n_step):
            following = self._next_slot.index_select(0, last)
            cont = ~done & (self._number.index_select(0, following) >= 0)
            last = torch.where(cont, following, last)
            if reward is not None:
                step_reward = self._storage[reward_key].index_select(0, last)
                scale = (self.gamma ** k) * cont.to(step_reward.dtype).view(-1, *[1] * (step_reward.dim() - 1))
                reward += scale * step_reward
            steps += cont.long()
            done = done | ~cont | self._done(last)
        return last, reward, steps

    def _done(self, slots: torch.Tensor) -> torch.Tensor:
        done = self._storage.get(("next", "done"))
        if done is not None:
            return done.index_select(0, slots).reshape(len(slots)).bool()
        done = self._storage[("next", "terminated")].index_select(0, slots)
        truncated = self._storage.get(("next", "truncated"))
        if truncated is not None:
            done = done | truncated.index_select(0, slots)
        return done.reshape(len(slots)).bool()

    def _observation_pair(self, slots: torch.Tensor, last: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The observations of ``slots`` and the next observations of ``last``, the n-step windows' last
        transitions (None: one step, ``slots`` themselves)."""
        store = self._storage[OBS]
        next_slots = self._next_slot.index_select(0, slots if last is None else last)
        if self.frame_stack == 1:
            return store.index_select(0, slots), store.index_select(0, next_slots)
        stack = self._stack_slots(slots)
        # One step: the next stack is the stack shifted by one frame (its padding agrees), so one chain serves both.
        next_stack = [next_slots, *stack[:-1]] if last is None else self._stack_slots(next_slots)
        return (self._frames(torch.stack(stack[::-1], dim=1)),
                self._frames(torch.stack(next_stack[::-1], dim=1)))

    def _gather(self, slots: torch.Tensor) -> TensorDict:
        window, reward, steps = (None, None, None) if self.n_step == 1 else self._window(slots)
        last = slots if window is None else window
        observation, next_obs = self._observation_pair(slots, window)
        data: dict = {}
        for key, store in self._storage.items():
            node = data
            for part in key[:-1]:
                node = node.setdefault(part, {})
            if key == OBS:
                node[key[-1]] = observation
            elif key == ("next", "reward") and reward is not None:
                node[key[-1]] = reward
            else:
                node[key[-1]] = store.index_select(0, last if key[0] == "next" else slots)
        data.setdefault("next", {})["observation"] = next_obs
        if steps is not None:
            data["steps_to_next_obs"] = steps.unsqueeze(-1)
        # Without the constructor's shape and device checks: the storage agrees with both by
        # construction, and on CPU the checks cost a third of a sample.
        return TensorDict._new_unsafe(data, batch_size=torch.Size([len(slots)]), device=self.device)

    def _held_numbers(self) -> torch.Tensor:
        """The numbers of the held transitions, ascending."""
        numbers = torch.arange(self._oldest, self._transitions_written, device=self.device)
        if self._holes:
            keep = torch.ones_like(numbers, dtype=torch.bool)
            keep[torch.tensor(self._holes, device=self.device) - self._oldest] = False
            numbers = numbers[keep]
        return numbers

    def transitions_in_order(self) -> TensorDict:
        """Every transition held, oldest first (one-step, whatever ``n_step``), e.g. to write a dataset."""
        if self._storage is None:
            return TensorDict({}, batch_size=[0])
        slots = self._slot_of.index_select(0, self._held_numbers() % self.capacity)
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
        links = {name: getattr(self, f"_{name}")[:filled].clone() for name in ("prev", "next", "number")}
        links["stamp"] = self._slot_rows(filled)  # derived; kept for readers of the earlier layout
        return {"storage": storage, "links": links, "rows_written": self._rows_written,
                "transitions_written": self._transitions_written, "transitions_in_rows": len(self),
                "tails": {k: list(v) for k, v in self._tails.items()}, "generator": self.generator.get_state(),
                "capacity": self.capacity, "rows": self.rows, "frame_stack": self.frame_stack, "n_step": self.n_step}

    def load_state_dict(self, state: dict) -> None:
        for name in ("capacity", "rows", "frame_stack", "n_step"):
            if state[name] != getattr(self, name):
                raise ValueError(f"checkpointed replay buffer has {name} {state[name]}, this one {getattr(self, name)}")
        self._rows_written = state["rows_written"]
        self._transitions_written = state["transitions_written"]
        self._tails = {k: list(v) for k, v in state["tails"].items()}
        self.generator.set_state(state["generator"])
        filled = min(self._rows_written, self.rows)
        for name in ("prev", "next", "number"):  # the stored "stamp" follows from rows_written
            getattr(self, f"_{name}")[:filled] = state["links"][name].to(self.device)
        self._storage = None
        if state["storage"] is not None:
            self._storage = {}
            for key, values in state["storage"].items():
                store = torch.zeros((self.rows, *values.shape[1:]), dtype=values.dtype, device=self.device)
                store[:filled] = values.to(self.device)
                self._storage[key] = store
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        """The derived slots, the number ring, the held range and its holes, from the links alone."""
        filled = min(self._rows_written, self.rows)
        slots = torch.arange(filled, device=self.device)
        prev = self._prev[:filled]
        linked = self._live(prev)
        self._next_slot = self._next.clamp(min=0) % self.rows
        self._prev_slot = torch.where(self._prev >= 0, self._prev.clamp(min=0) % self.rows,
                                      torch.arange(self.rows, device=self.device))
        self._child_slot.fill_(self.rows)
        self._child_slot[prev[linked] % self.rows] = slots[linked]
        numbers = self._number[:filled]
        recent = numbers >= max(self._transitions_written - self.capacity, 0)
        self._slot_of[numbers[recent] % self.capacity] = slots[recent]
        held = numbers[recent & self._history_live(self._slot_rows(filled))]
        oldest = int(held.min()) if len(held) else self._transitions_written
        missing = torch.ones(self._transitions_written - oldest, dtype=torch.bool, device=self.device)
        missing[held - oldest] = False
        self._set_holes(oldest, (torch.nonzero(missing).squeeze(-1) + oldest).tolist())

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> ReplayBuffer:
        """A buffer rebuilt from :meth:`state_dict` (e.g. a checkpoint's), for reading its transitions."""
        buffer = cls(state["capacity"], device, frame_stack=state["frame_stack"], n_step=state["n_step"],
                     reserve=state["rows"] - state["capacity"])
        buffer.load_state_dict(state)
        return buffer
