"""``python -m rltrain [group=option ...] [key=value ...]``: compose the config, build, train.

A new run writes its resolved ``config.yaml``, ``overrides.yaml`` and ``git_commit.txt`` into the
run directory before training. ``resume=<run dir>`` reloads that config (plain ``key=value``
overrides may still change leaves, e.g. a larger ``trainer.total_env_steps``) and the last
checkpoint, and continues in the same directory.

Exit codes: 0 done; 1 training failed (a non-finite loss or state, a write the file system refused;
the last checkpoint is kept); 2 bad input, before any work; 3 stopped by SIGTERM/SIGINT after
writing a checkpoint (resume with ``resume=<run dir>``); 130 interrupted outside training.

``seeds=[0,1,2]`` (set by the ``hparams_search=`` configs) trains the job once per seed, each a full run
directory ``<job dir>/seed=<s>/``, and scores the job by the mean of the seeds' final scores. The task
function returns a job's score (see :func:`final_score`), which is what the Optuna sweeper maximizes.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from rltrain import checkpoint, extras, presets, run_dirs
from rltrain.errors import ConfigError
from rltrain.schema import check_group_choice, check_resume_override, validate_config
from rltrain.trainer import CheckpointFormatError, NonFiniteLossError, StopRequested, check_checkpoint_format

OmegaConf.register_new_resolver("rltrain_run_dir",
                                lambda resume, default: resume or run_dirs.unique_run_dir(default), replace=True)
OmegaConf.register_new_resolver("rltrain_job_dir", lambda overrides, num: _job_dir_name(str(overrides), num),
                                replace=True)
OmegaConf.register_new_resolver("rltrain_hydra_subdir", lambda resume: ".hydra_resume" if resume else ".hydra",
                                replace=True)


MAX_JOB_DIR = 120  # characters; file systems allow 255 per path component


def _job_dir_name(overrides: str, num: int) -> str:
    """A sweep job's folder: its overrides (``algo=sac,seed=0``), or, when they are too long for a
    file name, the job number and a hash of them (``job3-5f1c...``; the job's overrides.yaml and the
    sweep's multirun.yaml list them)."""
    if overrides and len(overrides) <= MAX_JOB_DIR:
        return overrides
    suffix = f"-{hashlib.sha1(overrides.encode()).hexdigest()[:10]}" if overrides else ""
    return f"job{num}{suffix}"


def _git_commit() -> str:
    """HEAD of the checkout rltrain runs from; without one (a Docker image), RLTRAIN_GIT_COMMIT, which
    the images set from their GIT_COMMIT build argument."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or os.environ.get("RLTRAIN_GIT_COMMIT") or "unknown"


def _write_run_files(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    OmegaConf.save(OmegaConf.create(overrides), run_dir / "overrides.yaml")
    (run_dir / "git_commit.txt").write_text(_git_commit() + "\n")


_ABSENT = object()


def _resume_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The saved config of ``run_dir`` with plain ``key=value`` overrides applied to existing leaves."""
    _check_resume_dir(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    OmegaConf.set_struct(cfg, True)
    for override in overrides:
        key, sep, value = override.partition("=")
        node = OmegaConf.select(cfg, key, default=_ABSENT) if sep and key[:1] not in "+~" else _ABSENT
        if node is _ABSENT or isinstance(node, DictConfig):
            raise ConfigError(f"resume: cannot apply {override!r}. A resumed run keeps its config and groups; "
                              "only existing leaf values may change (e.g. trainer.total_env_steps=50000)")
        check_resume_override(key)
        OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"value={value}"]).value, merge=False)
    if overrides:  # the run's files describe it as it continues (a later resume starts from them)
        validate_config(cfg)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        recorded = OmegaConf.load(run_dir / "overrides.yaml") if (run_dir / "overrides.yaml").exists() else []
        OmegaConf.save(OmegaConf.create([*recorded, *overrides]), run_dir / "overrides.yaml")
    cfg.resume = str(run_dir)
    return cfg


STOPPED_EXIT_CODE = 3  # stopped by SIGTERM/SIGINT after writing a checkpoint: the run can be resumed
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C outside training (or twice): the shell's code for SIGINT


class StopOnSignals:
    """While training: SIGTERM and SIGINT (Ctrl-C) ask the trainer to stop after the current update;
    it writes a checkpoint and raises :class:`~rltrain.trainer.StopRequested`. A second signal stops
    at once (the last checkpoint is kept).

    Under submitit (``hydra/launcher=submitit_*``) SIGTERM stays submitit's, and its preemption
    signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) stops the trainer the same way; then
    :meth:`hand_over` calls submitit's own handler, which requeues the job (the launcher's
    ``checkpoint``) and exits. The requeued job finds its checkpoint and resumes
    (see ``_hydra_main``).
    """

    last: StopOnSignals | None = None  # the most recent, for _hydra_main's StopRequested handler

    def __init__(self, trainer):
        self.trainer = trainer
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._submitit_signal = _submitit_preempt_signal()

    def __enter__(self) -> StopOnSignals:
        signals = {signal.SIGINT, self._submitit_signal} if self._submitit_signal else {signal.SIGTERM, signal.SIGINT}
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}
        StopOnSignals.last = self
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped without a new checkpoint")
        self.received = signum
        print(f"rltrain: {signal.Signals(signum).name} received: stopping after the current update and writing a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)
        self.trainer.request_stop()

    def hand_over(self) -> None:
        """After a stop on submitit's preemption signal: submitit's handler requeues the job and exits."""
        if self.received is not None and self.received == self._submitit_signal:
            self._previous[self.received](self.received, None)


def _submitit_preempt_signal() -> int | None:
    """The signal submitit requeues on, when this process is a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))


def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Build everything from ``cfg`` and train; returns the summary."""
    from rltrain.build import build_run
    from rltrain.envs import seed_everything
    from rltrain.threads import configure_torch_threads

    state = None
    if cfg.resume:
        cfg = _resume_config(run_dir, [o for o in overrides if not o.startswith("resume=")])
    validate_config(cfg, overrides)
    if cfg.resume:
        state, _ = checkpoint.load_latest(run_dir / "checkpoints")
        check_checkpoint_format(state)
    configure_torch_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    wandb_id = state["loggers"]["wandb_run_id"] if state else None
    trainer, used = build_run(cfg, run_dir, wandb_run_id=wandb_id,
                              initial_step=state["counters"]["position"] if state else 0)
    if state is None:
        _write_run_files(used, run_dir, overrides)
    else:
        trainer.load_state_dict(state)
        checkpoint.reapply_optimizer_settings(cfg.algo.optim, trainer.groups)
        trainer.loggers.csv.truncate_after(trainer.step, trainer.source.clock)
    exit_code = 1
    try:
        with StopOnSignals(trainer):
            summary = trainer.fit()
        trainer.loggers.summary(summary)
        exit_code = 0
    finally:
        trainer.loggers.close(exit_code)
    return summary


def final_score(summary: dict) -> float | None:
    """A run's score: its final normalized score where the task has reference scores, else its final
    evaluation return (None when it never evaluated)."""
    score = summary.get("final_normalized_score")
    return summary["final_eval_return"] if score is None else score


def run_seeds(cfg: DictConfig, job_dir: Path, overrides: list[str]) -> float:
    """Train ``cfg`` once per seed of ``cfg.seeds``, each in ``job_dir/seed=<s>``; returns the mean of
    their final scores. A seed that fails raises, so the whole job (an Optuna trial) fails."""
    seeds = list(cfg.seeds) if isinstance(cfg.seeds, ListConfig) else None
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds={cfg.seeds}: give a non-empty list of distinct seeds, e.g. seeds=[0,1,2]")
    if cfg.resume:
        raise ConfigError("resume cannot be combined with seeds: resume one seed's run directory "
                          "(<job dir>/seed=<s>) on its own")
    scores = []
    for seed in seeds:
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg.seed, seed_cfg.seeds = seed, None
        if seed_cfg.logger.wandb.name:
            seed_cfg.logger.wandb.name = f"{seed_cfg.logger.wandb.name},seed={seed}"
        summary = run(seed_cfg, job_dir / f"seed={seed}", [*overrides, f"seed={seed}"])
        _print_summary(summary)
        score = final_score(summary)
        if score is None:
            raise ConfigError("seeds: the runs need a final evaluation to be scored; set trainer.eval_episodes > 0")
        scores.append(score)
    mean = sum(scores) / len(scores)
    print(f"rltrain: mean final score over seeds {seeds}: {mean:.2f}")
    return mean


def _print_summary(summary: dict) -> None:
    ret, std = summary["final_eval_return"], summary["final_eval_return_std"]
    final = "n/a" if ret is None else f"{ret:.2f} ± {std:.2f}"
    if summary.get("final_normalized_score") is not None:
        final += f" (normalized score {summary['final_normalized_score']:.1f})"
    print(f"\nrltrain finished: final eval return {final} | env steps {summary['env_steps']} | "
          f"updates {summary['updates']} | time {summary['time_s']:.1f}s\nrun dir: {summary['run_dir']}")


def _name_sweep_job(cfg: DictConfig, hydra_cfg) -> None:
    """In a multirun, each job's W&B run joins the sweep's group and is named by its overrides."""
    wandb_cfg = cfg.logger.wandb
    wandb_cfg.group = wandb_cfg.group or f"{cfg.sweep_name}-{Path(hydra_cfg.sweep.dir).name}"
    wandb_cfg.name = wandb_cfg.name or hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"


class SqliteStorageFolder(Callback):
    """Hydra callback of the ``hparams_search=`` configs: makes the folder of an Optuna SQLite storage
    (``hydra.sweeper.storage=sqlite:///runs/optuna.db``) before the sweeper opens it, since SQLite
    creates the file but not its folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage")
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT}


def _exit_with_error(message: str, code: int) -> None:
    print(f"rltrain: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _check_resume_dir(run_dir: Path) -> None:
    if not checkpoint.has_checkpoint(run_dir / "checkpoints") or not (run_dir / "config.yaml").exists():
        raise ConfigError(f"resume={run_dir}: no checkpoint at {run_dir / 'checkpoints' / checkpoint.LAST}. Pass the "
                          "directory of an earlier run (it holds config.yaml and checkpoints/last.pt).")


def _check_new_run_dir(run_dir: Path) -> None:
    if (run_dir / "config.yaml").exists():
        raise ConfigError(f"hydra.run.dir={run_dir} holds an earlier run (its config.yaml); a new run would mix its "
                          f"files with that run's. Continue it with resume={run_dir}, or choose a new directory")


def _check_command_line(args: list[str]) -> None:
    """Checks Hydra would make too late or too vaguely: a mistyped group option (all options listed),
    and a ``resume=`` path without a checkpoint (Hydra would create that directory)."""
    values = {}
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        check_group_choice(arg)
        key, _, value = arg.partition("=")
        values[key] = value.strip("'\"")
    resume = values.get("resume", "null")
    if resume not in ("", "null"):
        _check_resume_dir(Path(resume))
    elif "hydra.run.dir" in values:  # before Hydra writes its files into that directory
        _check_new_run_dir(Path(values["hydra.run.dir"]))


def _write_failure(err: OSError, run_dir: Path) -> str:
    """One message for a write the file system refused: what, why, and how to go on."""
    kept = run_dir / "checkpoints" / checkpoint.LAST
    state = f"the last checkpoint {kept} is intact" if kept.exists() else "no checkpoint had been written yet"
    what = str(err.strerror) if isinstance(err, checkpoint.CheckpointWriteError) else \
        f"could not write {err.filename or run_dir}: {err.strerror}"
    return (f"{what}; {state}. Free disk space or make {run_dir} writable, then resume with: "
            f"python -m rltrain resume={run_dir}")


def _remove_unused_run_dir(run_dir: Path) -> None:
    """A new run that failed before writing its run files leaves no directory behind (only one this
    process created, holding nothing but Hydra's own files)."""
    if not run_dirs.created_by_this_process(run_dir):
        return
    ours = {p.name for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"}  # Hydra's job log
    if not ours and {p.name for p in (run_dir / ".hydra").glob("*")} <= HYDRA_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)


HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


@hydra.main(version_base="1.3", config_path="pkg://rltrain.configs", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        _name_sweep_job(cfg, hydra_cfg)
        if not cfg.resume and cfg.seeds is None and checkpoint.has_checkpoint(run_dir / "checkpoints"):
            # a requeued job (submitit, after a preemption): continue from its own checkpoint
            cfg.resume, overrides = str(run_dir), [f"resume={run_dir}"]
    try:
        if not cfg.resume:
            _check_new_run_dir(run_dir)
            print(presets.announce(cfg, hydra_cfg.runtime.choices))
        if cfg.seeds is not None:
            return run_seeds(cfg, run_dir, overrides)
        summary = run(cfg, run_dir, overrides)
    except StopRequested as stop:
        print(f"rltrain: {stop}. Resume with: python -m rltrain resume={run_dir}", file=sys.stderr, flush=True)
        if StopOnSignals.last is not None:
            StopOnSignals.last.hand_over()
        if multirun:
            raise
        sys.exit(STOPPED_EXIT_CODE)
    except (ConfigError, NonFiniteLossError, CheckpointFormatError, checkpoint.NonFiniteStateError, OSError) as err:
        if isinstance(err, OSError) and err.errno not in WRITE_ERRNOS:
            raise
        message = _write_failure(err, run_dir) if isinstance(err, OSError) else str(err)
        print(f"rltrain: error: {message}", file=sys.stderr, flush=True)
        if not cfg.resume:
            _remove_unused_run_dir(run_dir)
        if multirun:
            raise
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    _print_summary(summary)
    return final_score(summary)


def main() -> None:
    run_dirs.CREATED.clear()  # a new command line, a new run directory (main may run twice in one process)
    try:
        extras.check_plugins(sys.argv[1:])
        _check_command_line(sys.argv[1:])
    except (ConfigError, extras.MissingExtraError) as err:
        _exit_with_error(str(err), code=2)
    try:
        _hydra_main()
    except KeyboardInterrupt as err:  # Ctrl-C before training started, or a second one during it
        _exit_with_error(f"interrupted{f' ({err})' if str(err) else ''}; nothing saved since the last checkpoint",
                         code=INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
