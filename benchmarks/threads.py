"""SAC updates per second against torch's intra-op thread count, on an idle machine and beside one
competing CPU-bound process: what ``torch_threads`` should default to.

The update is rltrain's ``Trainer.update()`` built from the configs (benchmarks/updates.py's
``rltrain_trainer``: HalfCheetah's sizes, batch 256) with MLPs of 256x256 and of 64x64. The
competitor is one process spinning a core (as another training job or a test worker does). Each
cell is the median of ``--rounds`` timings of ``--seconds``.

    python benchmarks/threads.py                    # 1, 2 and all cores; 256x256 and 64x64
    python benchmarks/threads.py --rounds 5 --seconds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import updates  # noqa: E402  (benchmarks/updates.py: the Trainer built with the benchmark's sizes)

SPIN = "while True: pass"


def sac_trainer(hidden: int):
    updates.HIDDEN = hidden
    hand_cls, overrides, sizes = updates.ALGOS["sac"]
    data = updates.make_data(sizes, discrete=False)
    return updates.rltrain_trainer(overrides, data, sizes["batch"])


def median_rate(fn, seconds: float, rounds: int) -> float:
    return statistics.median(updates.rate(fn, seconds) for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    cores = os.cpu_count()
    all_threads = torch.get_num_threads()  # torch's default: what torch_threads=null gave
    threads = sorted({1, 2, all_threads})
    print(f"torch {torch.__version__}, {cores} logical cores, torch default {all_threads} threads; SAC update, "
          f"batch 256, median of {args.rounds} x {args.seconds} s")
    print("| MLP | threads | idle | + 1 competing process | slowdown |")
    print("|---|---|---|---|---|")
    for hidden in args.hidden:
        trainer = sac_trainer(hidden)
        for n in threads:
            torch.set_num_threads(n)
            for _ in range(20):
                trainer.update()
            idle = median_rate(trainer.update, args.seconds, args.rounds)
            competitor = subprocess.Popen([sys.executable, "-c", SPIN])
            try:
                busy = median_rate(trainer.update, args.seconds, args.rounds)
            finally:
                competitor.kill()
                competitor.wait()
            label = f"{n} (all)" if n == all_threads else str(n)
            print(f"| {hidden}x{hidden} | {label} | {idle:.0f}/s | {busy:.1f}/s | {idle / busy:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
