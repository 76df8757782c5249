"""A trained run's policy, ready to act: ``load_agent(run_dir)``.

::

    agent = rltrain.load_agent("runs/sac/Pendulum-v1/2025-01-01_12-00-00", checkpoint="best")
    env = gymnasium.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    agent.reset()
    for _ in range(200):
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs))

The agent is rebuilt from the run's ``config.yaml`` and one of its checkpoints, on the CPU whatever
device trained it: ``last`` (``checkpoints/last.pt``, the end of training), ``best``
(``checkpoints/best.pt``: the policy of the best evaluation) or a step (the policy snapshot
``checkpoints/policy_<step>.pt`` of a run trained with ``trainer.policy_snapshots=true``). Every
checkpoint holds the objective's weights (``"objective"``) and the observation normalizer
(``"normalizer"``, ``None`` when the run had none), which :meth:`Agent.act` applies to raw
observations.

``act(observation, deterministic=True)`` takes a NumPy array or a torch tensor, one observation
``[obs]`` or a batch ``[n, obs]``, and returns actions of the same kind and batch shape.
``deterministic=True`` is the policy the run evaluated (a stochastic actor's mode, the greedy
action); ``False`` is the policy it collected with (a sample; no exploration noise is added).

Policies with a memory (a Decision Transformer's context, ACT's temporal ensemble) start over at
:meth:`Agent.reset`, to be called at each episode start. A Decision Transformer is conditioned on
the return still to come: call :meth:`Agent.record` with the rewards after each env step
(:func:`rltrain.evaluate` does both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from omegaconf import DictConfig, OmegaConf

from rltrain import checkpoint as checkpoints
from rltrain.envs import env_specs, make_env, make_vector_env
from rltrain.errors import ConfigError
from rltrain.results import run_clock

CHECKPOINT_CHOICES = "last, best or a policy snapshot's step (an integer)"

# algo.sequence kinds whose policies keep a memory across the steps of an episode
MEMORY_SEQUENCES = ("chunk", "trajectory", "online_trajectory")
# ... and those that also condition on the rewards received (returns-to-go)
REWARD_SEQUENCES = ("trajectory", "online_trajectory")


# ---- where the run's checkpoints are -----------------------------------------------------------

def snapshot_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"policy_{step:09d}.pt"


def _snapshot_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("policy_")) for p in (run_dir / "checkpoints").glob("policy_*.pt"))


def checkpoint_file(run_dir: Path, which: str | int) -> Path:
    """The file of ``checkpoint=which``: last.pt, best.pt or a policy snapshot."""
    which = _parse_checkpoint(which)
    if which == "last":
        path = run_dir / "checkpoints" / "last.pt"
    elif which == "best":
        path = run_dir / "checkpoints" / "best.pt"
    else:
        path = snapshot_path(run_dir, which)
    if path.exists():
        return path
    steps = _snapshot_steps(run_dir)
    available = f"policy snapshots at steps {steps}" if steps else "no policy snapshots"
    kept_by = ("the Trainer writes it at each new best evaluation" if which == "best"
               else "runs with trainer.policy_snapshots=true keep one per evaluation")
    raise ConfigError(f"checkpoint={which}: {run_dir} has no {path.relative_to(run_dir)} ({kept_by}; this run has "
                      f"{available}). Accepted: {CHECKPOINT_CHOICES}.")


def _parse_checkpoint(which: str | int) -> str | int:
    if isinstance(which, bool):
        raise ConfigError(f"checkpoint={which!r}: accepted values are {CHECKPOINT_CHOICES}")
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        return int(which)
    if which in ("last", "best"):
        return which
    raise ConfigError(f"checkpoint={which!r}: accepted values are {CHECKPOINT_CHOICES}")


def read_run_config(run_dir: str | Path) -> tuple[Path, DictConfig]:
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"run={run_dir} is not an rltrain run directory: it has no config.yaml. Pass the directory "
                          "a training run printed at its end (runs/<algo>/<task>/<timestamp>).")
    return run_dir, OmegaConf.load(run_dir / "config.yaml")


# ---- what the policy acts in --------------------------------------------------------------------

@dataclass
class EvalTask:
    """The env a run was evaluated in, and what its results are measured against."""

    env: str | EnvSpec
    max_episode_steps: int | None
    env_kwargs: dict = field(default_factory=dict)
    score_refs: tuple[float, float] | None = None  # (ref_min, ref_max) of normalized scores
    dt_targets: list[float] | None = None          # a Decision Transformer's target returns
    atari: dict | None = None                      # an Atari run's preprocessing (env.atari), evaluation side

    @property
    def env_id(self) -> str:
        return self.env if isinstance(self.env, str) else self.env.id

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        extra = {"render_mode": render_mode} if render_mode else {}
        return make_env(self.env, self.max_episode_steps, atari=self.atari, training=False, **self.env_kwargs,
                        **extra)

    def make_vector_env(self, num_envs: int) -> gym.vector.VectorEnv:
        return make_vector_env(self.env, num_envs, self.max_episode_steps, atari=self.atari, training=False,
                               **self.env_kwargs)

    def normalized_score(self, episode_return: float) -> float | None:
        if self.score_refs is None:
            return None
        ref_min, ref_max = self.score_refs
        return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


def run_task(cfg: DictConfig, env_id: str | None = None) -> EvalTask:
    """The run's evaluation env (``env_id`` replaces it) with its score references and, for a
    Decision Transformer, target returns: an offline run's come from its dataset, loaded as training
    loaded it."""
    from rltrain import build

    max_steps = cfg.env.max_episode_steps
    if cfg.dataset is None:
        kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True) or {}
        atari = cfg.env.get("atari")
        env = env_id or cfg.env.id
        refs = (cfg.env.get("reference_scores") or {}).get(env)
        return EvalTask(env, max_steps, kwargs, score_refs=None if refs is None else (float(refs[0]), float(refs[1])),
                        atari=None if atari is None else OmegaConf.to_container(atari, resolve=True))
    data = build.load_offline_data(cfg.dataset)
    refs = build.score_refs(cfg, data)
    targets = None
    if cfg.algo.get("sequence") in REWARD_SEQUENCES:
        targets = build.dt_target_returns(cfg, data, refs)
    env = env_id or cfg.dataset.eval_env or data.eval_env_spec or data.env_spec
    if env is None:
        raise ConfigError(f"dataset {data.dataset_id!r} records no environment to act in; pass env.id=<gymnasium id>")
    return EvalTask(env, max_steps, score_refs=refs, dt_targets=targets)


# ---- the agent ----------------------------------------------------------------------------------

class Agent:
    """A trained policy: :meth:`act`, :meth:`reset`, :meth:`record` (module docstring).

    Attributes:
        config: the run's resolved config (``config.yaml``).
        observation_space, action_space: the gymnasium spaces of the env it acts in.
        task: that env (:class:`EvalTask`), its score references and DT target returns.
        checkpoint: the file the weights came from.
        step: the training step of those weights (env steps online, updates offline).
        eval_result: the evaluation recorded with them (``None`` if the file holds none).
    """

    def __init__(self, *, config: DictConfig, policies: dict[bool, object], task: EvalTask,
                 observation_space: gym.Space, action_space: gym.Space, checkpoint: Path, step: int,
                 eval_result: dict | None, modules: torch.nn.Module):
        self.config = config
        self.task = task
        self.observation_space = observation_space
        self.action_space = action_space
        self.checkpoint = checkpoint
        self.step = step
        self.eval_result = eval_result
        self.modules = modules                # the objective (all networks), for export
        self._policies = policies             # deterministic -> policy on torch batches
        sequence = config.algo.get("sequence")
        self.has_memory = sequence in MEMORY_SEQUENCES
        self.needs_rewards = sequence in REWARD_SEQUENCES
        self._num_envs: int | None = None
        self._awaiting_reward = False

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.observation_space.shape))

    @property
    def obs_dtype(self) -> torch.dtype:
        """uint8 frames stay uint8 (the encoder scales them), as in training; anything else is float32."""
        return torch.uint8 if self.observation_space.dtype == np.uint8 else torch.float32

    def policy(self, deterministic: bool = True):
        """The policy on torch batches ``[n, obs] -> [n, ...]``, with the normalizer folded in."""
        return self._policies[deterministic]

    def reset(self, num_envs: int = 1) -> None:
        """Start new episodes in ``num_envs`` envs: forget every context (DT) and action chunk (ACT)."""
        if self.has_memory:
            for policy in {id(p): p for p in self._policies.values()}.values():
                policy.reset(num_envs)
        self._num_envs = num_envs
        self._awaiting_reward = False

    def record(self, reward) -> None:
        """The rewards of the last step (one per env): a Decision Transformer lowers its return-to-go."""
        if self.needs_rewards:
            reward = torch.as_tensor(np.asarray(reward, dtype=np.float32)).reshape(-1)
            for policy in self._policies.values():
                policy.record(reward)
        self._awaiting_reward = False

    @torch.no_grad()
    def act(self, observation, deterministic: bool = True):
        """Actions for ``observation`` (``[obs]`` or ``[n, obs]``; images ``[C, H, W]`` or ``[n, C, H, W]``;
        NumPy or torch), of the same kind."""
        is_tensor = isinstance(observation, torch.Tensor)
        obs = observation.detach() if is_tensor else torch.as_tensor(np.asarray(observation))
        shape = tuple(self.observation_space.shape)
        single = tuple(obs.shape) == shape
        if single:
            obs = obs.unsqueeze(0)
        if tuple(obs.shape[1:]) != shape:
            dims = ", ".join(map(str, shape))
            raise ValueError(f"act expects observations of shape [{dims}] or [n, {dims}] "
                             f"(the run's {self.task.env_id}), got {tuple(observation.shape)}")
        self._prepare(obs.shape[0])
        action = self._policies[bool(deterministic)](obs.to("cpu", self.obs_dtype))
        self._awaiting_reward = self.needs_rewards
        if single:
            action = action[0]
        return action.to(observation.device) if is_tensor else action.numpy()

    def _prepare(self, num_envs: int) -> None:
        if self._awaiting_reward:
            raise RuntimeError("this agent (a Decision Transformer) conditions on the return still to come: call "
                               "agent.record(reward) after each env step, and agent.reset() at each episode start")
        if self.has_memory and self._num_envs != num_envs:
            self.reset(num_envs)

    def normalized_score(self, episode_return: float) -> float | None:
        """D4RL's normalized score of a return, where the run's dataset defines references."""
        return self.task.normalized_score(episode_return)

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """One env of the kind this agent acts in (the run's evaluation env)."""
        return self.task.make_env(render_mode)

    def __repr__(self) -> str:
        return (f"Agent(algo={self.config.algo.name}, env={self.task.env_id}, checkpoint={self.checkpoint}, "
                f"step={self.step})")


def _training_step(cfg: DictConfig, state: dict) -> int:
    """The clock position of the checkpoint's weights (the step the run's evaluation seeds derive from):
    a checkpoint's counters, else the evaluation saved with a snapshot, read on the run's clock."""
    counters, result = state.get("counters"), state.get("eval")
    if counters is not None:
        return int(counters["position"])
    return int(result[run_clock(cfg)]) if result else -1


def _normalizer(state: dict, obs_dim: int):
    from rltrain.data.normalize import normalizer_from_state

    if state.get("normalizer") is None:
        return None
    return normalizer_from_state(state["normalizer"])


def _policies(cfg: DictConfig, state: dict, task: EvalTask, obs_spec, action_spec):
    """The objective with the checkpoint's weights, and its policies (deterministic -> policy)."""
    from rltrain import build

    built = build.build_agent(cfg, obs_spec, action_spec)
    objective = built.objective
    objective.load_state_dict(state["objective"])
    objective.eval()
    normalizer = _normalizer(state, obs_spec.dim)
    if task.dt_targets is not None:
        target = task.dt_targets[0]  # the run's headline evaluation
        return objective, {mode: build.dt_policy(cfg, objective, target, normalizer, deterministic=mode)
                           for mode in (True, False)}
    policies = {True: built.greedy, False: built.behaviour}
    if normalizer is not None:
        policies = {mode: build.NormalizedPolicy(policy, normalizer) for mode, policy in policies.items()}
    return objective, policies


def load_agent(run_dir: str | Path, checkpoint: str | int = "last", env_id: str | None = None) -> Agent:
    """The policy of the rltrain run in ``run_dir`` (module docstring), on the CPU.

    Args:
        run_dir: the run directory (it holds ``config.yaml`` and ``checkpoints/``).
        checkpoint: ``"last"``, ``"best"`` or the step of a policy snapshot.
        env_id: act in this gymnasium env instead of the run's (same spaces expected).
    """
    run_dir, cfg = read_run_config(run_dir)
    path = checkpoint_file(run_dir, checkpoint)
    state = checkpoints.load(path, device="cpu")
    task = run_task(cfg, env_id)
    env = task.make_env()
    try:
        obs_spec, action_spec = env_specs(env)
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    objective, policies = _policies(cfg, state, task, obs_spec, action_spec)
    return Agent(config=cfg, policies=policies, task=task, observation_space=observation_space,
                 action_space=action_space, checkpoint=path, step=_training_step(cfg, state),
                 eval_result=state.get("eval") or state.get("last_eval"), modules=objective)
