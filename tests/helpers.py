"""Shared builders for the tests: tiny networks, batches, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import distributions as D

from rltrain.modules import MLP, Bounded, NormalParamExtractor, ProbabilisticActor, ValueOperator

# Small networks and budgets keep end-to-end runs to seconds on a 2-core CPU.
SMALL_NETS = ["network.actor.num_cells=[32,32]", "network.critic.num_cells=[32,32]"]

# The learning checks' networks (64x64) and the two online runs the suite trains once and shares:
# their learning tests assert the returns, and the offline tests make medium datasets from their
# policy snapshots.
LEARNING_NETS = ["network.actor.num_cells=[64,64]", "network.critic.num_cells=[64,64]", "logger.progress=false",
                 "trainer.eval_episodes=10"]
LEARNING_RUNS = {
    "sac_pendulum": [*LEARNING_NETS, "hparams=none", "trainer.total_env_steps=15000", "trainer.eval_every=500",
                     "trainer.policy_snapshots=true"],
    "dqn_cartpole": ["experiment=dqn_cartpole", "algo.loss.double_dqn=true", "logger.progress=false",
                     "trainer.total_env_steps=40000", "trainer.eval_every=2500", "trainer.policy_snapshots=true"],
}


class LinearQNet(torch.nn.Module):
    """A reference-page style critic: a plain module ``Q(obs, act)`` (no rltrain MLP to stack)."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.linear = torch.nn.Linear(obs_dim + act_dim, 1)

    def forward(self, obs, act):
        return self.linear(torch.cat([obs, act], -1))


def make_actor(obs_dim: int, act_dim: int, hidden=(16,), low=-1.0, high=1.0) -> ProbabilisticActor:
    spec = Bounded(torch.full((act_dim,), low), torch.full((act_dim,), high))
    net = torch.nn.Sequential(MLP(obs_dim, 2 * act_dim, hidden, "relu"), NormalParamExtractor())
    return ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]), spec=spec)


def make_qvalue(obs_dim: int, act_dim: int, hidden=(16,)) -> ValueOperator:
    return ValueOperator(MLP(obs_dim + act_dim, 1, hidden, "relu"), in_keys=["observation", "action"])


def make_value(obs_dim: int, hidden=(16,)) -> ValueOperator:
    return ValueOperator(MLP(obs_dim, 1, hidden, "relu"), in_keys=["observation"])


def make_batch(batch: int, obs_dim: int, act_dim: int, seed: int = 0, terminated_every: int = 3) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    terminated = (torch.arange(batch) % terminated_every == 0).unsqueeze(-1)
    truncated = (torch.arange(batch) % 5 == 1).unsqueeze(-1)
    return TensorDict({
        "observation": torch.randn(batch, obs_dim, generator=g),
        "action": torch.rand(batch, act_dim, generator=g) * 1.8 - 0.9,
        "next": {
            "observation": torch.randn(batch, obs_dim, generator=g),
            "reward": torch.randn(batch, 1, generator=g),
            "terminated": terminated,
            "truncated": truncated,
            "done": terminated | truncated,
        },
    }, batch_size=[batch])


def grads_by_group(loss) -> dict[str, bool]:
    """Per group: does any of its parameters hold a non-zero gradient?"""
    return {group: any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.group_parameters(group))
            for group in loss.parameter_groups}


def check_isolation(loss, batch) -> None:
    """Each loss term's gradient reaches its own parameter group and no other."""
    for term, group in loss.loss_groups.items():
        loss.zero_grad(set_to_none=True)
        loss(batch.clone())[term].backward()
        touched = grads_by_group(loss)
        assert touched[group], f"{term} gave no gradient to its group {group}"
        assert not any(hit for g, hit in touched.items() if g != group), f"{term} leaked into {touched}"


def check_sum_trains_everything(loss, batch) -> None:
    """The sum of all terms gives every parameter (targets are buffers, not parameters) a gradient."""
    loss.zero_grad(set_to_none=True)
    out = loss(batch.clone())
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for name, param in loss.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def check_reductions(make_loss, batch) -> None:
    """An actor-critic objective with a temperature (SAC, REDQ, CrossQ): ``"none"`` gives per-sample
    actor, critic and alpha terms whose sum and mean are the ``"sum"`` and ``"mean"`` outputs."""
    outs = {}
    for reduction in ("none", "sum", "mean"):
        loss = make_loss(reduction=reduction, scalar_output_mode="exclude")
        torch.manual_seed(0)
        outs[reduction] = loss(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_alpha"):
        assert outs["none"][key].shape == batch.batch_size
        torch.testing.assert_close(outs["sum"][key], outs["none"][key].sum())
        torch.testing.assert_close(outs["mean"][key], outs["none"][key].mean())
    assert "alpha" not in outs["none"].keys() and "alpha" in outs["mean"].keys()
    with pytest.raises(ValueError, match="reduction"):
        make_loss(reduction="median")


class PairCritic(torch.nn.Module):
    """A critic that is not a plain Sequential, so an ensemble of it takes the vmap path."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.net = MLP(in_dim, 1, (8,))

    def forward(self, obs, action):
        return self.net(obs, action)


def tanh_normal_by_hand(loc, scale, noise):
    """A TanhNormal sample on [-1, 1] and its log-probability, written out from the formulas."""
    pre_tanh = loc + scale * noise
    action = torch.tanh(pre_tanh)
    log_prob = (D.Normal(loc, scale).log_prob(pre_tanh) - torch.log(1 - action.pow(2))).sum(-1)
    return action, log_prob


def unpack_transition(batch):
    """obs, action, next obs, reward [B], (1 - terminated) [B] as floats."""
    reward = batch["next", "reward"].squeeze(-1)
    not_terminated = 1.0 - batch["next", "terminated"].squeeze(-1).float()
    return batch["observation"], batch["action"], batch["next", "observation"], reward, not_terminated


def assert_state_dict_round_trip(build, batch) -> None:
    """A perturbed objective's state_dict loaded into a fresh one gives identical outputs."""
    a, b = build(), build()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.5)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(0)
    out_a = a(batch.clone())
    torch.manual_seed(0)
    out_b = b(batch.clone())
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a.keys())


def run_cli(args: list[str], run_root: Path, timeout: float = 600, check: bool = True,
            env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """``python -m rltrain <args>`` in a subprocess, runs under ``run_root``, W&B disabled unless
    ``env`` says otherwise (a ``None`` value unsets a variable)."""
    return run_module("rltrain", [*args, f"run_root={run_root}"], timeout, check, env)


def run_module(module: str, args: list[str], timeout: float = 600, check: bool = True,
               env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in a subprocess (see :func:`run_cli` for ``env``)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(dirs) == 1, f"expected one run directory under {root}, found {dirs}"
    return dirs[0]

