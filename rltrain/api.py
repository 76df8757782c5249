"""Training and evaluation from Python (notebooks, scripts)::

    summary = rltrain.train(["algo=sac", "env=pendulum", "trainer.total_env_steps=20000"])
    agent = rltrain.load_agent(summary["run_dir"])
    print(rltrain.evaluate(agent, episodes=10))

:func:`train` composes the config with Hydra's compose API from the same configs and overrides as
``python -m rltrain``, and trains through the same :func:`rltrain.__main__.run`: the same checks
(a :class:`~rltrain.errors.ConfigError` names a bad key or value before any work) and the same run
directory (``config.yaml``, ``overrides.yaml``, ``git_commit.txt``, ``.hydra/``, ``checkpoints/``,
``metrics.csv``, ``summary.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from omegaconf import DictConfig, OmegaConf, open_dict

from rltrain.agent import Agent
from rltrain.errors import ConfigError
from rltrain.evaluate import evaluate as evaluate_episodes


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``python -m rltrain <overrides>``'s config, with its ``hydra`` node (run directory and all)."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals
    from hydra.errors import HydraException

    import rltrain.__main__  # noqa: F401  (registers the run-directory resolvers)

    setup_globals()  # ${now:...}, ${hydra:...}
    try:
        with initialize_config_module("rltrain.configs", version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(f"overrides {list(overrides)}: {err}") from err
    HydraConfig.instance().set_config(cfg)
    return cfg


def _save_hydra_files(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    """The ``.hydra/`` folder the CLI writes: the composed config, Hydra's own and the overrides."""
    from hydra.core.utils import _save_config

    subdir = cfg.hydra.output_subdir
    if subdir is None:
        return
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    hydra_cfg = OmegaConf.create({"hydra": cfg.hydra})
    folder = run_dir / subdir
    _save_config(task_cfg, "config.yaml", folder)
    _save_config(hydra_cfg, "hydra.yaml", folder)
    _save_config(OmegaConf.create(overrides), "overrides.yaml", folder)


def train(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> dict:
    """Train as ``python -m rltrain <overrides>`` does; returns the run's summary (``summary.json``:
    final and best evaluation returns, steps, time, ``run_dir``).

    Args:
        overrides: the command line's ``group=option`` and ``key=value`` strings.
        run_dir: where the run goes; default the CLI's ``<run_root>/<algo>/<task>/<timestamp>``.
    """
    from rltrain.__main__ import run, run_seeds

    overrides = list(overrides)
    cfg = compose_config(overrides)
    directory = Path(run_dir) if run_dir is not None else Path(cfg.hydra.run.dir)
    directory.mkdir(parents=True, exist_ok=True)
    _save_hydra_files(cfg, directory, overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    if cfg.seeds is not None:
        score = run_seeds(cfg, directory, overrides)
        return {"mean_final_score": score, "seeds": list(cfg.seeds), "run_dir": str(directory)}
    return run(cfg, directory, overrides)


def _vector_env(agent: Agent, env, episodes: int) -> gym.vector.VectorEnv:
    if env is None:
        return agent.task.make_vector_env(min(int(agent.config.env.eval_num_envs), episodes))
    if isinstance(env, gym.vector.VectorEnv):
        return env
    if isinstance(env, gym.Env):
        return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    if isinstance(env, str | EnvSpec):
        from rltrain.envs import make_vector_env

        return make_vector_env(env, min(int(agent.config.env.eval_num_envs), episodes),
                               agent.task.max_episode_steps, atari=agent.task.atari, training=False)
    raise TypeError(f"env must be None (the run's eval env), an env id, an EnvSpec, a gymnasium Env or "
                    f"VectorEnv; got {type(env).__name__}")


class _Episodic:
    """An agent as the episodic policy :func:`rltrain.evaluate.evaluate` runs (torch batches)."""

    def __init__(self, agent: Agent, deterministic: bool):
        self.agent, self.deterministic = agent, deterministic

    def __call__(self, obs):
        return self.agent.act(obs, self.deterministic)

    def reset(self, num_envs: int) -> None:
        self.agent.reset(num_envs)

    def record(self, reward) -> None:
        self.agent.record(reward)


def evaluate(agent: Agent, env: str | EnvSpec | gym.Env | gym.vector.VectorEnv | None = None, episodes: int = 10,
             seed: int = 0, deterministic: bool = True) -> dict:
    """Return statistics of ``episodes`` episodes of ``agent`` (episode ``i`` reset with seed
    ``seed + i``), in ``env`` or, by default, the run's evaluation env with its number of parallel
    envs, so the run's evaluation at step ``s`` is reproduced with
    ``seed=rltrain.envs.derive_seed(run seed, s, 2)``. Adds ``normalized_score`` where the run's
    dataset defines reference scores."""
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    envs = _vector_env(agent, env, episodes)
    try:
        result = evaluate_episodes(envs, _Episodic(agent, deterministic), episodes, seed=seed, device="cpu")
    finally:
        if env is None or isinstance(env, str | EnvSpec):  # made here
            envs.close()
    score = agent.normalized_score(result["return_mean"])
    if score is not None:
        result["normalized_score"] = score
    return result
