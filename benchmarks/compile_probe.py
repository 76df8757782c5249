"""Which objectives ``trainer.compile=compile`` compiles: every configs/algo/*.yaml at tiny sizes.

Each algorithm trains a few updates with 32x32 networks (Pendulum, or CartPole for discrete
actions; offline and imitation algorithms on a ~600-transition random-policy Minari dataset made
here from the real env) with ``trainer.compile=compile``, and the probe reports, per algorithm:
``compiled`` (no graph break), ``graph breaks`` (compiled in pieces, the reasons), ``eager`` (the
Trainer fell back: the reason), or the error, with the wall time of the run (mostly compilation).

    python benchmarks/compile_probe.py                 # every algorithm
    python benchmarks/compile_probe.py --algos sac cql
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

DISCRETE = {"dqn", "c51", "discrete_cql", "discrete_iql"}
WITH_DATASET = {"act", "bc", "diffusion_bc", "dt", "online_dt", "gail", "gail_sac", "iql", "cql", "td3bc", "cal_ql",
                "rlpd", "discrete_cql", "discrete_iql"}
MODE = "compile"
OFFLINE_TO_ONLINE = {"cal_ql", "rlpd"}
TINY = ["network.actor.num_cells=[32,32]", "network.critic.num_cells=[32,32]", "trainer.batch_size=32",
        "trainer.eval_episodes=1", "logger.progress=false", "hparams=none", "device=cpu", "torch_threads=1",
        ]


def algorithms() -> list[str]:
    from rltrain.schema import group_options

    return group_options("algo")


def make_datasets() -> dict[str, str]:
    """A random-policy dataset of ~600 real transitions for Pendulum and CartPole (as the tests' fixture)."""
    import gymnasium as gym

    from rltrain.data.minari_data import write_minari_dataset
    from rltrain.make_dataset import random_policy, rollout

    ids = {}
    for name, env_id, refs in (("pendulum", "Pendulum-v1", (-1200.0, -150.0)), ("cartpole", "CartPole-v1", (20.0, 500.0))):
        env = gym.make(env_id)
        ids[name] = f"rltrain-probe/{name}/tiny-v0"
        write_minari_dataset(ids[name], rollout(env, random_policy(env, 0), 600, seed=0), env=env_id,
                             ref_min_score=refs[0], ref_max_score=refs[1], algorithm_name="random")
    return ids


def overrides_for(algo: str, datasets: dict[str, str]) -> list[str]:
    env = "cartpole" if algo in DISCRETE else "pendulum"
    budget = ["trainer.total_env_steps=400", "trainer.learning_starts=100", "trainer.warmup_steps=100",
              "trainer.eval_every=400", "trainer.total_updates=20", "trainer.eval_every=20"]
    data = [f"env={env}"]
    if algo in WITH_DATASET:
        data += ["dataset=minari", f"dataset.id={datasets[env]}"]
    if algo in OFFLINE_TO_ONLINE:
        data += ["source=offline_to_online", "source.offline_updates=10", "source.online_env_steps=300"]
    return [f"algo={algo}", *data, *TINY, *budget, f"trainer.compile={MODE}"]


def probe(algo: str, datasets: dict[str, str], root: Path) -> str:
    from hydra import compose, initialize_config_module

    import rltrain.__main__  # noqa: F401  (registers the config resolvers)
    from rltrain.build import build_trainer
    from rltrain.compiled import ObjectiveNotCompilable

    torch._dynamo.reset()
    start = time.perf_counter()
    try:
        with initialize_config_module("rltrain.configs", version_base="1.3"):
            cfg = compose("config", overrides=overrides_for(algo, datasets))
        trainer = build_trainer(cfg, root / algo)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ObjectiveNotCompilable)
            trainer.fit()
    except Exception as error:  # noqa: BLE001 - the probe reports every failure and goes on
        return f"| {algo} | error | {type(error).__name__}: {str(error).splitlines()[0][:200]} | " \
               f"{time.perf_counter() - start:.0f} s |"
    seconds = time.perf_counter() - start
    notes = [str(w.message) for w in caught if issubclass(w.category, ObjectiveNotCompilable)]
    losses = trainer._losses
    if losses.eager_reason is not None:
        verdict = "eager (fallback)"
    elif notes:
        verdict = "graph breaks"
    elif not losses._compiled:
        verdict = "not reached (no Trainer.update)"
    else:
        verdict = "compiled"
    detail = "; ".join(note[:300] for note in notes) or f"{len(losses._compiled)} due set(s)"
    return f"| {algo} | {verdict} | {detail} | {seconds:.0f} s |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=None)
    parser.add_argument("--mode", default="compile", help="trainer.compile (none: the same runs eagerly, for timing)")
    args = parser.parse_args()
    global MODE
    MODE = args.mode
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(tmp) / "minari")
        datasets = make_datasets()
        print(f"torch {torch.__version__}, trainer.compile={MODE}, CPU, 1 thread, 32x32 networks")
        print("| algorithm | result | detail | time |")
        print("|---|---|---|---|")
        for algo in args.algos or algorithms():
            print(probe(algo, datasets, Path(tmp) / "runs"), flush=True)


if __name__ == "__main__":
    main()
