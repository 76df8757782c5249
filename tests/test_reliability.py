"""Issue 14: no run lost to a kill, a preemption, a collision or a bad value.

Bad values go through the real command line (``rltrain.__main__.main`` in this process, which is
Hydra's full path, and a few in a fresh interpreter); checkpoints through the real files; datasets
through real Minari files.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import rltrain.__main__ as cli
from rltrain import checkpoint
from rltrain.data.minari_data import DatasetError, load_minari, to_offline_data, write_minari_dataset
from rltrain.envs import check_env_id
from rltrain.errors import ConfigError
from rltrain.make_dataset import random_policy, rollout
from rltrain.schema import validate_config
from tests.helpers import run_cli

# ---- bad values: one line on stderr, exit code 2, no traceback, no run directory left -------------

BAD_VALUES = [
    (["trainer.batch_size=abc"], "trainer.batch_size='abc'"),
    (["seed=abc"], "seed='abc'"),
    (["seed=-1"], "seed=-1"),
    (["algo.optim.actor.lr=-0.001"], "algo.optim.actor.lr=-0.001"),
    (["algo.optim.actor.lr=0", "algo.optim.qvalue.lr=0", "algo.optim.alpha.lr=0", "algo.optim.value.lr=0"],
     "every learning rate is 0"),
    (["algo.updater.tau=2"], "algo.updater.tau=2"),
    (["algo.gamma=1.5"], "algo.gamma=1.5"),
    (["algo.gamma=-0.1"], "algo.gamma=-0.1"),
    (["device=gpu"], "device='gpu'"),
    (["torch_threads=-1"], "torch_threads=-1"),
    (["torch_threads=0"], "torch_threads=0"),
    (["env.max_episode_steps=0"], "env.max_episode_steps=0"),
    (["env.num_envs=0"], "env.num_envs=0"),
    (["env.eval_num_envs=0"], "env.eval_num_envs=0"),
    (["network.actor.num_cells=[256,0]"], "network.actor.num_cells=[256, 0]"),
    (["network.critic.num_cells=[0]"], "network.critic.num_cells=[0]"),
    (["trainer.buffer_size=100", "trainer.batch_size=256"], "trainer.buffer_size=100 is smaller than"),
    (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0"),
    (["trainer.log_every=0"], "trainer.log_every=0"),
    (["trainer.updates_per_step=0"], "trainer.updates_per_step=0"),
    (["+trainer.total_env_stepz=5"], "unknown key 'trainer.total_env_stepz'"),
    (["+network.actor.num_cellz=[8]"], "unknown key 'network.actor.num_cellz'"),
    (["dataset=d4rl/hoper"], "Available options in 'dataset': d4rl/ant, d4rl/halfcheetah, d4rl/hopper, d4rl/walker2d, "
     "minari"),
    (["algo=dqn", "env=cartpole", "algo.exploration.eps_end=1.5"], "algo.exploration.eps_end=1.5"),
    (["algo=td3", "algo.loss.policy_noise=-1"], "algo.loss.policy_noise=-1"),
    (["algo=iql", "dataset=minari", "dataset.id=x/y-v0", "algo.loss.expectile=1"], "algo.loss.expectile=1"),
    (["env.id=no_such_module_xyz:Foo-v0"], "could not import module 'no_such_module_xyz'"),
    (["+env.kwargs.gravity=9.81"], "env.kwargs has unknown key(s) ['gravity'] for Pendulum-v1; its constructor "
                                   "accepts: render_mode, g"),
]


def run_in_process(args: list[str], run_root: Path) -> tuple[int, str]:
    """``python -m rltrain <args>`` through :func:`rltrain.__main__.main` in this process: (exit code, stderr)."""
    argv, stderr = sys.argv, io.StringIO()
    sys.argv = ["rltrain", *args, f"run_root={run_root}", "logger.progress=false"]
    code = 0
    try:
        with contextlib.redirect_stderr(stderr):
            cli.main()
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = argv
    return code, stderr.getvalue()


@pytest.mark.parametrize("args, message", BAD_VALUES, ids=[" ".join(a)[:60] for a, _ in BAD_VALUES])
def test_bad_value_stops_with_one_line_and_exit_code_2(tmp_path, args, message):
    code, stderr = run_in_process(args, tmp_path)
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("rltrain: error: "), stderr
    assert message in stderr and "Traceback" not in stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a failed run left files behind"


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["trainer.batch_size=abc"], "trainer.batch_size='abc' is not accepted: trainer.batch_size must be an integer"),
    (["+trainer.total_env_stepz=5"], "unknown key 'trainer.total_env_stepz'"),
    (["dataset=d4rl/hoper"], "Did you mean: d4rl/hopper"),
])
def test_bad_value_in_a_fresh_interpreter(tmp_path, args, message):
    proc = run_cli(args, tmp_path, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def compose_config(*overrides: str):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONFIGS / group).with_suffix("")) for p in (CONFIGS / group).rglob("*.yaml"))


SHIPPED = ([[f"algo={a}"] for a in options("algo")] + [[f"algo={a}", "dataset=d4rl/hopper"] for a in options("algo")]
           + [[f"{group}={option}"] for group in ("env", "experiment", "network", "source", "logger")
              for option in options(group)])


@pytest.mark.parametrize("overrides", SHIPPED, ids=[" ".join(o) for o in SHIPPED])
def test_every_shipped_config_passes_the_schema(overrides):
    validate_config(compose_config(*overrides), overrides)


@pytest.mark.parametrize("overrides", [
    ["algo.optim.actor.lr=0"],  # one frozen group is allowed, only all-zero is refused
    ["+algo.loss.alpha_init=0.5", "+env.kwargs.g=9.81", "+algo.optim.actor.schedule=cosine"],  # extension points
    ["torch_threads=auto"], ["torch_threads=null"], ["device=cuda:1"], ["env.max_episode_steps=null"],
])
def test_accepted_values_and_extension_points(overrides):
    composable = [o.removeprefix("+") if o.startswith("+algo.loss") else o for o in overrides]  # alpha_init exists
    validate_config(compose_config(*composable), overrides)


def test_float_for_an_integer_key_is_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"trainer.batch_size=1.5 is not accepted: .* an integer >= 1"):
        validate_config(compose_config("trainer.batch_size=1.5"))


# ---- checkpoints ------------------------------------------------------------------------------------

def small_state(value: float) -> dict:
    return {"objective": {"w": torch.full((4, 4), value)}, "optimizers": {"actor": {"state": {}}},
            "counters": {"env_steps": int(value)}}


def test_save_keeps_the_previous_checkpoint(tmp_path):
    checkpoint.save_checkpoint(small_state(1.0), tmp_path)
    checkpoint.save_checkpoint(small_state(2.0), tmp_path)
    assert checkpoint.load(tmp_path / "last.pt")["counters"]["env_steps"] == 2
    assert checkpoint.load(tmp_path / "previous.pt")["counters"]["env_steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]


def test_non_finite_parameters_are_never_saved(tmp_path):
    checkpoint.save_checkpoint(small_state(1.0), tmp_path)
    bad = small_state(3.0)
    bad["objective"]["w"][1, 2] = float("inf")
    with pytest.raises(checkpoint.NonFiniteStateError, match=r"objective\.w.*last good one is kept"):
        checkpoint.save_checkpoint(bad, tmp_path)
    assert checkpoint.load(tmp_path / "last.pt")["counters"]["env_steps"] == 1
    assert not (tmp_path / "previous.pt").exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_last_checkpoint_falls_back_to_previous(tmp_path, damage, capsys):
    checkpoint.save_checkpoint(small_state(1.0), tmp_path)
    checkpoint.save_checkpoint(small_state(2.0), tmp_path)
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\xff\xfe not a zip"}[damage])
    state, path = checkpoint.load_latest(tmp_path)
    assert path == tmp_path / "previous.pt" and state["counters"]["env_steps"] == 1
    warning = capsys.readouterr().err
    assert str(last) in warning and "resuming from the previous checkpoint" in warning
    # the damaged file is moved aside: the next save must not keep it as previous.pt
    checkpoint.save_checkpoint(small_state(3.0), tmp_path)
    assert checkpoint.load(tmp_path / "previous.pt")["counters"]["env_steps"] == 1


def test_no_readable_checkpoint_names_both_files(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointReadError,
                       match=r"last\.pt is an empty file and .*previous\.pt is missing"):
        checkpoint.load_latest(tmp_path)


DISK_FULL_SCRIPT = textwrap.dedent("""
    import resource, signal, sys, torch
    from pathlib import Path
    from rltrain import checkpoint
    directory = Path(sys.argv[1])
    checkpoint.save_checkpoint({"w": torch.zeros(100)}, directory)                  # about 1.5 kB
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    try:
        checkpoint.save_checkpoint({"w": torch.ones(100_000)}, directory)             # 400 kB: does not fit
    except checkpoint.CheckpointWriteError as err:
        print(err.strerror)
""")


def test_a_write_that_does_not_fit_keeps_the_previous_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"could not write checkpoint {tmp_path / 'last.pt'}: File too large" in proc.stdout
    assert torch.equal(checkpoint.load(tmp_path / "last.pt")["w"], torch.zeros(100))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "the temporary file was left behind"


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # no optimizer steps are needed here
def test_optimizer_settings_are_reapplied_after_restore():
    from rltrain.trainer import OptimizerGroup

    def group(name, lr, schedule):
        param = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.Adam([param], lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 - t / 10) if schedule else None
        return OptimizerGroup(name, optimizer, [param], scheduler=scheduler)

    saved = [group("actor", 1e-3, False), group("critic", 1e-3, True)]
    for _ in range(4):
        saved[1].scheduler.step()
    restored = [group("actor", 1e-3, False), group("critic", 1e-3, True)]
    for new, old in zip(restored, saved):
        new.optimizer.load_state_dict(old.optimizer.state_dict())
        if old.scheduler is not None:
            new.scheduler.load_state_dict(old.scheduler.state_dict())
    optim_cfg = OmegaConf.create({name: {"lr": 0.05, "betas": [0.5, 0.9], "eps": 1e-5, "weight_decay": 0.1}
                                  for name in ("actor", "critic")})
    checkpoint.reapply_optimizer_settings(optim_cfg, restored)
    actor, critic = (g.optimizer.param_groups[0] for g in restored)
    assert actor["lr"] == 0.05 and actor["betas"] == (0.5, 0.9) and actor["eps"] == 1e-5
    assert critic["lr"] == pytest.approx(0.05 * 0.6)  # 4 of 10 steps into the linear decay
    restored[1].scheduler.step()
    assert critic["lr"] == pytest.approx(0.05 * 0.5)


# ---- run directories -----------------------------------------------------------------------------

def test_concurrent_processes_get_distinct_run_directories(tmp_path):
    base = tmp_path / "runs" / "same-second"
    script = "import sys; from rltrain.run_dirs import unique_run_dir; print(unique_run_dir(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(base)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    dirs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert len(set(dirs)) == 4 and all(Path(d).is_dir() for d in dirs)
    assert str(base) in dirs and {d.removeprefix(str(base)) for d in dirs} == {"", "-1", "-2", "-3"}


def test_forcing_hydra_run_dir_onto_an_earlier_run_is_refused(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "config.yaml").write_text("seed: 0\n")
    code, stderr = run_in_process([f"hydra.run.dir={earlier}"], tmp_path)
    assert code == 2 and "holds an earlier run" in stderr and f"resume={earlier}" in stderr
    assert sorted(p.name for p in earlier.iterdir()) == ["config.yaml"], "files were written into the earlier run"


def test_an_unwritable_run_root_is_one_message(tmp_path):
    (tmp_path / "a-file").write_text("")
    code, stderr = run_in_process([], tmp_path / "a-file" / "runs")  # mkdir fails below a file, even as root
    assert code == 2 and stderr.count("\n") == 1
    assert "cannot create the run directory" in stderr and "Pass a writable run_root" in stderr


def test_mistyped_resume_path_is_not_created(tmp_path):
    code, stderr = run_in_process([f"resume={tmp_path / 'no' / 'such-run'}"], tmp_path)
    assert code == 2 and "no checkpoint at" in stderr
    assert not (tmp_path / "no").exists()


# ---- datasets, environments, W&B ---------------------------------------------------------------------

@pytest.mark.parametrize("field, episode, step", [("observations", 2, 5), ("actions", 1, 0), ("rewards", 3, 7)])
def test_non_finite_dataset_values_are_named_at_load(minari_session_root, field, episode, step):
    env = gym.make("Pendulum-v1")
    episodes = rollout(env, random_policy(env, 0), 800, seed=1)[:4]
    episodes[episode][field] = np.array(episodes[episode][field], dtype=np.float64)
    episodes[episode][field][step] = np.nan if field != "rewards" else np.inf
    dataset_id = f"rltrain-test/nonfinite-{field}/tiny-v0"
    write_minari_dataset(dataset_id, episodes, env="Pendulum-v1", algorithm_name="random")
    with pytest.raises(DatasetError, match=rf"{field} hold non-finite values .* episode {episode}, step {step} "):
        to_offline_data(load_minari(dataset_id, download=False))


def test_module_prefixed_env_id_imports_the_module(tmp_path, monkeypatch):
    (tmp_path / "rltrain_custom_env.py").write_text(textwrap.dedent("""
        import gymnasium as gym
        gym.register("RltrainCustomPendulum-v0", entry_point="gymnasium.envs.classic_control:PendulumEnv",
                     max_episode_steps=50)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    check_env_id("rltrain_custom_env:RltrainCustomPendulum-v0")
    with pytest.raises(ConfigError, match="module 'rltrain_custom_env' did not register it"):
        check_env_id("rltrain_custom_env:RltrainCustomPendulumm-v0")


@pytest.mark.parametrize("server", ["closed port", "silent"])
def test_wandb_with_a_key_and_no_network_goes_offline_quickly(tmp_path, monkeypatch, capsys, server):
    """A closed port (refused at once) and a server that accepts but never answers (the probe's timeout)."""
    from rltrain.loggers import WANDB_PROBE_TIMEOUT_S, WandbLogger

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if server == "silent":
        listener.listen(1)
    else:
        listener.close()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    start = time.perf_counter()
    logger = WandbLogger(tmp_path, {"seed": 0}, project="p", entity=None, group=None, name=None, tags=None,
                         mode=None)
    logger.close()
    listener.close()
    assert time.perf_counter() - start < WANDB_PROBE_TIMEOUT_S + 20  # the probe, then W&B's own offline start
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rltrain: warning")]
    assert len(warnings) == 1 and f"W&B is unreachable (127.0.0.1:{port}" in warnings[0]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# ---- end to end: resume, damaged checkpoints, a full disk, concurrent runs ------------------------------

SHORT = ["network.actor.num_cells=[32,32]", "network.critic.num_cells=[32,32]", "trainer.total_env_steps=1200",
         "trainer.warmup_steps=200", "trainer.learning_starts=200", "trainer.batch_size=64", "trainer.eval_every=600",
         "trainer.eval_episodes=2", "trainer.log_every=200", "trainer.checkpoint_every=600", "logger.progress=false",
         "env.eval_num_envs=2", "torch_threads=1", "seed=11"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished SHORT run: checkpoints/last.pt (1200 env steps) and previous.pt (600)."""
    root = tmp_path_factory.mktemp("finished")
    run_cli(SHORT, root)
    (run_dir,) = [p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"]
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def read_eval_steps(run_dir: Path) -> list[int]:
    import csv

    with (run_dir / "eval.csv").open(newline="") as f:
        return [int(row["env_step"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_applies_optimizer_overrides_and_refuses_architecture_changes(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    before = checkpoint.load(run_dir / "checkpoints" / "last.pt")["optimizers"]
    actor_lr = before["actor"]["param_groups"][0]["lr"]
    assert before["qvalue"]["param_groups"][0]["lr"] != 0.05
    run_cli([f"resume={run_dir}", "trainer.total_env_steps=1800", "algo.optim.qvalue.lr=0.05"], tmp_path)
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["counters"]["env_steps"] == 1800
    assert state["optimizers"]["qvalue"]["param_groups"][0]["lr"] == 0.05
    assert state["optimizers"]["actor"]["param_groups"][0]["lr"] == pytest.approx(actor_lr)  # untouched
    assert OmegaConf.load(run_dir / "config.yaml").algo.optim.qvalue.lr == 0.05  # a later resume keeps it
    refused = run_cli([f"resume={run_dir}", "network.actor.num_cells=[64,64]"], tmp_path, check=False)
    assert refused.returncode == 2 and "network.actor.num_cells cannot change on a resumed run" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1


@pytest.mark.slow
def test_resume_from_a_truncated_last_checkpoint_uses_the_previous_one(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    proc = run_cli([f"resume={run_dir}"], tmp_path)
    assert f"checkpoint {last} is truncated or corrupt" in proc.stderr
    assert "resuming from the previous checkpoint" in proc.stderr
    assert checkpoint.load(last)["counters"]["env_steps"] == 1200  # the 600..1200 part was trained again
    assert read_eval_steps(run_dir) == [600, 1200]


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_how_to_resume(finished_run, tmp_path):
    import resource
    import signal

    sizes = [(finished_run / "checkpoints" / name).stat().st_size for name in ("previous.pt", "last.pt")]
    limit = sum(sizes) // 2  # the 600-step checkpoint fits, the 1200-step one (a fuller replay buffer) does not

    def file_size_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "rltrain", *SHORT, f"run_root={tmp_path}"], capture_output=True,
                          text=True, env=env, timeout=600, preexec_fn=file_size_limit)
    (run_dir,) = [p.parent for p in tmp_path.rglob("config.yaml") if p.parent.name != ".hydra"]
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rltrain: error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "File too large" in errors[0] and f"python -m rltrain resume={run_dir}" in errors[0]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["counters"]["env_steps"] == 600
    run_cli([f"resume={run_dir}"], tmp_path)
    assert read_eval_steps(run_dir) == read_eval_steps(finished_run) == [600, 1200]


@pytest.mark.slow
def test_concurrent_runs_with_one_run_directory_name_stay_apart(tmp_path):
    """Three runs whose run directory resolves to the same name at once (as a timestamp does within a second)."""
    base = tmp_path / "runs" / "same-second"
    args = [*SHORT, "trainer.total_env_steps=400", "trainer.eval_every=400", "trainer.checkpoint_every=400",
            "trainer.eval_episodes=1", "env.eval_num_envs=1",
            f"hydra.run.dir='${{rltrain_run_dir:${{resume}},{base}}}'"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    procs = {seed: subprocess.Popen([sys.executable, "-m", "rltrain", *args, f"seed={seed}"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (0, 1, 2)}
    for proc in procs.values():
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    run_dirs = sorted(base.parent.iterdir())
    assert [p.name for p in run_dirs] == ["same-second", "same-second-1", "same-second-2"]
    seeds = set()
    for run_dir in run_dirs:
        seeds.add(OmegaConf.load(run_dir / "config.yaml").seed)
        assert read_eval_steps(run_dir) == [400]
        assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["counters"]["env_steps"] == 400
    assert seeds == {0, 1, 2}


# ---- SIGTERM / SIGINT -------------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("time", "updates_per_s", "env_steps_per_s")}
                for row in csv.DictReader(f)]


def stop_mid_run(args: list[str], root: Path, sig: int) -> tuple[subprocess.CompletedProcess, Path]:
    """Start a run, send ``sig`` once its first periodic checkpoint exists, wait for it to stop."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rltrain", *args, f"run_root={root}"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(root.rglob("checkpoints/last.pt")):
        time.sleep(0.05)
    time.sleep(1.0)  # into the next checkpoint interval
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    (run_dir,) = [p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), run_dir


STOP_RUN = [*SHORT, "trainer.total_env_steps=3000", "trainer.checkpoint_every=1000", "trainer.eval_every=1000",
            "trainer.log_every=250", "seed=7"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(
        sig, tmp_path, tiny_datasets):
    """Offline (the dataset source has no episodes in flight): stopping mid-interval and resuming gives
    exactly the uninterrupted run's metrics."""
    args = [*STOP_RUN, "algo=iql", "dataset=minari", f"dataset.id={tiny_datasets['pendulum']}",
            "trainer.total_updates=3000"]
    run_cli(args, tmp_path / "whole")
    (whole,) = [p.parent for p in (tmp_path / "whole").rglob("config.yaml") if p.parent.name != ".hydra"]

    proc, cut = stop_mid_run(args, tmp_path / "cut", sig)
    assert proc.returncode == cli.STOPPED_EXIT_CODE, proc.stderr
    assert f"{signal.Signals(sig).name} received" in proc.stderr and "Traceback" not in proc.stderr
    assert f"Resume with: python -m rltrain resume={cut}" in proc.stderr
    stopped_at = checkpoint.load(cut / "checkpoints" / "last.pt")["counters"]["updates"]
    assert 1000 < stopped_at < 3000 and stopped_at % 1000, "the stop did not write its own checkpoint"

    run_cli([f"resume={cut}"], tmp_path / "cut")
    assert read_rows(cut / "eval.csv") == read_rows(whole / "eval.csv")
    assert read_rows(cut / "metrics.csv") == read_rows(whole / "metrics.csv")


ONLINE_STOPS = {  # each stops after its first checkpoint (1000 on its clock), before its last
    "sac": ["algo=sac", "env.num_envs=2", "env.normalize_observations=true", "trainer.total_env_steps=2000"],
    "dqn-egreedy": ["algo=dqn", "env=cartpole"],
    "ppo": ["algo=ppo", "algo.steps_per_env=50", "env.num_envs=2", "algo.epochs=20", "trainer.total_env_steps=4000"],
    "cal_ql-online-phase": ["algo=cal_ql", "dataset=minari", "source=offline_to_online", "source.offline_updates=200",
                            "source.online_env_steps=1800", "source.mix=0.5", "algo.loss.num_random=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(ONLINE_STOPS))
def test_an_online_run_stopped_mid_episode_resumes_exactly(mode, tmp_path, tiny_datasets):
    """SIGTERM between checkpoints with episodes in flight: nothing is cut; resume replays the actions sent
    since the envs' last restart and continues exactly like the uninterrupted run (replay, rollout and
    offline-to-online sources; observation normalization, epsilon-greedy, Cal-QL's held-back episodes)."""
    args = [*STOP_RUN, *ONLINE_STOPS[mode]]
    if "dataset=minari" in args:
        args.append(f"dataset.id={tiny_datasets['pendulum']}")
    run_cli(args, tmp_path / "whole")
    (whole,) = [p.parent for p in (tmp_path / "whole").rglob("config.yaml") if p.parent.name != ".hydra"]

    proc, cut = stop_mid_run(args, tmp_path / "cut", signal.SIGTERM)
    assert proc.returncode == cli.STOPPED_EXIT_CODE, proc.stderr
    state = checkpoint.load(cut / "checkpoints" / "last.pt")
    stopped_at = state["counters"]["position"]
    assert stopped_at % 1000 and stopped_at < checkpoint.load(whole / "checkpoints" / "last.pt")["counters"]["position"]
    collector = state["source"].get("online", state["source"])["collector"]
    assert collector["actions"] is not None, "the stop cut the episodes in flight"

    run_cli([f"resume={cut}"], tmp_path / "cut")
    assert read_rows(cut / "eval.csv") == read_rows(whole / "eval.csv")
    assert read_rows(cut / "metrics.csv") == read_rows(whole / "metrics.csv")


def submitit_job_pids() -> list[int]:
    """Processes running a submitit job (``python -u -m submitit.core._submit <folder>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"submitit.core._submit" in argv[1:4]:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_a_preempted_submitit_job_checkpoints_requeues_and_resumes_itself(tmp_path, tiny_datasets):
    """submitit's preemption signal (USR2) mid-run: the job writes a checkpoint, submitit requeues it, and
    the requeued job resumes from that checkpoint to the uninterrupted run's exact metrics."""
    args = [*STOP_RUN, "algo=iql", "dataset=minari", f"dataset.id={tiny_datasets['pendulum']}",
            "trainer.total_updates=3000"]
    run_cli(args, tmp_path / "whole")
    (whole,) = [p.parent for p in (tmp_path / "whole").rglob("config.yaml") if p.parent.name != ".hydra"]

    before = set(submitit_job_pids())
    env = {**os.environ, "WANDB_MODE": "disabled"}
    sweep = subprocess.Popen([sys.executable, "-m", "rltrain", "-m", "hydra/launcher=submitit_local", *args,
                              "sweep_name=preempt", f"run_root={tmp_path / 'sweep'}"], env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and sweep.poll() is None and not list((tmp_path / "sweep").rglob("last.pt")):
        time.sleep(0.05)
    time.sleep(1.0)
    (job_pid,) = set(submitit_job_pids()) - before
    os.kill(job_pid, signal.SIGUSR2)
    assert sweep.wait(timeout=600) == 0, sweep.stderr.read()
    (job,) = [p.parent for p in (tmp_path / "sweep").rglob("config.yaml") if p.parent.name != ".hydra"]
    log = "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*_log.*"))
    assert "SIGUSR2 received" in log and "Requeued job" in log
    assert read_rows(job / "eval.csv") == read_rows(whole / "eval.csv")
    assert read_rows(job / "metrics.csv") == read_rows(whole / "metrics.csv")
