"""Diffusion BC and ACT: the DDPM schedule, noise target and reverse chain, DiffusionBCLoss, the ACT
CVAE and ACTLoss recomputed by hand on tiny inputs, gradient isolation, the action-chunk sampler's
windows and pads, temporal ensembling, and short "the loss goes down" runs."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, set_interaction_type

from rltrain.data.chunks import ChunkSampler
from rltrain.data.minari_data import OfflineData
from rltrain.modules import Bounded
from rltrain.modules.act import ACTActor, ACTModel, TemporalEnsemblePolicy
from rltrain.modules.diffusion import DDPM, DiffusionActor, sinusoidal_embedding
from rltrain.objectives.act import ACTLoss
from rltrain.objectives.diffusion_bc import DiffusionBCLoss
from tests.helpers import assert_state_dict_round_trip, check_isolation, check_sum_trains_everything

OBS, ACT, B, H, LATENT = 3, 2, 6, 4, 3
LOW, HIGH = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
SPEC = Bounded(LOW, HIGH)


# ---- builders ----------------------------------------------------------------------------------------
def make_diffusion_actor(num_steps: int = 8, seed: int = 0, **kwargs) -> DiffusionActor:
    torch.manual_seed(seed)
    return DiffusionActor(DDPM(ACT, OBS, num_steps=num_steps, num_cells=(16, 16), **kwargs), spec=SPEC)


def make_act_actor(seed: int = 0, dropout: float = 0.0) -> ACTActor:
    torch.manual_seed(seed)
    model = ACTModel(OBS, ACT, H, embed_dim=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=2,
                     latent_dim=LATENT, ff_dim=32, dropout=dropout)
    return ACTActor(model, spec=SPEC)


def in_bounds_actions(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return LOW + torch.rand(*shape, ACT, generator=generator) * (HIGH - LOW)


def flat_batch(batch: int = B, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"observation": torch.randn(batch, OBS, generator=g),
                       "action": in_bounds_actions(batch, generator=g)}, batch_size=[batch])


def chunk_batch(batch_shape=(B,), seed: int = 0, with_pad: bool = True) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({"observation": torch.randn(*batch_shape, OBS, generator=g),
                     ("vla_action", "chunk"): in_bounds_actions(*batch_shape, H, generator=g)},
                    batch_size=list(batch_shape))
    if with_pad:
        # Row i is padded from step (i mod (H + 1)): some rows unpadded, one fully padded.
        start = torch.arange(math.prod(batch_shape)).reshape(batch_shape) % (H + 1)
        td["action_is_pad"] = torch.arange(H) >= start.unsqueeze(-1)
    return td


# ---- DDPM ----------------------------------------------------------------------------------------------
def test_beta_schedule_is_the_spec_one():
    ddpm = DDPM(ACT, OBS)
    betas = torch.tensor([1e-4 + (0.02 - 1e-4) * i / 99 for i in range(100)], dtype=torch.float64)
    torch.testing.assert_close(ddpm.betas, betas.float())
    assert ddpm.betas[0].item() == pytest.approx(1e-4) and ddpm.betas[-1].item() == pytest.approx(0.02)
    torch.testing.assert_close(ddpm.alphas, (1 - betas).float())
    torch.testing.assert_close(ddpm.alphas_cumprod, torch.tensor(np.cumprod(1 - betas.numpy())).float())
    torch.testing.assert_close(ddpm.alphas_cumprod[2], ((1 - 1e-4) * (1 - betas[1]) * (1 - betas[2])).float())
    assert ddpm.score_network[0].in_features == ACT + OBS + 16  # cat[x_t, obs, emb(t)]
    assert isinstance(ddpm.score_network[1], torch.nn.SiLU) and ddpm.score_network[-1].out_features == ACT
    custom = DDPM(ACT, OBS, num_steps=5, beta_start=0.1, beta_end=0.5)
    torch.testing.assert_close(custom.betas, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))


def test_sinusoidal_embedding_by_hand():
    t = torch.tensor([0, 3, 7])
    emb = sinusoidal_embedding(t, 4)
    freqs = [1.0, 10_000 ** -0.5]
    expected = [[math.sin(s * f) for f in freqs] + [math.cos(s * f) for f in freqs] for s in (0, 3, 7)]
    torch.testing.assert_close(emb, torch.tensor(expected))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(t, 5)


def test_add_noise_is_the_forward_process():
    ddpm = DDPM(ACT, OBS, num_steps=10)
    a = torch.tensor([[0.5, -0.25], [1.0, 0.0]])
    eps = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    t = torch.tensor([0, 9])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 10, dtype=torch.float64), 0)
    expected = torch.stack([abar[0].sqrt() * a[0] + (1 - abar[0]).sqrt() * eps[0],
                            abar[9].sqrt() * a[1] + (1 - abar[9]).sqrt() * eps[1]]).float()
    torch.testing.assert_close(ddpm.add_noise(a, t, eps), expected)


def hand_reverse_chain(ddpm: DDPM, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The spec's update x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_hat) + sigma_t z,
    sigma_t^2 the posterior variance, written out independently of the module's coefficients."""
    betas = torch.linspace(ddpm.betas[0].item(), ddpm.betas[-1].item(), ddpm.num_steps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    x = torch.randn(obs.shape[0], ACT, generator=generator)
    for t in range(ddpm.num_steps - 1, -1, -1):
        emb = sinusoidal_embedding(torch.full((obs.shape[0],), t), ddpm.time_embed_dim)
        eps_hat = ddpm.score_network(torch.cat([x, obs, emb], -1))
        mean = (x - betas[t] / (1 - abar[t]).sqrt() * eps_hat) / (1 - betas[t]).sqrt()
        if t > 0:
            sigma = (betas[t] * (1 - abar[t - 1]) / (1 - abar[t])).sqrt()
            mean = mean + sigma * torch.randn(obs.shape[0], ACT, generator=generator)
        x = mean.float()
    return x.clamp(-1, 1)


def test_reverse_chain_is_the_ddpm_update():
    torch.manual_seed(0)
    ddpm = DDPM(ACT, OBS, num_steps=6, beta_start=0.05, beta_end=0.3, num_cells=(16,), clip_denoised=False)
    obs = torch.randn(5, OBS)
    with torch.no_grad():
        sample = ddpm.sample(obs, generator=torch.Generator().manual_seed(3))
        expected = hand_reverse_chain(ddpm, obs, torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(sample, ddpm.sample(obs, generator=torch.Generator().manual_seed(4)))


def test_reverse_chain_shape_bounds_and_deterministic_mode():
    actor = make_diffusion_actor(num_steps=10)
    obs = torch.randn(2, 7, OBS)  # any leading batch shape
    with torch.no_grad():
        normalized = actor.module.sample(obs)
        actions = actor.act(obs)
        torch.manual_seed(1)
        det_a = actor.act(obs, deterministic=True)
        torch.manual_seed(2)
        det_b = actor.act(obs, deterministic=True)
    assert normalized.shape == actions.shape == (2, 7, ACT)
    assert normalized.abs().max() <= 1.0
    assert ((actions >= LOW) & (actions <= HIGH)).all()
    assert torch.equal(det_a, det_b)
    with torch.no_grad():
        torch.manual_seed(1)
        random_a = actor.act(obs)
        torch.manual_seed(2)
        random_b = actor.act(obs)
    assert not torch.equal(random_a, random_b)
    # Deterministic mode is the noiseless chain from x_T = 0.
    with torch.no_grad():
        x = torch.zeros(2, 7, ACT)
        for t in reversed(range(10)):
            x = actor.module.reverse_step(x, obs, t, None)
    torch.testing.assert_close(det_a, actor.unnormalize_action(x.clamp(-1, 1)))


def test_diffusion_actor_scaling_and_interaction_modes():
    actor = make_diffusion_actor()
    a = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 0.25]])
    torch.testing.assert_close(actor.normalize_action(a), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, -0.5]]))
    torch.testing.assert_close(actor.unnormalize_action(actor.normalize_action(a)), a)
    td = flat_batch()
    with torch.no_grad():
        det = actor(td.clone())["action"]
        with set_interaction_type(InteractionType.RANDOM):
            torch.manual_seed(0)
            sampled = actor(td.clone())["action"]
            torch.manual_seed(0)
            expected = actor.act(td["observation"])
    torch.testing.assert_close(det, actor.act(td["observation"], deterministic=True))
    torch.testing.assert_close(sampled, expected)
    with pytest.raises(ValueError, match="finite box"):
        DiffusionActor(DDPM(1, OBS), spec=Bounded(torch.tensor([-math.inf]), torch.tensor([1.0])))
    with pytest.raises(ValueError, match="dimensions"):
        DiffusionActor(DDPM(ACT, OBS), spec=Bounded(torch.zeros(3), torch.ones(3)))


# ---- DiffusionBCLoss ---------------------------------------------------------------------------------------
def diffusion_loss_by_hand(actor: DiffusionActor, td: TensorDict) -> torch.Tensor:
    """Elementwise [B, A] loss with t and eps drawn in the loss's order from the global RNG."""
    ddpm = actor.module
    t = torch.randint(ddpm.num_steps, (td.shape[0],))
    eps = torch.randn(td.shape[0], ACT)
    a = 2 * (td["action"] - LOW) / (HIGH - LOW) - 1
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, ddpm.num_steps, dtype=torch.float64), 0)[t].unsqueeze(-1)
    x_t = (abar.sqrt() * a + (1 - abar).sqrt() * eps).float()
    eps_hat = ddpm.score_network(torch.cat([x_t, td["observation"], sinusoidal_embedding(t, 16)], -1))
    return (eps_hat - eps).pow(2)


def test_diffusion_bc_loss_against_hand_recomputation():
    actor = make_diffusion_actor(num_steps=20)
    td = flat_batch()
    outs = {}
    for reduction in ("mean", "sum", "none"):
        torch.manual_seed(7)
        outs[reduction] = DiffusionBCLoss(actor, reduction=reduction)(td.clone())["loss_diffusion_bc"]
    torch.manual_seed(7)
    expected = diffusion_loss_by_hand(actor, td)
    assert outs["none"].shape == (B, ACT)
    torch.testing.assert_close(outs["none"], expected)
    torch.testing.assert_close(outs["mean"], expected.mean())
    torch.testing.assert_close(outs["sum"], expected.sum())
    # Fresh t and eps on every call.
    assert not torch.equal(DiffusionBCLoss(actor)(td)["loss_diffusion_bc"], outs["mean"])


def test_diffusion_bc_keys_groups_and_errors():
    actor = make_diffusion_actor()
    loss = DiffusionBCLoss(actor)
    assert loss.loss_groups == {"loss_diffusion_bc": "actor"}
    assert loss.parameter_groups == ["actor"]
    td = flat_batch()
    check_isolation(loss, td)
    check_sum_trains_everything(loss, td)
    before = td.clone()
    loss(td)
    assert td.keys() == before.keys() and all(torch.equal(td[k], before[k]) for k in before.keys())
    renamed = TensorDict({("expert", "act"): td["action"], "obs": td["observation"]}, [B])
    loss.set_keys(action=("expert", "act"), observation="obs")
    torch.manual_seed(0)
    got = loss(renamed)["loss_diffusion_bc"]
    torch.manual_seed(0)
    torch.testing.assert_close(got, DiffusionBCLoss(actor)(td)["loss_diffusion_bc"])
    with pytest.raises(ValueError, match="reduction"):
        DiffusionBCLoss(actor, reduction="median")
    with pytest.raises(TypeError, match="DiffusionActor"):
        DiffusionBCLoss(TensorDictModule(torch.nn.Linear(OBS, ACT), ["observation"], ["action"]))
    discrete = TensorDict({"observation": td["observation"], "action": torch.zeros(B, ACT, dtype=torch.long)}, [B])
    with pytest.raises(ValueError, match="continuous"):
        DiffusionBCLoss(actor)(discrete)


def test_diffusion_bc_loss_decreases():
    torch.manual_seed(0)
    actor = DiffusionActor(DDPM(ACT, OBS, num_steps=20, num_cells=(64, 64)), spec=SPEC)
    loss = DiffusionBCLoss(actor)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(256, OBS, generator=g)
    td = TensorDict({"observation": obs, "action": LOW + (HIGH - LOW) * torch.sigmoid(obs[:, :ACT])}, [256])
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    history = []
    for _ in range(300):
        value = loss(td)["loss_diffusion_bc"]
        optim.zero_grad()
        value.backward()
        optim.step()
        history.append(value.item())
    assert np.mean(history[-30:]) < 0.6 * np.mean(history[:30])


# ---- ACT model and actor ------------------------------------------------------------------------------------
def test_act_shapes_latent_and_inference():
    actor = make_act_actor().eval()
    td = chunk_batch(batch_shape=(2, 3))
    out = actor(td.clone())
    assert out["action_pred"].shape == (2, 3, H, ACT)
    assert out["mu"].shape == out["log_var"].shape == (2, 3, LATENT)
    obs = td["observation"].reshape(-1, OBS)
    chunk = actor.predict_chunk(obs)
    assert chunk.shape == (6, H, ACT) and ((chunk >= LOW) & (chunk <= HIGH)).all()
    # Inference uses z = 0: the decoder's output with a zero latent.
    normalized = actor.module.decode(obs, torch.zeros(6, LATENT))
    torch.testing.assert_close(chunk, actor.unnormalize_action(normalized.clamp(-1, 1)))
    # Eval mode with actions: z = mu.
    mu = out["mu"].reshape(6, LATENT)
    torch.testing.assert_close(out["action_pred"].reshape(6, H, ACT),
                               actor.unnormalize_action(actor.module.decode(obs, mu)))
    # Without a chunk the latent is the prior's mean.
    no_chunk = actor(TensorDict({"observation": td["observation"]}, [2, 3]))
    assert torch.equal(no_chunk["mu"], torch.zeros(2, 3, LATENT))


def test_act_training_samples_the_latent():
    actor = make_act_actor().train()
    td = chunk_batch()
    torch.manual_seed(0)
    a = actor(td.clone())
    torch.manual_seed(1)
    b = actor(td.clone())
    torch.testing.assert_close(a["mu"], b["mu"])  # no dropout: the encoder is deterministic
    assert not torch.allclose(a["action_pred"], b["action_pred"])
    torch.manual_seed(0)
    eps = torch.randn(B, LATENT)
    z = a["mu"] + (0.5 * a["log_var"]).exp() * eps
    obs = td["observation"]
    torch.testing.assert_close(a["action_pred"], actor.unnormalize_action(actor.module.decode(obs, z)))


def test_act_encoder_ignores_padded_actions():
    actor = make_act_actor().eval()
    td = chunk_batch()
    changed = td.clone()
    pad = td["action_is_pad"]
    changed["vla_action", "chunk"] = torch.where(pad.unsqueeze(-1), 123.0, td["vla_action", "chunk"])
    a, b = actor(td.clone()), actor(changed)
    torch.testing.assert_close(a["mu"], b["mu"])
    torch.testing.assert_close(a["log_var"], b["log_var"])
    unmasked = td.exclude("action_is_pad")
    changed_unmasked = changed.exclude("action_is_pad")
    assert not torch.allclose(actor(unmasked)["mu"], actor(changed_unmasked)["mu"])
    with pytest.raises(ValueError, match="chunk"):
        actor(TensorDict({"observation": td["observation"],
                          ("vla_action", "chunk"): torch.zeros(B, H + 1, ACT)}, [B]))


# ---- ACTLoss -------------------------------------------------------------------------------------------
class FixedOutputs(torch.nn.Module):
    """A stand-in actor network: known predictions, mu and log_var (trainable offsets of zero)."""

    def __init__(self, pred: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor):
        super().__init__()
        self.pred, self.mu, self.log_var = pred, mu, log_var
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, obs, chunk):
        return self.pred + self.offset, self.mu + self.offset, self.log_var + self.offset


def fixed_actor(batch_shape=(B,), seed: int = 1) -> TensorDictModule:
    g = torch.Generator().manual_seed(seed)
    net = FixedOutputs(torch.randn(*batch_shape, H, ACT, generator=g), torch.randn(*batch_shape, LATENT, generator=g),
                       torch.randn(*batch_shape, LATENT, generator=g))
    return TensorDictModule(net, ["observation", ("vla_action", "chunk")], ["action_pred", "mu", "log_var"])


def act_terms_by_hand(actor: TensorDictModule, td: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (recon, kl) with explicit loops over the batch, the chunk, the actions and the latent."""
    net = actor.module
    chunk = td["vla_action", "chunk"].reshape(-1, H, ACT)
    pad = td.get("action_is_pad", torch.zeros(td.shape + (H,), dtype=torch.bool)).reshape(-1, H)
    pred, mu, log_var = (x.reshape(chunk.shape[0], -1) for x in (net.pred, net.mu, net.log_var))
    pred = pred.reshape(-1, H, ACT)
    recon, kl = [], []
    for i in range(chunk.shape[0]):
        total = sum(abs(pred[i, h, j].item() - chunk[i, h, j].item())
                    for h in range(H) for j in range(ACT) if not pad[i, h])
        recon.append(total / (H * ACT))
        kl.append(sum(-0.5 * (1 + log_var[i, k].item() - mu[i, k].item() ** 2 - math.exp(log_var[i, k].item()))
                      for k in range(LATENT)))
    return torch.tensor(recon).reshape(td.shape), torch.tensor(kl).reshape(td.shape)


@pytest.mark.parametrize("with_pad", [False, True])
def test_act_loss_against_hand_recomputation(with_pad):
    actor = fixed_actor()
    td = chunk_batch(with_pad=with_pad)
    recon, kl = act_terms_by_hand(actor, td)
    if with_pad:
        assert td["action_is_pad"].any() and not td["action_is_pad"].all()
        assert recon[1:].ne(act_terms_by_hand(actor, td.exclude("action_is_pad"))[0][1:]).any()
    out = ACTLoss(actor, kl_weight=2.5)(td.clone())
    torch.testing.assert_close(out["loss_reconstruction"], recon.mean())
    torch.testing.assert_close(out["loss_kl"], kl.mean())
    torch.testing.assert_close(out["loss_act"], recon.mean() + 2.5 * kl.mean())
    out_sum = ACTLoss(actor, reduction="sum")(td.clone())
    torch.testing.assert_close(out_sum["loss_act"], recon.sum() + 10.0 * kl.sum())


def test_act_loss_components_detached_and_reduction_none_keeps_batch_shape():
    actor = fixed_actor(batch_shape=(2, 3))
    td = chunk_batch(batch_shape=(2, 3))
    out = ACTLoss(actor, reduction="none")(td.clone())
    recon, kl = act_terms_by_hand(actor, td)
    assert out["loss_act"].shape == out["loss_kl"].shape == out["loss_reconstruction"].shape == (2, 3)
    torch.testing.assert_close(out["loss_act"], recon + 10.0 * kl)
    torch.testing.assert_close(out["loss_reconstruction"], recon)
    assert out["loss_act"].requires_grad
    assert not out["loss_reconstruction"].requires_grad and not out["loss_kl"].requires_grad


def test_act_loss_kl_weight_and_alias():
    actor = fixed_actor()
    assert ACTLoss(actor).kl_weight == 10.0
    loss = ACTLoss(actor, kl_coeff=0.5)
    assert loss.kl_weight == loss.kl_coeff == 0.5
    td = chunk_batch()
    torch.testing.assert_close(loss(td.clone())["loss_act"], ACTLoss(actor, kl_weight=0.5)(td.clone())["loss_act"])
    with pytest.raises(ValueError, match="not both"):
        ACTLoss(actor, kl_weight=1.0, kl_coeff=1.0)
    with pytest.raises(ValueError, match="kl_weight"):
        ACTLoss(actor, kl_weight=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        ACTLoss(actor, reduction="median")


def test_act_loss_trains_only_the_actor_through_loss_act():
    actor = make_act_actor()
    loss = ACTLoss(actor)
    assert loss.loss_groups == {"loss_act": "actor"} and loss.parameter_groups == ["actor"]
    td = chunk_batch()
    check_isolation(loss, td)
    check_sum_trains_everything(loss, td)
    before = td.clone()
    loss(td)
    assert set(td.keys(True, True)) == set(before.keys(True, True))


def test_act_loss_custom_keys():
    actor = make_act_actor().eval()
    td = chunk_batch()
    expected = ACTLoss(actor)(td.clone())
    renamed = TensorDict({"obs": td["observation"], "chunk": td["vla_action", "chunk"],
                          "action_is_pad": td["action_is_pad"]}, [B])
    custom = ACTActor(actor.module, spec=SPEC, observation_key="obs", action_chunk_key="chunk")
    loss = ACTLoss(custom).set_keys(observation="obs", action_chunk="chunk")
    got = loss(renamed)
    for key in ("loss_act", "loss_kl", "loss_reconstruction"):
        torch.testing.assert_close(got[key], expected[key])


def test_act_loss_decreases():
    actor = make_act_actor(dropout=0.0)
    loss = ACTLoss(actor)
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(64, OBS, generator=g)
    steps = torch.arange(H).float() / H
    # Chunks that depend smoothly on the state and the step within the chunk.
    unit = torch.tanh(obs[:, :ACT].unsqueeze(1) + steps.unsqueeze(-1))
    td = TensorDict({"observation": obs, ("vla_action", "chunk"): LOW + (HIGH - LOW) * (unit + 1) / 2}, [64])
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        out = loss(td)
        optim.zero_grad()
        out["loss_act"].backward()
        optim.step()
        history.append((out["loss_act"].item(), out["loss_reconstruction"].item()))
    first, last = np.mean(history[:5], axis=0), np.mean(history[-5:], axis=0)
    assert last[0] < 0.2 * first[0]
    assert last[1] < 0.3 * first[1]  # the reconstruction itself, not only the KL, goes down


# ---- ChunkSampler ----------------------------------------------------------------------------------------
def tiny_offline_data(lengths=(3, 1, 2), discrete: bool = False) -> OfflineData:
    """Episodes back to back; action of transition row j is [j, 10 j]; observation row r is [r, -r]."""
    lengths_t = torch.tensor(lengths)
    n, episodes = int(lengths_t.sum()), len(lengths)
    episode_starts = torch.cumsum(lengths_t, 0) - lengths_t
    episode_index = torch.repeat_interleave(torch.arange(episodes), lengths_t)
    rows = torch.arange(n).float()
    actions = torch.arange(n) if discrete else torch.stack([rows, 10 * rows], -1)
    obs_rows = torch.arange(n + episodes).float()
    return OfflineData(
        observations=torch.stack([obs_rows, -obs_rows], -1), obs_index=torch.arange(n) + episode_index,
        actions=actions, rewards=torch.zeros(n), terminated=torch.zeros(n, dtype=torch.bool),
        truncated=torch.zeros(n, dtype=torch.bool), episode_index=episode_index,
        step_index=torch.arange(n) - episode_starts[episode_index], episode_starts=episode_starts,
        episode_lengths=lengths_t, episode_returns=torch.zeros(episodes, dtype=torch.float64),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (2,)),
        action_space=gym.spaces.Discrete(n) if discrete else gym.spaces.Box(-100, 100, (2,)),
        env_spec=None, eval_env_spec=None, ref_min_score=None, ref_max_score=None, dataset_id="test/tiny-v0")


def test_chunk_sampler_windows_and_pads_by_hand():
    # Episodes: rows 0,1,2 (obs rows 0..3) | row 3 (obs rows 4,5) | rows 4,5 (obs rows 6..8).
    sampler = ChunkSampler(tiny_offline_data(), chunk_size=3)
    td = sampler.chunks(torch.arange(6))
    expected_rows = [[0, 1, 2], [1, 2, None], [2, None, None], [3, None, None], [4, 5, None], [5, None, None]]
    expected_chunk = torch.tensor([[[r, 10 * r] if r is not None else [0, 0] for r in window]
                                   for window in expected_rows], dtype=torch.float32)
    expected_pad = torch.tensor([[r is None for r in window] for window in expected_rows])
    assert torch.equal(td["vla_action", "chunk"], expected_chunk)
    assert torch.equal(td["action_is_pad"], expected_pad)
    obs_rows = torch.tensor([0, 1, 2, 4, 6, 7]).float()
    assert torch.equal(td["observation"], torch.stack([obs_rows, -obs_rows], -1))
    assert torch.equal(td["action"], expected_chunk[:, 0])
    assert td.batch_size == torch.Size([6]) and td["action_is_pad"].dtype == torch.bool


def test_chunk_sampler_samples_seeded_and_resumes():
    data = tiny_offline_data()
    sampler = ChunkSampler(data, chunk_size=2, seed=3)
    assert len(sampler) == 6
    td = sampler.sample(50)
    assert td["vla_action", "chunk"].shape == (50, 2, 2) and td["action_is_pad"].shape == (50, 2)
    assert td["observation"].shape == (50, 2) and td["action"].shape == (50, 2)
    starts = td["action"][:, 0].long()
    torch.testing.assert_close(td, sampler.chunks(starts))
    assert set(starts.tolist()) == set(range(6))
    state = sampler.state_dict()
    a = sampler.sample(8)
    other = ChunkSampler(data, chunk_size=2, seed=99)
    other.load_state_dict(state)
    torch.testing.assert_close(other.sample(8), a)
    torch.testing.assert_close(ChunkSampler(data, chunk_size=2, seed=3).sample(50), td)


def test_chunk_sampler_errors():
    data = tiny_offline_data()
    ChunkSampler(data, chunk_size=3)  # as long as the longest episode: fine
    with pytest.raises(ValueError, match="longer than every episode"):
        ChunkSampler(data, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkSampler(data, chunk_size=0)
    with pytest.raises(ValueError, match="continuous"):
        ChunkSampler(tiny_offline_data(discrete=True), chunk_size=2)


# ---- temporal ensembling ------------------------------------------------------------------------------------
class CountingPredictor:
    """Chunk number c (0-based) predicts value 100 c + h for its step h, the same in every env and
    action dim; it records the observations it saw."""

    def __init__(self, horizon: int):
        self.horizon, self.calls, self.seen = horizon, 0, []

    def predict_chunk(self, obs):
        self.seen.append(obs.clone())
        values = 100.0 * self.calls + torch.arange(self.horizon, dtype=torch.float32)
        self.calls += 1
        return values.reshape(1, -1, 1).expand(obs.shape[0], -1, ACT).clone()


def ensembled_by_hand(step: int, horizon: int, m: float) -> float:
    """ACT: predictions for `step` from chunks issued at steps max(0, step-H+1) .. step, oldest first,
    weights exp(-m i) with i = 0 the oldest."""
    issued = list(range(max(0, step - horizon + 1), step + 1))
    values = [100.0 * c + (step - c) for c in issued]
    weights = [math.exp(-m * i) for i in range(len(issued))]
    return sum(w * v for w, v in zip(weights, values)) / sum(weights)


def test_temporal_ensemble_weights_the_oldest_first():
    horizon, m = 3, 0.7
    policy = TemporalEnsemblePolicy(CountingPredictor(horizon), ensemble_decay=m)
    policy.reset(2)
    for step in range(6):
        action = policy(torch.zeros(2, OBS))
        assert action.shape == (2, ACT)
        torch.testing.assert_close(action, torch.full((2, ACT), ensembled_by_hand(step, horizon, m)))
    torch.testing.assert_close(policy.ensemble_weights(3).float(),
                               torch.tensor([math.exp(-2 * m), math.exp(-m), 1.0]) / sum(
                                   math.exp(-i * m) for i in range(3)))
    # reset forgets the stored chunks: the next action is the new chunk's first entry.
    policy.reset(2)
    torch.testing.assert_close(policy(torch.zeros(2, OBS)), torch.full((2, ACT), 600.0))
    with pytest.raises(ValueError, match="reset"):
        policy(torch.zeros(3, OBS))


def test_open_loop_executes_each_chunk_then_replans():
    predictor = CountingPredictor(3)
    policy = TemporalEnsemblePolicy(predictor, temporal_ensemble=False, normalizer=lambda obs: obs * 2)
    policy.reset(1)
    actions = [policy(torch.ones(1, OBS))[0, 0].item() for _ in range(7)]
    assert actions == [0, 1, 2, 100, 101, 102, 200]
    assert predictor.calls == 3 and torch.equal(predictor.seen[0], torch.full((1, OBS), 2.0))


def test_temporal_ensemble_with_an_act_actor_stays_in_bounds():
    actor = make_act_actor().eval()
    policy = TemporalEnsemblePolicy(actor)
    policy.reset(4)
    with torch.no_grad():
        for _ in range(H + 2):
            action = policy(torch.randn(4, OBS) * 5)
            assert action.shape == (4, ACT) and action.dtype == torch.float32
            assert ((action >= LOW) & (action <= HIGH)).all()


# ---- checkpoints and devices --------------------------------------------------------------------------------
def test_state_dict_round_trips():
    assert_state_dict_round_trip(lambda: DiffusionBCLoss(make_diffusion_actor()), flat_batch())
    assert_state_dict_round_trip(lambda: ACTLoss(make_act_actor()), chunk_batch())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_everything_runs_on_cuda():
    device = torch.device("cuda")
    diffusion = DiffusionBCLoss(make_diffusion_actor()).to(device)
    diffusion(flat_batch().to(device))["loss_diffusion_bc"].backward()
    actions = diffusion.actor_network.act(torch.randn(4, OBS, device=device))
    assert actions.device.type == "cuda" and ((actions >= LOW.cuda()) & (actions <= HIGH.cuda())).all()
    sampled = ChunkSampler(tiny_offline_data(), chunk_size=2, device=device).sample(8)
    assert all(value.device.type == "cuda" for value in sampled.values(True, True))
    act = ACTLoss(make_act_actor()).to(device)
    act(chunk_batch().to(device))["loss_act"].backward()
    policy = TemporalEnsemblePolicy(act.actor_network.eval())
    policy.reset(3)
    with torch.no_grad():
        assert policy(torch.randn(3, OBS, device=device)).device.type == "cuda"
