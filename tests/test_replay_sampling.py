"""Replay sampling: exact (never a transition with an overwritten row), uniform over the transitions held,
and free of reads back to the host, on interleaved streams whose short episodes leave holes in the held range."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from tensordict import TensorDict

from rltrain.data import ReplayBuffer

GAMMA = 0.9


def interleaved_streams(streams: int, steps: int, stack: int, seed: int, max_episode: int = 9,
                        slow: int = 1, paused=lambda t, s: False) -> TensorDict:
    """``streams`` envs stepped together (a vector env), episodes of 1..max_episode steps; with ``slow > 1``
    half the envs step only every ``slow``-th time (their next rows are old when their next step claims them),
    and env ``s`` skips step ``t`` where ``paused(t, s)``. Every frame is a distinct integer, the action names
    its transition; stacks pad episode starts with the first frame."""
    rng = random.Random(seed)
    frame = iter(range(1, 10**9))
    history = [[next(frame)] for _ in range(streams)]   # the frames of each stream's current episode
    left = [rng.randint(1, max_episode) for _ in range(streams)]
    obs, next_obs, action, reward, terminated, truncated, stream = [], [], [], [], [], [], []

    def stacked(frames: list[int]) -> list[int]:
        window = frames[-stack:]
        return [window[0]] * (stack - len(window)) + window

    for t in range(steps):
        for s in (range(streams) if t % slow == 0 else range(streams // 2, streams)):
            if paused(t, s):
                continue
            stream.append(s)
            obs.append(stacked(history[s]))
            history[s].append(next(frame))
            next_obs.append(stacked(history[s]))
            action.append(len(action))
            reward.append(float(rng.randint(-3, 3)))
            left[s] -= 1
            end = left[s] == 0
            cut = end and rng.random() < 0.3  # some episodes end truncated
            terminated.append(end and not cut)
            truncated.append(cut)
            if end:
                history[s], left[s] = [next(frame)], rng.randint(1, max_episode)
    as_obs = (lambda x: torch.tensor(x).unsqueeze(-1)) if stack > 1 else (lambda x: torch.tensor(x))
    term, trunc = torch.tensor(terminated).unsqueeze(-1), torch.tensor(truncated).unsqueeze(-1)
    return TensorDict({"observation": as_obs(obs), "action": torch.tensor(action), "stream": torch.tensor(stream),
                       "next": {"observation": as_obs(next_obs), "reward": torch.tensor(reward).unsqueeze(-1),
                                "terminated": term, "truncated": trunc, "done": term | trunc}},
                      batch_size=[len(action)])


def expected_sample(data: TensorDict, n_step: int) -> dict[int, tuple]:
    """For each transition (by action): its observation, and its n-step next observation, reward sum,
    terminated flag and step count, from the collected data (each window runs along its own stream)."""
    stream = data["stream"].tolist()
    following, latest = [None] * len(data), {}
    for i in reversed(range(len(data))):
        following[i], latest[stream[i]] = latest.get(stream[i]), i
    expected = {}
    for i in range(len(data)):
        reward, k, j = 0.0, 0, i
        while True:
            reward += GAMMA ** k * float(data["next", "reward"][j])
            k += 1
            if k == n_step or bool(data["next", "done"][j]) or following[j] is None:
                break
            j = following[j]
        expected[i] = (data["observation"][i], data["next", "observation"][j], reward,
                       bool(data["next", "terminated"][j]), k)
    return expected


def ingest(buffer: ReplayBuffer, data: TensorDict, seed: int) -> None:
    rng, start = random.Random(seed), 0
    while start < len(data):
        size = rng.choice([1, 2, 3, 5, 8, 13])
        buffer.extend(data[start:start + size])
        start += size


def ingest_until_holes(buffer: ReplayBuffer, data: TensorDict, holes: int) -> None:
    """Extend by 4 transitions at a time until the buffer has wrapped and has at least ``holes`` holes."""
    for start in range(0, len(data), 4):
        buffer.extend(data[start:start + 4])
        if buffer.wrapped and len(buffer._holes) >= holes:
            return
    raise AssertionError(f"the data never left {holes} holes")


CASES = [(1, 1, 4, 300, 1), (1, 3, 3, 400, 1), (4, 1, 3, 500, 1), (3, 3, 2, 200, 1),  # vector envs
         (1, 1, 8, 300, 10), (4, 3, 6, 200, 5)]  # (stack, n_step, streams, capacity, slow): half the envs slow


@pytest.mark.parametrize("stack, n_step, streams, capacity, slow", CASES)
def test_samples_are_exactly_collected_transitions_of_the_held_range(stack, n_step, streams, capacity, slow):
    data = interleaved_streams(streams, 1200 // streams, stack, seed=stack * 10 + n_step, slow=slow)
    buffer = ReplayBuffer(capacity, seed=0, frame_stack=stack, n_step=n_step, gamma=GAMMA, reserve=capacity // 10)
    ingest(buffer, data, seed=1)
    expected = expected_sample(data, n_step)
    held = buffer.transitions_in_order()["action"].tolist()
    assert buffer.wrapped and len(held) == len(buffer) and held == sorted(held)
    assert held[0] >= len(data) - capacity  # the newest capacity at most
    assert len(buffer) >= 0.6 * capacity  # short episodes take rows, but not most
    batch = buffer.sample(3000)
    assert set(batch["action"].tolist()) <= set(held)
    for i, a in enumerate(batch["action"].tolist()):
        obs, next_obs, reward, terminated, steps = expected[a]
        assert torch.equal(batch["observation"][i], obs) and torch.equal(batch["next", "observation"][i], next_obs)
        assert batch["next", "reward"][i].item() == pytest.approx(reward, abs=1e-4)
        assert bool(batch["next", "terminated"][i]) == terminated
        if n_step > 1:
            assert int(batch["steps_to_next_obs"][i]) == steps


@pytest.mark.parametrize("stack, n_step, streams, capacity, slow", CASES)
def test_held_range_kept_while_writing_equals_the_one_rebuilt_from_links(stack, n_step, streams, capacity, slow):
    """The holes and the range kept on each write are what a checkpoint's load finds by testing every row."""
    data = interleaved_streams(streams, 900 // streams, stack, seed=7, slow=slow)
    buffer = ReplayBuffer(capacity, seed=0, frame_stack=stack, n_step=n_step, reserve=capacity // 10)
    rng, start, holes_seen = random.Random(3), 0, 0
    while start < len(data):
        size = rng.choice([1, 4, 9, 30])
        buffer.extend(data[start:start + size])
        start += size
        assert_index_matches_rebuild(buffer)
        holes_seen += bool(buffer._holes)
    if streams > 1:
        assert holes_seen > 0  # the case the range alone would get wrong


def assert_index_matches_rebuild(buffer: ReplayBuffer) -> None:
    rebuilt = ReplayBuffer.from_state_dict(buffer.state_dict())
    assert (rebuilt._oldest, rebuilt._holes) == (buffer._oldest, buffer._holes)
    held = rebuilt._held_numbers() % buffer.capacity
    assert torch.equal(rebuilt._slot_of[held], buffer._slot_of[held])


def test_a_stream_resumed_after_most_of_a_ring_keeps_only_transitions_with_their_whole_stack():
    """A transition can continue a row that survives the write while that write overwrites the row's stack
    history: it is not held from the start. Pauses around a ring's length hit that write."""
    for pause in range(96, 108):
        data = interleaved_streams(2, 140, 4, seed=0, max_episode=1000,
                                   paused=lambda t, s: s == 0 and 6 <= t < 6 + pause)
        buffer = ReplayBuffer(100, seed=0, frame_stack=4, reserve=10)
        for i in range(len(data)):
            buffer.extend(data[i:i + 1])
            assert_index_matches_rebuild(buffer)
        expected = expected_sample(data, 1)
        batch = buffer.sample(500)
        for i, a in enumerate(batch["action"].tolist()):
            assert torch.equal(batch["observation"][i], expected[a][0])


@pytest.mark.parametrize("stack, n_step, streams, capacity, slow", [(1, 1, 8, 300, 10), (4, 3, 6, 200, 5)])
def test_samples_are_uniform_over_the_held_transitions(stack, n_step, streams, capacity, slow):
    data = interleaved_streams(streams, 8000 // streams, stack, seed=11, slow=slow)
    buffer = ReplayBuffer(capacity, seed=5, frame_stack=stack, n_step=n_step, reserve=capacity // 10)
    ingest_until_holes(buffer, data, holes=5)  # holes inside the held range, which sampling must skip unbiased
    held = buffer.transitions_in_order()["action"].tolist()
    per_transition = 400
    counts = Counter()
    for _ in range(per_transition * len(held) // 4000 + 1):
        counts.update(buffer.sample(4000)["action"].tolist())
    assert set(counts) == set(held)
    draws = sum(counts.values())
    p = 1 / len(held)
    mean, sd = draws * p, math.sqrt(draws * p * (1 - p))
    chi_square = sum((counts[a] - mean) ** 2 / mean for a in held)
    dof = len(held) - 1
    assert chi_square < dof + 5 * math.sqrt(2 * dof)  # about five standard deviations of a uniform's statistic
    assert max(abs(counts[a] - mean) for a in held) < 5.5 * sd  # no single transition favoured or starved


def test_sampling_reads_nothing_back_from_the_device(monkeypatch):
    """No .item(), .tolist(), int/float/bool of a tensor, nor a boolean mask (its size is a read) in sample()."""
    buffer = ReplayBuffer(200, seed=0, frame_stack=3, n_step=3, reserve=20)
    ingest(buffer, interleaved_streams(3, 200, 3, seed=1), seed=0)
    assert buffer._holes

    def read_back(*args, **kwargs):
        raise AssertionError("sample() read a tensor back to the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, read_back)
    monkeypatch.setattr(torch, "nonzero", read_back)
    monkeypatch.setattr(torch, "masked_select", read_back)
    batch = buffer.sample(64)
    monkeypatch.undo()
    assert batch.batch_size == torch.Size([64])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_on_cuda_does_not_synchronize():
    buffer = ReplayBuffer(200, "cuda", seed=0, frame_stack=3, n_step=3, reserve=20)
    ingest(buffer, interleaved_streams(3, 200, 3, seed=1), seed=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = buffer.sample(64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.device.type == "cuda"
