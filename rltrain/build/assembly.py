"""Config -> a ready Trainer: checks, device, task and source, agent, optimizers, loggers."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from rltrain.build.agents import NormalizedPolicy, build_agent, dt_policies
from rltrain.build.optim import build_groups, build_updater
from rltrain.build.sources import Task, build_source, check_frame_stack, load_task, reward_labeler, source_kind
from rltrain.compiled import check_compile_mode
from rltrain.envs import check_env_id
from rltrain.errors import ConfigError
from rltrain.loggers import ConsoleProgress, CSVLogger, Loggers, TensorboardLogger, WandbLogger
from rltrain.trainer import Trainer, TrainerConfig
from rltrain.video import VideoRecorder

LOGGER_BACKENDS = ("wandb", "tensorboard")
# source kind -> the trainer key of its budget
BUDGET_KEYS = {"replay": "trainer.total_env_steps", "dataset": "trainer.total_updates",
               "rollout": "trainer.total_env_steps", "finetune": "trainer.total_updates",
               "offline_to_online": "source.online_env_steps"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return device


def task_name(cfg: DictConfig) -> str:
    """What a run learns from: the dataset id when it has one, else the env id."""
    return cfg.dataset.id if cfg.dataset is not None else cfg.env.id


def validate(cfg: DictConfig) -> str:
    """Checks that need no environment or dataset: fail before anything is built. Returns the source kind."""
    t = cfg.trainer
    if cfg.dataset is None:
        check_env_id(cfg.env.id)
        if cfg.algo.get("imitation"):
            raise ConfigError(f"algo={cfg.algo.name} imitates demonstrations: add a dataset of them, e.g. "
                              "dataset=minari dataset.id=<Minari id> (python -m rltrain.make_dataset quality=expert "
                              "makes one); the policy trains online in the dataset's env")
        if cfg.algo.get("offline_only"):
            raise ConfigError(f"algo={cfg.algo.name} learns from a dataset: add dataset=d4rl/hopper (or "
                              "dataset=minari dataset.id=<Minari id>)")
    elif OmegaConf.is_missing(cfg.dataset, "id"):
        raise ConfigError("dataset=minari needs the dataset's id: dataset.id=<Minari id>, "
                          "e.g. dataset.id=D4RL/door/human-v2")
    kind = source_kind(cfg)
    counts = [BUDGET_KEYS[kind], "trainer.batch_size", "trainer.eval_episodes"]
    if kind in ("replay", "offline_to_online"):
        counts.append("trainer.buffer_size")
    for key in counts:
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {OmegaConf.select(cfg, key)}")
    if kind in ("replay", "offline_to_online"):
        check_frame_stack(cfg)
        n_step = cfg.algo.get("n_step", 1)
        if not isinstance(n_step, int) or n_step < 1:
            raise ConfigError(f"algo.n_step must be a whole number of steps >= 1 (1: one-step targets), got {n_step!r}")
    if kind == "offline_to_online" and cfg.source.offline_updates < 0:
        raise ConfigError(f"source.offline_updates must be >= 0, got {cfg.source.offline_updates}")
    if t.updates_per_step <= 0:
        raise ConfigError(f"trainer.updates_per_step must be > 0, got {t.updates_per_step}")
    if t.train_every < 1:
        raise ConfigError(f"trainer.train_every must be >= 1, got {t.train_every}")
    return kind


def term_windows(cfg: DictConfig) -> dict[str, tuple[int, int | None]]:
    windows = cfg.algo.get("term_windows")
    if windows is None:
        return {}
    windows = OmegaConf.to_container(windows, resolve=True)
    return {term: (int(first), None if end is None else int(end)) for term, (first, end) in windows.items()}


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    t = cfg.trainer
    return TrainerConfig(
        eval_every=int(t.eval_every), eval_episodes=int(t.eval_episodes), checkpoint_every=int(t.checkpoint_every),
        log_every=int(t.log_every), updater_every=int(cfg.algo.updater_every), seed=int(cfg.seed),
        policy_snapshots=bool(t.policy_snapshots), video_every=int(t.video_every), term_windows=term_windows(cfg),
        compile=str(t.get("compile", "none")), updates_per_call=int(t.get("updates_per_call", 1)))


def build_loggers(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None, initial_step: int,
                  clock: str, total: int) -> Loggers:
    for name in cfg.logger.backends:
        if name not in LOGGER_BACKENDS:
            raise ConfigError(f"unknown logger backend {name!r}; accepted: {LOGGER_BACKENDS}")
    backends = []
    for name in cfg.logger.backends:
        if name == "wandb":
            w = cfg.logger.wandb
            default_name = f"{cfg.algo.name}-{task_name(cfg)}-seed{cfg.seed}"
            backends.append(WandbLogger(
                run_dir, OmegaConf.to_container(cfg, resolve=True), project=w.project, entity=w.entity,
                group=w.group or f"{cfg.algo.name}-{task_name(cfg)}", name=w.name or default_name,
                tags=list(w.tags) if w.tags else None, mode=w.mode, run_id=wandb_run_id, step_key=clock))
        else:
            backends.append(TensorboardLogger(run_dir, step_key=clock))
    console = ConsoleProgress(total, initial=initial_step, enabled=cfg.logger.progress)
    return Loggers(CSVLogger(run_dir), console, backends)


def resolved_config(cfg: DictConfig, task: Task | None = None) -> DictConfig:
    """What the run actually uses, for ``config.yaml``: ``source.kind`` resolved (``auto`` -> the kind;
    results tables read the clock from it) and, with a dataset, ``env.id`` = the env it is evaluated
    (and fine-tuned) in rather than the default online env."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.source.kind = source_kind(cfg)
        if task is not None and task.data_env is not None:
            cfg.env.id = task.data_env if isinstance(task.data_env, str) else task.data_env.id
    return cfg


def video_recorder(cfg: DictConfig, task, run_dir: Path) -> VideoRecorder | None:
    """``trainer.video_every > 0``: episodes of the evaluation env rendered to ``<run dir>/videos/``."""
    if cfg.trainer.video_every <= 0:
        return None
    if task.data_env is not None:
        return VideoRecorder(task.data_env, Path(run_dir) / "videos", cfg.env.max_episode_steps)
    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    # the evaluation pipeline (Atari preprocessing without the training-only wrappers), rendered
    return VideoRecorder(cfg.env.id, Path(run_dir) / "videos", cfg.env.max_episode_steps, atari=cfg.env.get("atari"),
                         training=False, **kwargs)


def build_trainer(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None = None,
                  initial_step: int = 0) -> Trainer:
    return build_run(cfg, run_dir, wandb_run_id, initial_step)[0]


def build_run(cfg: DictConfig, run_dir: Path, wandb_run_id: str | None = None,
              initial_step: int = 0) -> tuple[Trainer, DictConfig]:
    """The Trainer of ``cfg`` and the config it resolves to (:func:`resolved_config`)."""
    kind = validate(cfg)
    device = resolve_device(cfg.device)
    check_compile_mode(str(cfg.trainer.get("compile", "none")), device)
    task = load_task(cfg, kind, device)
    agent = build_agent(cfg, task.obs_spec, task.action_spec)
    agent.objective.to(device)
    updater = build_updater(agent.objective, cfg.algo.updater)
    groups = build_groups(agent.objective, cfg, kind)
    if task.normalizer is not None and agent.behaviour is not None:
        agent.behaviour = NormalizedPolicy(agent.behaviour, task.normalizer)
    source = build_source(cfg, kind, task, agent, device)
    normalizer = task.normalizer or task.running_normalizer  # what evaluation and checkpoints carry
    if task.dt_targets is not None:
        eval_policy = dt_policies(cfg, agent.objective, task.dt_targets, task.normalizer)
    elif normalizer is not None:
        eval_policy = NormalizedPolicy(agent.greedy, normalizer)
    else:
        eval_policy = agent.greedy
    trainer = Trainer(
        objective=agent.objective, updater=updater, groups=groups, source=source,
        eval_envs=task.eval_envs, eval_policy=eval_policy,
        loggers=build_loggers(cfg, run_dir, wandb_run_id, initial_step, source.clock, source.total),
        run_dir=run_dir, config=trainer_config(cfg), device=device, score_refs=task.score_refs,
        normalizer=normalizer, reward_labeler=reward_labeler(cfg, kind, task, device),
        video=video_recorder(cfg, task, run_dir))
    return trainer, resolved_config(cfg, task)
