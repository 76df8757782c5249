"""Updates per second on the training device: eager / compile / cudagraphs / cudagraphs + K=8,
against the CleanRL-style hand-written loops of ``benchmarks/updates.py``, and SAC's online env
steps per second on HalfCheetah-v5 (UTD 1).

rltrain's side is ``Trainer.run_updates`` (sampling, losses, one backward, optimizer steps, target
update) of a Trainer built from the configs with ``trainer.compile`` and ``trainer.updates_per_call``
set; replay-fed algorithms (SAC, TD3, DQN) sample from a replay buffer on the device holding
``updates.CAPACITY`` random transitions, offline ones (IQL, CQL, TD3+BC) from the dataset sampler.
The hand-written loop is built with the device as the default device (its networks, optimizers and
data on the device; it samples indices on the CPU, as CleanRL's buffers do). Each cell runs
``--warmup`` updates first (compilation and CUDA-graph capture happen there; their time is printed),
then updates for ``--seconds``, synchronizing the device before reading the clock.

On a CPU ``cudagraphs`` rows are skipped (``trainer.compile=cudagraphs`` needs CUDA).

    python benchmarks/gpu.py                                         # everything, on cuda if present
    python benchmarks/gpu.py --device cpu --hidden 64 --seconds 1 --batches 256 --online-steps 3000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import updates  # noqa: E402  (the hand-written loops and the Trainer builders)

ALGOS = ("sac", "td3", "iql", "cql", "td3bc", "dqn")
VARIANTS = {"eager": ("none", 1), "compile": ("compile", 1), "cudagraphs": ("cudagraphs", 1),
            "cudagraphs+K=8": ("cudagraphs", 8)}


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_rate(run, updates_per_call: int, seconds: float, device: str) -> float:
    """Updates per second of ``run()`` (``updates_per_call`` updates a call) over at least ``seconds``."""
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    synchronize(device)
    return calls * updates_per_call / (time.perf_counter() - start)


def hand_written(name: str, data: dict, batch: int, device: str):
    hand_cls, _, sizes = updates.ALGOS[name]
    on_device = {key: value.to(device) for key, value in data.items()}
    with torch.device(device):
        hand = hand_cls(on_device, sizes["obs"], sizes["act"], batch)
    hand.generator = torch.Generator().manual_seed(0)  # indices on the CPU, as CleanRL's buffers sample
    return hand


def rltrain_rate(name: str, variant: str, data: dict, batch: int, args) -> tuple[float, float]:
    """(updates/s, seconds of warm-up: compilation and capture) of one cell."""
    mode, per_call = VARIANTS[variant]
    _, overrides, _ = updates.ALGOS[name]
    trainer = updates.rltrain_trainer([*overrides, f"trainer.compile={mode}"], data, batch,
                                      offline=name in updates.OFFLINE, device=args.device)
    trainer.config.updates_per_call = per_call
    start = time.perf_counter()
    trainer.run_updates(args.warmup)
    synchronize(args.device)
    warmup = time.perf_counter() - start
    rate = timed_rate(lambda: trainer.run_updates(per_call), per_call, args.seconds, args.device)
    trainer._verify_finite()
    return rate, warmup


def update_table(args) -> None:
    print(f"| algorithm | batch | variant | rltrain updates/s | warm-up (compile) | hand-written updates/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:  # every algorithm at the first batch size first: a cut-short run still compares all
        for name in args.algos:
            update_rows(name, batch, args)


def update_rows(name: str, batch: int, args) -> None:
    _, _, sizes = updates.ALGOS[name]
    data = updates.make_data(sizes, discrete=sizes is updates.DISCRETE)
    try:
        hand = hand_written(name, data, batch, args.device)
        for _ in range(args.warmup):
            hand.update()
        theirs = timed_rate(hand.update, 1, args.seconds, args.device)
    except Exception as error:  # noqa: BLE001 - a row says what failed and the table goes on
        theirs = float("nan")
        print(f"| {name} | {batch} | hand-written | error: {type(error).__name__}: {error} | | | |", flush=True)
    for variant in args.variants:
        if VARIANTS[variant][0] == "cudagraphs" and torch.device(args.device).type != "cuda":
            print(f"| {name} | {batch} | {variant} | skipped (needs CUDA) | | {theirs:.0f} | |", flush=True)
            continue
        torch._dynamo.reset()
        try:
            ours, warmup = rltrain_rate(name, variant, data, batch, args)
        except Exception as error:  # noqa: BLE001
            print(f"| {name} | {batch} | {variant} | error: {type(error).__name__}: "
                  f"{str(error).splitlines()[0][:200]} | | {theirs:.0f} | |", flush=True)
            continue
        print(f"| {name} | {batch} | {variant} | {ours:.0f} | {warmup:.1f} s | {theirs:.0f} | "
              f"{ours / theirs:.2f}x |", flush=True)


def online_sac(args) -> None:
    """SAC on HalfCheetah-v5, UTD 1: env steps per second of the last logged interval (after compilation)."""
    from hydra import compose, initialize_config_module

    import rltrain.__main__  # noqa: F401  (registers the config resolvers)
    from rltrain.build import build_trainer

    print("\n| SAC online, HalfCheetah-v5, UTD 1 | env steps/s (last interval) | run time |")
    print("|---|---|---|")
    steps, interval = args.online_steps, max(1, args.online_steps // 4)
    for variant in args.variants:
        mode, per_call = VARIANTS[variant]
        if mode == "cudagraphs" and torch.device(args.device).type != "cuda":
            print(f"| {variant} | skipped (needs CUDA) | |", flush=True)
            continue
        torch._dynamo.reset()
        with tempfile.TemporaryDirectory() as tmp, initialize_config_module("rltrain.configs", version_base="1.3"):
            cfg = compose("config", overrides=[
                "algo=sac", "env=halfcheetah", "hparams=none", f"device={args.device}", "logger.progress=false",
                f"network.actor.num_cells=[{args.hidden},{args.hidden}]",
                f"network.critic.num_cells=[{args.hidden},{args.hidden}]", f"trainer.total_env_steps={steps}",
                f"trainer.learning_starts={interval // 2}", f"trainer.warmup_steps={interval // 2}",
                f"trainer.log_every={interval}", f"trainer.eval_every={steps}", f"trainer.checkpoint_every={steps}",
                "trainer.eval_episodes=1", f"trainer.compile={mode}", f"trainer.updates_per_call={per_call}"])
            start = time.perf_counter()
            (Path(tmp) / "run").mkdir()
            try:
                build_trainer(cfg, Path(tmp) / "run").fit()
            except Exception as error:  # noqa: BLE001
                print(f"| {variant} | error: {type(error).__name__}: {str(error).splitlines()[0][:200]} | |", flush=True)
                continue
            rows = (Path(tmp) / "run" / "metrics.csv").read_text().splitlines()
            header, last = rows[0].split(","), rows[-1].split(",")
            rate = float(last[header.index("env_steps_per_s")])
            print(f"| {variant} | {rate:.0f} | {time.perf_counter() - start:.0f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algos", nargs="*", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--hidden", type=int, default=256, help="width of the two hidden layers")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell")
    parser.add_argument("--warmup", type=int, default=24, help="updates before timing (compiles, captures)")
    parser.add_argument("--online-steps", type=int, default=20_000, help="SAC online env steps (0: skip)")
    args = parser.parse_args()
    updates.HIDDEN = args.hidden
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, MLP {args.hidden}x{args.hidden}, {args.seconds} s per cell")
    update_table(args)
    if args.online_steps:
        online_sac(args)


if __name__ == "__main__":
    main()
