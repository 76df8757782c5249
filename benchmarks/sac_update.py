"""Full SAC updates per second: rltrain's Trainer update path vs a hand-written PyTorch loop.

Both sides use the same sizes (obs 17, act 6, MLP 256x256, batch 256, 2 Q nets) and the same math
(SAC v2, l2 critic loss, learned alpha, tau = 0.005). The hand-written side is written the way most
copied SAC scripts are: separate ``nn.Module`` per Q net, plain ``torch.optim.Adam`` per network,
three backward passes, a Python loop for the target update. rltrain's side is
``Trainer.update()`` itself (replay sampling included; the hand-written side samples from a
preallocated tensor buffer the same way).

The two are timed in interleaved rounds in one process; the reported ratio is the median over
rounds of (rltrain updates/s) / (hand-written updates/s). Acting latency (one observation in, one
action out, as during collection: NumPy in, NumPy out) is measured the same way.

    python benchmarks/sac_update.py                  # 1 and 2 threads
    python benchmarks/sac_update.py --threads 1 --rounds 5 --updates 100
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

OBS, ACT, HIDDEN, BATCH, CAPACITY = 17, 6, 256, 256, 100_000


# ---- the hand-written baseline ---------------------------------------------------------------------

def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, n_out))


class HandActor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(OBS, 2 * ACT)

    def forward(self, obs):
        mean, raw_scale = self.net(obs).chunk(2, -1)
        std = F.softplus(raw_scale + 0.5413).clamp_min(1e-4)  # softplus(0.5413) = 1
        normal = torch.distributions.Normal(mean, std)
        pre_tanh = normal.rsample()
        action = torch.tanh(pre_tanh)
        log_prob = (normal.log_prob(pre_tanh) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1)
        return action, log_prob


class HandQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(OBS + ACT, 1)

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


class HandSAC:
    """The loop most SAC scripts contain."""

    def __init__(self, data: dict[str, torch.Tensor]):
        self.data = data
        self.actor = HandActor()
        self.q1, self.q2 = HandQ(), HandQ()
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=3e-4)
        self.generator = torch.Generator().manual_seed(0)

    def update(self):
        idx = torch.randint(CAPACITY, (BATCH,), generator=self.generator)
        obs, act, rew = self.data["obs"][idx], self.data["act"][idx], self.data["rew"][idx]
        next_obs, term = self.data["next_obs"][idx], self.data["term"][idx]
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor(next_obs)
            next_q = torch.min(self.q1_target(next_obs, next_act), self.q2_target(next_obs, next_act))
            target = rew + 0.99 * (1 - term) * (next_q - alpha * next_logp)
        q_loss = F.mse_loss(self.q1(obs, act), target) + F.mse_loss(self.q2(obs, act), target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        pi, logp = self.actor(obs)
        actor_loss = (alpha * logp - torch.min(self.q1(obs, pi), self.q2(obs, pi))).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = (-self.log_alpha * (logp.detach() - ACT)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for q, q_target in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(q.parameters(), q_target.parameters()):
                    tp.data.mul_(1 - 0.005).add_(0.005 * p.data)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0][0].numpy()


# ---- rltrain ------------------------------------------------------------------------------------

def rltrain_trainer(data: dict[str, torch.Tensor]):
    """A Trainer built from the default config with the benchmark's sizes; its buffer holds ``data``."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import rltrain.__main__  # noqa: F401  (registers the config resolvers)
    from rltrain.build import build_trainer

    with initialize_config_module("rltrain.configs", version_base="1.3"):
        cfg = compose("config", overrides=["env=halfcheetah", "device=cpu", "logger.progress=false",
                                           "trainer.batch_size=256", "trainer.buffer_size=100000"])
    OmegaConf.set_struct(cfg, False)
    trainer = build_trainer(cfg, Path("/tmp/rltrain-benchmark"))
    term = data["term"].bool().unsqueeze(-1)
    trainer.buffer.extend(TensorDict({
        "observation": data["obs"], "action": data["act"],
        "next": {"observation": data["next_obs"], "reward": data["rew"].unsqueeze(-1), "terminated": term,
                 "truncated": torch.zeros_like(term), "done": term}}, batch_size=[CAPACITY]))
    return trainer


def rltrain_act(trainer):
    collector = trainer.collector

    def act(obs: np.ndarray) -> np.ndarray:
        collector._obs = obs[None]
        return collector._policy_actions()[0]

    return act


# ---- timing -------------------------------------------------------------------------------------

def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def interleaved(fn_a, fn_b, n: int, rounds: int) -> tuple[float, float, float]:
    """Median rate of a, of b, and median of per-round ratios a/b."""
    rates_a, rates_b, ratios = [], [], []
    for _ in range(rounds):
        a, b = rate(fn_a, n), rate(fn_b, n)
        rates_a.append(a)
        rates_b.append(b)
        ratios.append(a / b)
    return statistics.median(rates_a), statistics.median(rates_b), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--acts", type=int, default=2000)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = {"obs": torch.randn(CAPACITY, OBS), "act": torch.rand(CAPACITY, ACT) * 2 - 1,
            "rew": torch.randn(CAPACITY), "next_obs": torch.randn(CAPACITY, OBS),
            "term": (torch.rand(CAPACITY) < 0.01).float()}
    hand = HandSAC(data)
    trainer = rltrain_trainer(data)
    obs = np.random.default_rng(0).standard_normal(OBS).astype(np.float32)
    ours_act, hand_act = rltrain_act(trainer), lambda: hand.act(obs)

    print(f"torch {torch.__version__}, obs {OBS}, act {ACT}, MLP {HIDDEN}x{HIDDEN}, batch {BATCH}, 2 Q nets, CPU")
    print("| threads | rltrain updates/s | hand-written updates/s | ratio | rltrain act µs | hand-written act µs | act time ratio |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for _ in range(20):  # warm-up
            trainer.update()
            hand.update()
        ours, theirs, ratio = interleaved(trainer.update, hand.update, args.updates, args.rounds)
        act_ours, act_theirs, act_ratio = interleaved(lambda: ours_act(obs), hand_act, args.acts, args.rounds)
        print(f"| {threads} | {ours:.0f} | {theirs:.0f} | {ratio:.2f}x | {1e6 / act_ours:.0f} | "
              f"{1e6 / act_theirs:.0f} | {1 / act_ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
