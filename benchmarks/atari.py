"""Atari speed and memory: DQN updates/s on 84x84x4 uint8 batches, env steps/s, replay peak RSS.

* ``updates``: DQN updates/s with the Nature CNN on batches of 32 uint8 ``[4, 84, 84]`` stacks,
  rltrain's path (ReplayBuffer.sample with frames rebuilt by index, the channels-last Nature CNN,
  DQNLoss, the CLI's Adam, hard target update) against a hand-written CleanRL-style loop (uint8 ``[N, 4, 84, 84]`` arrays indexed
  directly, ``x / 255`` in the network, MSE target, one Adam). Interleaved rounds in one process;
  the ratio is the median of per-round ratios.
* ``envs``: env steps/s of the Atari pipeline (env=atari's preprocessing) with 1, 4 and 8 envs,
  sync and async vectorization, random actions.
* ``memory``: peak RSS (``resource.getrusage``) of filling a frame-stack replay of ``--capacity``
  steps with Atari-sized frames, over the RSS before the replay was made; compares with
  ``capacity x 84 x 84`` bytes.

    python benchmarks/atari.py updates --threads 1
    python benchmarks/atari.py envs
    python benchmarks/atari.py memory --capacity 1000000
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from rltrain.build import make_adam
from rltrain.data import ReplayBuffer
from rltrain.envs import make_vector_env
from rltrain.modules import MLP, QValueActor
from rltrain.modules.cnn import EncodedHead, NatureCNN
from rltrain.objectives import get_objective
from rltrain.updaters import UPDATERS

ATARI = dict(noop_max=30, frame_skip=4, screen_size=84, frame_stack=4, fire_reset="auto", episodic_life=True,
             clip_rewards=True)
ACTIONS, BATCH, STACK = 4, 32, 4


def fake_episodes(steps: int, episode_length: int = 500, seed: int = 0) -> TensorDict:
    """Transitions of frame stacks as FrameStackObservation emits them (episodes of fixed length)."""
    rng = np.random.default_rng(seed)
    frames = torch.from_numpy(rng.integers(0, 256, size=(steps + 1, 84, 84), dtype=np.uint8))
    step_in_episode = torch.arange(steps + 1) % (episode_length + 1)
    index = torch.arange(steps + 1).unsqueeze(1) - torch.minimum(torch.arange(STACK - 1, -1, -1).unsqueeze(0),
                                                                   step_in_episode.unsqueeze(1))
    stacks = frames[index]
    valid = step_in_episode[:-1] < episode_length  # the step into a new episode is not a transition
    done = (step_in_episode[1:] == episode_length)[valid].unsqueeze(-1)
    n = int(valid.sum())
    return TensorDict({"observation": stacks[:-1][valid], "action": torch.from_numpy(rng.integers(0, ACTIONS, n)),
                       "next": {"observation": stacks[1:][valid], "reward": torch.ones(n, 1),
                                "terminated": done, "truncated": torch.zeros(n, 1, dtype=torch.bool), "done": done}},
                      batch_size=[n])


# ---- updates/s ------------------------------------------------------------------------------------

def rltrain_update(data: TensorDict):
    buffer = ReplayBuffer(len(data) + 10, seed=0, frame_stack=STACK)
    buffer.extend(data)
    net = EncodedHead(NatureCNN((STACK, 84, 84)), MLP(512, ACTIONS, []))
    loss = get_objective("dqn")(QValueActor(net, action_space="categorical"), action_space="categorical",
                                loss_function="l2", delay_value=True)
    loss.make_value_estimator(gamma=0.99)
    updater = UPDATERS["hard"](loss, value_network_update_interval=250)
    optimizer = make_adam(list(net.parameters()), lr=1e-4)  # the CLI's optimizer (fused where available)

    def update():
        out = loss(buffer.sample(BATCH))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        updater.step()
    return update


class CleanRLQNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(),
            nn.Linear(512, ACTIONS))

    def forward(self, x):
        return self.network(x / 255.0)


def handwritten_update(data: TensorDict):
    obs, next_obs = data["observation"], data["next", "observation"]  # both stored, as SB3's buffer CleanRL uses
    actions, rewards = data["action"], data["next", "reward"].squeeze(-1)
    dones = data["next", "terminated"].squeeze(-1).float()
    q, target = CleanRLQNetwork(), CleanRLQNetwork()
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-4)
    count = [0]

    def update():
        idx = torch.randint(len(obs), (BATCH,))
        with torch.no_grad():
            target_max = target(next_obs[idx]).max(dim=1).values
            td_target = rewards[idx] + 0.99 * target_max * (1 - dones[idx])
        old_val = q(obs[idx]).gather(1, actions[idx].unsqueeze(1)).squeeze()
        loss = F.mse_loss(td_target, old_val)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        count[0] += 1
        if count[0] % 250 == 0:
            target.load_state_dict(q.state_dict())
    return update


def rate(update, seconds: float) -> float:
    update()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        update()
        n += 1
    return n / (time.perf_counter() - start)


def bench_updates(args) -> None:
    torch.set_num_threads(args.threads)
    data = fake_episodes(20_000)
    ours, theirs = rltrain_update(data), handwritten_update(data)
    ratios, rates = [], []
    for _ in range(args.rounds):
        a, b = rate(ours, args.seconds), rate(theirs, args.seconds)
        ratios.append(a / b)
        rates.append((a, b))
    print(f"DQN Nature CNN, batch {BATCH}, {args.threads} thread(s): rltrain {statistics.median(r[0] for r in rates):.1f} "
          f"updates/s, hand-written {statistics.median(r[1] for r in rates):.1f} updates/s, "
          f"ratio {statistics.median(ratios):.2f}x (median of {args.rounds} rounds)")


# ---- env steps/s ----------------------------------------------------------------------------------

def bench_envs(args) -> None:
    for vectorization in ("sync", "async"):
        for n in (1, 4, 8):
            envs = make_vector_env(args.env_id, n, vectorization=vectorization, atari=ATARI)
            envs.reset(seed=0)
            actions = np.random.default_rng(0).integers(0, envs.single_action_space.n, size=(10_000, n))
            start, steps = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                envs.step(actions[steps % len(actions)])
                steps += 1
            elapsed = time.perf_counter() - start
            envs.close()
            print(f"{args.env_id} {vectorization} {n} env(s): {steps * n / elapsed:.0f} env steps/s "
                  f"({steps * n * 4 / elapsed:.0f} frames/s)")


# ---- replay memory --------------------------------------------------------------------------------

def current_rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def bench_memory(args) -> None:
    chunk = fake_episodes(10_000, seed=1)  # the input (stacks and next stacks), not part of the replay's cost
    before = current_rss()  # not the high-water mark: making the chunk peaked above what it keeps
    buffer = ReplayBuffer(args.capacity, seed=0, frame_stack=STACK)
    written = 0
    while written < args.capacity:
        buffer.extend(chunk)
        written += len(chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    frames = args.capacity * 84 * 84
    print(f"replay of {args.capacity} Atari steps: peak RSS +{(peak - before) / 2**30:.2f} GiB over the start "
          f"({(peak - before) / frames:.3f} x capacity x 84 x 84 bytes = {frames / 2**30:.2f} GiB); rows {buffer.rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("updates", "envs", "memory"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--env-id", default="ALE/Breakout-v5")
    parser.add_argument("--capacity", type=int, default=1_000_000)
    args = parser.parse_args()
    {"updates": bench_updates, "envs": bench_envs, "memory": bench_memory}[args.what](args)


if __name__ == "__main__":
    main()
