"""Full updates per second: rltrain's Trainer update path vs hand-written PyTorch loops.

For each algorithm, rltrain's side is ``Trainer.update()`` itself (replay sampling, forward,
one backward, optimizer steps, target update) built from the configs; the hand-written side is
the loop most copied scripts contain: a separate ``nn.Module`` per Q net, plain ``torch.optim.Adam``
per network, one backward per loss, a Python loop for the target update. Both sample batches
from the same preallocated data. Sizes: MLP 256x256, batch 256 (DQN: batch 128), CPU;
continuous tasks use HalfCheetah's sizes (obs 17, act 6), DQN uses CartPole's (obs 4, 2 actions).

* ``sac``: SAC v2, 2 critics, learned alpha, tau 0.005.
* ``td3``: TD3, 2 critics, target policy smoothing, actor and targets every 2nd update (the
  timed unit is one update; rates average over the delay cycle).
* ``redq``: REDQ, 10 critics, a random pair for the target, actor on the mean of all critics;
  actor and temperature every 20th update, as in the authors' code (once per env step at their 20
  updates per env step; rates average over the cycle).
* ``dqn``: DQN, Huber loss, hard target copy every 1000 updates.
* ``iql``: IQL (offline), 2 critics + V, expectile 0.7, temperature 3, cosine actor learning rate.
* ``cql``: CQL (offline), CQL(H) with importance sampling, 10 actions per kind, weight 10, learned
  alpha, deterministic backup (CORL's settings).
* ``td3bc``: TD3+BC (offline), alpha 2.5, actor and targets every 2nd update.
* ``dt``: Decision Transformer (offline), context 20, 3 layers, 1 head, embedding 128, inner 512,
  dropout 0.1, batch 64, AdamW with linear warm-up, grad-norm clip 0.25; episodes of 1000 steps.
  The hand-written side is the minimal GPT most DT scripts carry (masked attention written out,
  as in min-decision-transformer), with windows gathered from padded, preallocated tensors.
* ``diffusion_bc``: Diffusion BC (offline), DDPM with 100 steps, score MLP 256x256 SiLU over
  (noisy action, state, sinusoidal time embedding), Adam 1e-4, grad-norm clip 1.0, batch 256.

Offline algorithms sample from rltrain's dataset sampler (the path ``dataset=...`` runs use), the
hand-written loops from the same tensors.

Rates are timed in interleaved rounds in one process (each side runs ``--seconds`` per round); the
ratio is the median over rounds of (rltrain updates/s) / (hand-written updates/s). Acting latency
(one NumPy observation in, one action out, as during collection) is measured the same way for
SAC's stochastic policy.

    python benchmarks/updates.py                          # all algorithms, 1 and 2 threads
    python benchmarks/updates.py --algos sac redq --threads 2 --rounds 5 --seconds 1
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

HIDDEN, CAPACITY = 256, 100_000
CONTINUOUS = {"obs": 17, "act": 6, "batch": 256}
DISCRETE = {"obs": 4, "act": 2, "batch": 128}


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, n_out))


def soft_update(net: nn.Module, target: nn.Module, tau: float = 0.005) -> None:
    with torch.no_grad():
        for p, tp in zip(net.parameters(), target.parameters()):
            tp.data.mul_(1 - tau).add_(tau * p.data)


class Q(nn.Module):
    def __init__(self, obs: int, act: int):
        super().__init__()
        self.net = mlp(obs + act, 1)

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


class TanhGaussianActor(nn.Module):
    def __init__(self, obs: int, act: int):
        super().__init__()
        self.net = mlp(obs, 2 * act)

    def normal(self, obs):
        mean, raw_scale = self.net(obs).chunk(2, -1)
        std = F.softplus(raw_scale + 0.5413).clamp_min(1e-4)  # softplus(0.5413) = 1
        return torch.distributions.Normal(mean, std)

    def log_prob(self, obs, action):
        action = action.clamp(-1 + 1e-6, 1 - 1e-6)
        return (self.normal(obs).log_prob(torch.atanh(action)) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1)

    def forward(self, obs):
        normal = self.normal(obs)
        pre_tanh = normal.rsample()
        action = torch.tanh(pre_tanh)
        log_prob = (normal.log_prob(pre_tanh) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1)
        return action, log_prob


class HandWritten:
    """Shared plumbing: the data and uniform sampling."""

    def __init__(self, data: dict[str, torch.Tensor], batch: int):
        self.data, self.batch = data, batch
        self.generator = torch.Generator().manual_seed(0)

    def sample(self):
        idx = torch.randint(CAPACITY, (self.batch,), generator=self.generator)
        return (self.data["obs"][idx], self.data["act"][idx], self.data["rew"][idx], self.data["next_obs"][idx],
                self.data["term"][idx])


class HandSoftActor(HandWritten):
    """The tanh-Gaussian actor and learned temperature SAC-style loops share, and their step."""

    def __init__(self, data, obs, act, batch):
        super().__init__(data, batch)
        self.act_dim = act
        self.actor = TanhGaussianActor(obs, act)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=3e-4)

    def actor_and_alpha_step(self, obs, alpha, critic_value) -> None:
        """One actor step on ``alpha log pi - critic_value(s, pi)``, then one temperature step."""
        pi, logp = self.actor(obs)
        actor_loss = (alpha * logp - critic_value(obs, pi)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = (-self.log_alpha * (logp.detach() - self.act_dim)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()


class HandSAC(HandSoftActor):
    def __init__(self, data, obs, act, batch):
        super().__init__(data, obs, act, batch)
        self.q1, self.q2 = Q(obs, act), Q(obs, act)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)

    def update(self):
        obs, act, rew, next_obs, term = self.sample()
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor(next_obs)
            next_q = torch.min(self.q1_target(next_obs, next_act), self.q2_target(next_obs, next_act))
            target = rew + 0.99 * (1 - term) * (next_q - alpha * next_logp)
        q_loss = F.mse_loss(self.q1(obs, act), target) + F.mse_loss(self.q2(obs, act), target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        self.actor_and_alpha_step(obs, alpha, lambda o, a: torch.min(self.q1(o, a), self.q2(o, a)))
        soft_update(self.q1, self.q1_target)
        soft_update(self.q2, self.q2_target)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0][0].numpy()


class HandTD3(HandWritten):
    def __init__(self, data, obs, act, batch):
        super().__init__(data, batch)
        self.actor = nn.Sequential(mlp(obs, act), nn.Tanh())
        self.q1, self.q2 = Q(obs, act), Q(obs, act)
        self.actor_target = copy.deepcopy(self.actor)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.updates = 0

    def update(self):
        obs, act, rew, next_obs, term = self.sample()
        with torch.no_grad():
            noise = (torch.randn_like(act) * 0.2).clamp(-0.5, 0.5)
            next_act = (self.actor_target(next_obs) + noise).clamp(-1, 1)
            next_q = torch.min(self.q1_target(next_obs, next_act), self.q2_target(next_obs, next_act))
            target = rew + 0.99 * (1 - term) * next_q
        q_loss = F.mse_loss(self.q1(obs, act), target) + F.mse_loss(self.q2(obs, act), target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        self.updates += 1
        if self.updates % 2 == 0:
            actor_loss = self.actor_loss(obs, act)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            for net, target_net in ((self.actor, self.actor_target), (self.q1, self.q1_target),
                                    (self.q2, self.q2_target)):
                soft_update(net, target_net)


    def actor_loss(self, obs, act):
        return -self.q1(obs, self.actor(obs)).mean()


class HandREDQ(HandSoftActor):
    """As in REDQ's reference code: a list of critics, Python loops over them, and the actor and
    temperature updated on every ``policy_delay``-th update (the authors' policy_update_delay)."""

    def __init__(self, data, obs, act, batch, num_critics: int = 10, policy_delay: int = 20):
        super().__init__(data, obs, act, batch)
        self.critics = nn.ModuleList([Q(obs, act) for _ in range(num_critics)])
        self.targets = copy.deepcopy(self.critics)
        self.q_opts = [torch.optim.Adam(q.parameters(), lr=3e-4) for q in self.critics]
        self.rng = random.Random(0)
        self.policy_delay, self.updates = policy_delay, 0

    def update(self):
        obs, act, rew, next_obs, term = self.sample()
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor(next_obs)
            pair = self.rng.sample(range(len(self.critics)), 2)
            next_q = torch.min(torch.stack([self.targets[i](next_obs, next_act) for i in pair]), 0).values
            target = rew + 0.99 * (1 - term) * (next_q - alpha * next_logp)
        q_loss = sum(F.mse_loss(q(obs, act), target) for q in self.critics)
        for opt in self.q_opts:
            opt.zero_grad()
        q_loss.backward()
        for opt in self.q_opts:
            opt.step()

        self.updates += 1
        if self.updates % self.policy_delay == 0:
            self.actor_and_alpha_step(obs, alpha, lambda o, a: torch.stack([q(o, a) for q in self.critics]).mean(0))
        for q, q_target in zip(self.critics, self.targets):
            soft_update(q, q_target)


class HandDQN(HandWritten):
    def __init__(self, data, obs, act, batch):
        super().__init__(data, batch)
        self.q = mlp(obs, act)
        self.q_target = copy.deepcopy(self.q)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=2.5e-4)
        self.updates = 0

    def update(self):
        obs, act, rew, next_obs, term = self.sample()
        with torch.no_grad():
            target = rew + 0.99 * (1 - term) * self.q_target(next_obs).max(-1).values
        q = self.q(obs).gather(-1, act.unsqueeze(-1)).squeeze(-1)
        loss = F.smooth_l1_loss(q, target)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), 10.0)
        self.opt.step()
        self.updates += 1
        if self.updates % 1000 == 0:
            self.q_target.load_state_dict(self.q.state_dict())


class HandIQL(HandWritten):
    """As in CORL's single-file IQL: V, twin Q with targets, AWR actor with a cosine learning rate."""

    def __init__(self, data, obs, act, batch, expectile: float = 0.7, temperature: float = 3.0):
        super().__init__(data, batch)
        self.expectile, self.temperature = expectile, temperature
        self.actor = TanhGaussianActor(obs, act)
        self.q1, self.q2 = Q(obs, act), Q(obs, act)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = mlp(obs, 1)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=3e-4)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, T_max=1_000_000)

    def update(self):
        obs, act, rew, next_obs, term = self.sample()
        with torch.no_grad():
            target_q = torch.min(self.q1_target(obs, act), self.q2_target(obs, act))
            next_v = self.v(next_obs).squeeze(-1)
        adv = target_q - self.v(obs).squeeze(-1)
        weight = torch.abs(self.expectile - (adv < 0).float())
        v_loss = (weight * adv.pow(2)).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()

        target = rew + 0.99 * (1 - term) * next_v
        q_loss = F.mse_loss(self.q1(obs, act), target) + F.mse_loss(self.q2(obs, act), target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        soft_update(self.q1, self.q1_target)
        soft_update(self.q2, self.q2_target)

        exp_adv = torch.exp(self.temperature * adv.detach()).clamp(max=100.0)
        actor_loss = (-exp_adv * self.actor.log_prob(obs, act)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_schedule.step()


class HandCQL(HandWritten):
    """As in CORL's single-file CQL: SAC plus the CQL(H) penalty with importance sampling."""

    def __init__(self, data, obs, act, batch, num_actions: int = 10, weight: float = 10.0):
        super().__init__(data, batch)
        self.act_dim, self.num_actions, self.weight = act, num_actions, weight
        self.actor = TanhGaussianActor(obs, act)
        self.q1, self.q2 = Q(obs, act), Q(obs, act)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-5)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=3e-4)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=3e-4)

    def penalty(self, q, obs, repeated_obs, random_act, cur_act, cur_logp, next_act, next_logp, q_data):
        n, a = self.num_actions, self.act_dim
        q_rand = q(repeated_obs, random_act).view(-1, n) - a * np.log(0.5)
        q_cur = q(repeated_obs, cur_act).view(-1, n) - cur_logp.view(-1, n)
        q_next = q(repeated_obs, next_act).view(-1, n) - next_logp.view(-1, n)
        return (torch.logsumexp(torch.cat([q_rand, q_cur, q_next], 1), 1) - q_data).mean()

    def update(self):
        obs, act, rew, next_obs, term = self.sample()
        pi, logp = self.actor(obs)
        alpha_loss = -(self.log_alpha * (logp.detach() - self.act_dim)).mean()
        alpha = self.log_alpha.exp().detach()
        actor_loss = (alpha * logp - torch.min(self.q1(obs, pi), self.q2(obs, pi))).mean()

        q1_data, q2_data = self.q1(obs, act), self.q2(obs, act)
        with torch.no_grad():
            next_act, _ = self.actor(next_obs)
            target = rew + 0.99 * (1 - term) * torch.min(self.q1_target(next_obs, next_act),
                                                          self.q2_target(next_obs, next_act))
            repeated_obs = obs.repeat_interleave(self.num_actions, 0)
            random_act = torch.rand(repeated_obs.shape[0], self.act_dim) * 2 - 1
            cur_act, cur_logp = self.actor(repeated_obs)
            next_act_n, next_logp_n = self.actor(next_obs.repeat_interleave(self.num_actions, 0))
        samples = (repeated_obs, random_act, cur_act, cur_logp, next_act_n, next_logp_n)
        q_loss = (F.mse_loss(q1_data, target) + F.mse_loss(q2_data, target)
                  + self.weight * (self.penalty(self.q1, obs, *samples, q1_data)
                                   + self.penalty(self.q2, obs, *samples, q2_data)))
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        soft_update(self.q1, self.q1_target)
        soft_update(self.q2, self.q2_target)


class HandTD3BC(HandTD3):
    """As in the TD3+BC authors' code: TD3's critic, actor -lambda Q + (pi(s) - a)^2."""

    def actor_loss(self, obs, act):
        pi = self.actor(obs)
        q = self.q1(obs, pi)
        return -(2.5 / q.abs().mean().detach()) * q.mean() + F.mse_loss(pi, act)


class HandCausalBlock(nn.Module):
    """One pre-LN GPT block with the attention written out (QK^T, causal mask, softmax, V)."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float, tokens: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Linear(inner, dim), nn.Dropout(dropout))
        self.attn_drop, self.resid_drop = nn.Dropout(dropout), nn.Dropout(dropout)
        self.register_buffer("causal", torch.tril(torch.ones(tokens, tokens, dtype=torch.bool)))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        weights = self.attn_drop(weights.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(-1))
        x = x + self.resid_drop(self.proj((weights @ v).transpose(1, 2).reshape(b, t, d)))
        return x + self.mlp(self.ln2(x))


class HandDT(nn.Module):
    """The Decision Transformer as scripts write it: token embeddings + timestep embedding, GPT
    blocks over (R, s, a) tokens, a tanh action head read at the state tokens; L2 on valid steps."""

    CONTEXT, EMBED, LAYERS, HEADS, INNER, EPISODE = 20, 128, 3, 1, 512, 1000

    def __init__(self, data, obs, act, batch):
        super().__init__()
        d, t = self.EMBED, self.CONTEXT
        self.data, self.batch = data, batch
        self.generator = torch.Generator().manual_seed(0)
        self.embed_return, self.embed_state, self.embed_action = nn.Linear(1, d), nn.Linear(obs, d), nn.Linear(act, d)
        self.embed_time = nn.Embedding(self.EPISODE, d)
        self.embed_ln, self.embed_drop = nn.LayerNorm(d), nn.Dropout(0.1)
        self.blocks = nn.Sequential(*[HandCausalBlock(d, self.HEADS, self.INNER, 0.1, 3 * t) for _ in range(self.LAYERS)])
        self.final_ln = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, act), nn.Tanh())
        self.opt = torch.optim.AdamW(self.parameters(), lr=1e-4, weight_decay=5e-4)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 10_000))
        # windows ending at each step: left-pad every episode with CONTEXT - 1 empty steps
        n = data["obs"].shape[0]
        episodes = n // self.EPISODE
        pad = lambda x: F.pad(x.view(episodes, self.EPISODE, -1), (0, 0, t - 1, 0))  # noqa: E731
        self.obs, self.act = pad(data["obs"]), pad(data["act"])
        self.rtg, self.valid = pad(data["rtg"].unsqueeze(-1)), pad(torch.ones(n, 1)).squeeze(-1).bool()
        self.time = pad(torch.arange(self.EPISODE).repeat(episodes).unsqueeze(-1).float()).squeeze(-1).long()

    def sample(self):
        episode = torch.randint(self.obs.shape[0], (self.batch,), generator=self.generator)
        end = torch.randint(self.EPISODE, (self.batch,), generator=self.generator) + self.CONTEXT
        steps = end.unsqueeze(1) - torch.arange(self.CONTEXT, 0, -1)
        rows = episode.unsqueeze(1)
        return (self.obs[rows, steps], self.act[rows, steps], self.rtg[rows, steps], self.time[rows, steps],
                self.valid[rows, steps])

    def update(self):
        obs, act, rtg, time_, valid = self.sample()
        b, t = valid.shape
        time_embedding = self.embed_time(time_)
        tokens = torch.stack([self.embed_return(rtg), self.embed_state(obs), self.embed_action(act)], 2)
        tokens = (tokens + time_embedding.unsqueeze(2)).reshape(b, 3 * t, -1)
        hidden = self.final_ln(self.blocks(self.embed_drop(self.embed_ln(tokens)))).view(b, t, 3, -1)
        prediction = self.head(hidden[:, :, 1])
        loss = ((prediction - act).pow(2) * valid.unsqueeze(-1)).sum() / (valid.sum() * act.shape[-1])
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.parameters(), 0.25)
        self.opt.step()
        self.schedule.step()


class HandDiffusionBC(HandWritten):
    """DDPM behaviour cloning as scripts write it: a noise-prediction MLP and the MSE on the noise."""

    STEPS = 100

    def __init__(self, data, obs, act, batch):
        super().__init__(data, batch)
        self.net = nn.Sequential(nn.Linear(act + obs + 16, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                                 nn.Linear(256, act))
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, self.STEPS), 0)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)

    @staticmethod
    def time_embedding(t):
        freqs = torch.exp(-np.log(10_000.0) * torch.arange(8) / 8)
        args = t.float().unsqueeze(-1) * freqs
        return torch.cat([args.sin(), args.cos()], -1)

    def update(self):
        obs, act, _, _, _ = self.sample()
        t = torch.randint(self.STEPS, (self.batch,))
        noise = torch.randn_like(act)
        abar = self.alphas_cumprod[t].unsqueeze(-1)
        noisy = abar.sqrt() * act + (1 - abar).sqrt() * noise
        loss = F.mse_loss(self.net(torch.cat([noisy, obs, self.time_embedding(t)], -1)), noise)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()


SEQUENCE = {"obs": 17, "act": 6, "batch": 64}

# (hand-written class, rltrain overrides, sizes)
ALGOS = {
    "sac": (HandSAC, ["algo=sac", "env=halfcheetah"], CONTINUOUS),
    "td3": (HandTD3, ["algo=td3", "env=halfcheetah"], CONTINUOUS),
    "redq": (HandREDQ, ["algo=redq", "env=halfcheetah"], CONTINUOUS),
    "dqn": (HandDQN, ["algo=dqn", "env=cartpole", "algo.updater.value_network_update_interval=1000"], DISCRETE),
    "iql": (HandIQL, ["algo=iql", "env=halfcheetah"], CONTINUOUS),
    "cql": (HandCQL, ["algo=cql", "env=halfcheetah"], CONTINUOUS),
    "td3bc": (HandTD3BC, ["algo=td3bc", "env=halfcheetah"], CONTINUOUS),
    "dt": (HandDT, ["algo=dt"], SEQUENCE),
    "diffusion_bc": (HandDiffusionBC, ["algo=diffusion_bc"], CONTINUOUS),
}
OFFLINE = {"iql", "cql", "td3bc"}
DATASET_ONLY = {"dt", "diffusion_bc"}  # built without an env: objective + groups on a synthetic dataset


def make_data(sizes: dict, discrete: bool) -> dict[str, torch.Tensor]:
    """``CAPACITY`` random transitions; for sequences, 100 episodes of 1000 steps with returns-to-go."""
    torch.manual_seed(0)
    obs, act = sizes["obs"], sizes["act"]
    action = torch.randint(act, (CAPACITY,)) if discrete else torch.rand(CAPACITY, act) * 2 - 1
    reward = torch.randn(CAPACITY)
    rtg = reward.view(-1, HandDT.EPISODE).flip(-1).cumsum(-1).flip(-1).reshape(-1) * 1e-3
    return {"obs": torch.randn(CAPACITY, obs), "act": action, "rew": reward, "rtg": rtg,
            "next_obs": torch.randn(CAPACITY, obs), "term": (torch.rand(CAPACITY) < 0.01).float()}


def episodes_data(data: dict[str, torch.Tensor], episode: int):
    """``data`` as rltrain's OfflineData of episodes of ``episode`` steps."""
    import gymnasium as gym

    from rltrain.data.minari_data import OfflineData

    n, obs_dim = data["obs"].shape
    count = n // episode
    steps = torch.arange(n) % episode
    episode_index = torch.arange(n) // episode
    obs_index = torch.arange(n) + episode_index  # each episode stores its final next observation too
    observations = torch.zeros(n + count, obs_dim)
    observations[obs_index] = data["obs"]
    return OfflineData(
        observations=observations, obs_index=obs_index, actions=data["act"], rewards=data["rew"],
        terminated=steps == episode - 1, truncated=torch.zeros(n, dtype=torch.bool), episode_index=episode_index,
        step_index=steps, episode_starts=torch.arange(count) * episode,
        episode_lengths=torch.full((count,), episode, dtype=torch.long),
        episode_returns=data["rew"].view(count, episode).sum(-1).double(),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,)),
        action_space=gym.spaces.Box(-1, 1, (data["act"].shape[-1],)), env_spec=None, eval_env_spec=None,
        ref_min_score=None, ref_max_score=None, dataset_id="benchmark/episodes-v0")


def benchmark_config(overrides: list[str], batch: int, device: str = "cpu"):
    """The composed config for ``overrides`` on ``device``, with the benchmark's batch size."""
    from hydra import compose, initialize_config_module

    import rltrain.__main__  # noqa: F401  (registers the config resolvers)

    with initialize_config_module("rltrain.configs", version_base="1.3"):
        return compose("config", overrides=[*overrides, "hparams=none", f"device={device}", "logger.progress=false",
                                            f"trainer.batch_size={batch}"])   # the hand-written twins' settings


def dataset_trainer(overrides: list[str], data: dict[str, torch.Tensor], batch: int):
    """rltrain's Trainer for a dataset-only objective: the objective and optimizer groups built from
    the configs, the sampler its config asks for, over ``data`` as 1000-step episodes."""
    from rltrain.build import build_agent, build_groups, dataset_sampler as sampler_for, trainer_config
    from rltrain.loggers import ConsoleProgress, CSVLogger, Loggers
    from rltrain.modules import Bounded
    from rltrain.sources import DatasetSource
    from rltrain.trainer import Trainer

    cfg = benchmark_config([*overrides, "dataset=minari", "dataset.id=benchmark/episodes-v0"], batch)
    obs_dim, act_dim = data["obs"].shape[-1], data["act"].shape[-1]
    action_spec = Bounded(-torch.ones(act_dim), torch.ones(act_dim))
    agent = build_agent(cfg, Bounded(-torch.ones(obs_dim) * np.inf, torch.ones(obs_dim) * np.inf), action_spec)
    run_dir = Path("/tmp/rltrain-benchmark")
    loggers = Loggers(CSVLogger(run_dir), ConsoleProgress(1, enabled=False), [])
    sampler = sampler_for(cfg, episodes_data(data, HandDT.EPISODE), torch.device("cpu"))
    return Trainer(objective=agent.objective, updater=None, groups=build_groups(agent.objective, cfg, "dataset"),
                   source=DatasetSource(sampler, batch_size=batch, total_updates=1), eval_envs=None, eval_policy=None, loggers=loggers, run_dir=run_dir, config=trainer_config(cfg),
                   device=torch.device("cpu"))


def dataset_sampler(data: dict[str, torch.Tensor], device: str = "cpu"):
    """rltrain's offline sampler over ``data`` (each transition stored as a one-step episode)."""
    import gymnasium as gym

    from rltrain.data.minari_data import OfflineData, TransitionSampler

    n, obs_dim = data["obs"].shape
    index = torch.arange(n)
    offline = OfflineData(
        observations=torch.stack([data["obs"], data["next_obs"]], 1).reshape(2 * n, obs_dim), obs_index=2 * index,
        actions=data["act"], rewards=data["rew"], terminated=data["term"].bool(), truncated=torch.zeros(n, dtype=torch.bool),
        episode_index=index, step_index=torch.zeros(n, dtype=torch.long), episode_starts=index,
        episode_lengths=torch.ones(n, dtype=torch.long), episode_returns=data["rew"].double(),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,)), action_space=gym.spaces.Box(-1, 1, (data["act"].shape[-1],)),
        env_spec=None, eval_env_spec=None, ref_min_score=None, ref_max_score=None, dataset_id="benchmark/random-v0")
    return TransitionSampler(offline, device, seed=0)


def rltrain_trainer(overrides: list[str], data: dict[str, torch.Tensor], batch: int, offline: bool = False,
                    device: str = "cpu"):
    """A Trainer built from the configs with the benchmark's sizes on ``device``; its replay buffer (or,
    ``offline``, its dataset sampler) holds ``data``."""
    from rltrain.build import build_trainer
    from rltrain.sources import DatasetSource

    cfg = benchmark_config([*overrides, "trainer.buffer_size=100000", f"network.actor.num_cells=[{HIDDEN},{HIDDEN}]",
                            f"network.critic.num_cells=[{HIDDEN},{HIDDEN}]"], batch, device)
    trainer = build_trainer(cfg, Path("/tmp/rltrain-benchmark"))
    if offline:
        trainer.source = DatasetSource(dataset_sampler(data, device), batch_size=batch, total_updates=1)
        return trainer
    term = data["term"].bool().unsqueeze(-1)
    trainer.source.buffer.extend(TensorDict({
        "observation": data["obs"], "action": data["act"],
        "next": {"observation": data["next_obs"], "reward": data["rew"].unsqueeze(-1), "terminated": term,
                 "truncated": torch.zeros_like(term), "done": term}}, batch_size=[CAPACITY]))
    return trainer


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn``, called for at least ``seconds``."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


def interleaved(fn_a, fn_b, seconds: float, rounds: int) -> tuple[float, float, float]:
    """Median rate of a, of b, and median of per-round ratios a/b (each side runs ``seconds`` a round)."""
    rates_a, rates_b, ratios = [], [], []
    for _ in range(rounds):
        a, b = rate(fn_a, seconds), rate(fn_b, seconds)
        rates_a.append(a)
        rates_b.append(b)
        ratios.append(a / b)
    return statistics.median(rates_a), statistics.median(rates_b), statistics.median(ratios)


def acting(trainer, hand: HandSAC, threads: int, args) -> str:
    collector = trainer.source.collector
    obs = np.random.default_rng(0).standard_normal(CONTINUOUS["obs"]).astype(np.float32)

    def ours():
        collector._obs = obs[None]
        return collector._policy_actions(0)[0]

    a, b, ratio = interleaved(ours, lambda: hand.act(obs), args.seconds / 2, args.rounds)
    return f"| sac acting | {threads} | {1e6 / a:.0f} µs | {1e6 / b:.0f} µs | {1 / ratio:.2f}x time |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.5, help="time each side runs per round")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, MLP {HIDDEN}x{HIDDEN}, CPU, {args.rounds} interleaved rounds of "
          f"{args.seconds} s per side")
    print("| algorithm | threads | rltrain | hand-written | ratio |")
    print("|---|---|---|---|---|")
    trainers = {}
    for name in args.algos:
        hand_cls, overrides, sizes = ALGOS[name]
        data = make_data(sizes, discrete=sizes is DISCRETE)
        hand = hand_cls(data, sizes["obs"], sizes["act"], sizes["batch"])
        if name in DATASET_ONLY:
            trainer = trainers[name] = dataset_trainer(overrides, data, sizes["batch"])
        else:
            trainer = trainers[name] = rltrain_trainer(overrides, data, sizes["batch"], offline=name in OFFLINE)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for _ in range(10):  # warm-up
                trainer.update()
                hand.update()
            ours, theirs, ratio = interleaved(trainer.update, hand.update, args.seconds, args.rounds)
            print(f"| {name} | {threads} | {ours:.3g} updates/s | {theirs:.3g} updates/s | {ratio:.2f}x |",
                  flush=True)
            if name == "sac":
                print(acting(trainer, hand, threads, args), flush=True)
    if "sac" in trainers and "redq" in trainers:  # REDQ's 10 critics against SAC's 2, interleaved too
        for threads in args.threads:
            torch.set_num_threads(threads)
            redq, sac, ratio = interleaved(trainers["redq"].update, trainers["sac"].update, args.seconds, args.rounds)
            print(f"| redq (10 critics) vs sac (2 critics), both rltrain | {threads} | {redq:.0f} updates/s | "
                  f"{sac:.0f} updates/s | {1 / ratio:.2f}x slower |", flush=True)


if __name__ == "__main__":
    main()
