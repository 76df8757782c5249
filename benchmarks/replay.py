"""Replay sampling speed: ``ReplayBuffer.sample`` on a vector buffer and an Atari-like frame-stack buffer.

Buffers (filled once, then ``sample(batch)`` timed in interleaved rounds):

* ``vector``: 100k transitions of 17-dim float observations in episodes of 1000 steps (contiguous
  collection: each observation row is shared by a transition and its predecessor).
* ``unlinked``: 100k transitions whose next observation never equals the following observation,
  as ``benchmarks/updates.py`` fills its buffer (every transition starts a segment: two rows each, so
  the rows hold about half the capacity).
* ``atari``: 20k transitions of uint8 ``[4, 84, 84]`` frame stacks, episodes of 500 steps, batch 32
  and 256; ``--n-step 3`` adds DQN-Atari's 3-step returns.

``--against REF`` also times the ``ReplayBuffer`` of git revision ``REF`` (e.g. ``main``) in the same
process, on the same data, round by round:

    python benchmarks/replay.py --against bd41b9a --threads 1 --rounds 5 --seconds 1   # the sampler before this one
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from atari import fake_episodes  # noqa: E402

from rltrain.data.replay import ReplayBuffer  # noqa: E402

CAPACITY, OBS = 100_000, 17


def vector_episodes(steps: int, episode_length: int = 1000, linked: bool = True, seed: int = 0) -> TensorDict:
    rng = np.random.default_rng(seed)
    obs = torch.from_numpy(rng.standard_normal((steps + 1, OBS), dtype=np.float32))
    following = obs[1:] if linked else torch.from_numpy(rng.standard_normal((steps, OBS), dtype=np.float32))
    done = torch.from_numpy(np.arange(1, steps + 1) % episode_length == 0).unsqueeze(-1)
    return TensorDict({"observation": obs[:-1], "action": torch.from_numpy(rng.standard_normal((steps, 6),
                                                                                                dtype=np.float32)),
                       "next": {"observation": following, "reward": torch.ones(steps, 1), "terminated": done,
                                "truncated": torch.zeros_like(done), "done": done}}, batch_size=[steps])


def old_replay_class(ref: str):
    source = subprocess.run(["git", "show", f"{ref}:rltrain/data/replay.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "replay_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("replay_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReplayBuffer


def per_call_us(fn, seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=None, help="git revision whose ReplayBuffer to time as well")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--atari-steps", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = {"this": ReplayBuffer}
    if args.against:
        classes[args.against] = old_replay_class(args.against)
    cases = [("vector", vector_episodes(CAPACITY), {}, 256),
             ("unlinked", vector_episodes(CAPACITY, linked=False), {}, 256)]
    atari = fake_episodes(args.atari_steps)
    cases += [("atari", atari, {"frame_stack": 4}, 32), ("atari", atari, {"frame_stack": 4}, 256),
              ("atari n3", atari, {"frame_stack": 4, "n_step": 3}, 32)]
    print(f"{'buffer':10} {'batch':>5} " + " ".join(f"{name:>14}" for name in classes) + "   (µs per sample, median)")
    for label, data, kwargs, batch in cases:
        buffers = {}
        for name, cls in classes.items():
            buffers[name] = cls(len(data), seed=0, **kwargs)
            buffers[name].extend(data)
        times = {name: [] for name in classes}
        for _ in range(args.rounds):
            for name, buffer in buffers.items():
                times[name].append(per_call_us(lambda b=buffer: b.sample(batch), args.seconds))
        print(f"{label:10} {batch:5} " + " ".join(f"{statistics.median(t):14.1f}" for t in times.values())
              + f"   held {len(buffers['this'])}")


if __name__ == "__main__":
    main()
