"""Issue 13: the reference pages' API and TorchRL's behaviour where rltrain differed. One test (or a few)
per item, each against a hand computation or the reference's documented contract."""

from __future__ import annotations

import glob
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
import yaml
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rltrain.data.trajectory import TrajectoryBuffer
from rltrain.modules import MLP, Bounded, NormalParamExtractor, ProbabilisticActor, TanhNormal, ValueOperator
from rltrain.modules.actors import Actor, QValueActor, SafeModule
from rltrain.modules.specs import MultiOneHot
from rltrain.modules.transformer import DecisionTransformer, DTActor
from rltrain.objectives import (
    ACTLoss, BCLoss, CrossQLoss, DiscreteCQLLoss, DQNLoss, GAILLoss, HardUpdate, IQLLoss, MissingKeyError,
    OnlineDTLoss, PPOLoss, SACLoss, SoftUpdate, TD3Loss,
)
from rltrain.objectives.dqn import check_support_covers_returns
from rltrain.objectives.value_estimators import (
    generalized_advantage_estimate, td0_return, td1_return, td_lambda_return,
)
from tests.helpers import LinearQNet, make_actor, make_batch, make_qvalue, make_value

OBS, ACT, B = 3, 2, 8
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


# ---- 1. ACTLoss: the reference's actor layout ----------------------------------------------------------
class _ChunkEcho(nn.Module):
    """Predicts the chunk plus a learned offset; mu/log_var from the observation."""

    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(0.25))

    def forward(self, obs, chunk):
        return chunk + self.offset, obs[..., :2], torch.zeros_like(obs[..., :2])


def test_act_loss_feeds_the_reference_layout_and_keeps_rltrains():
    obs, chunk = torch.randn(B, OBS), torch.randn(B, 4, ACT)
    batch = TensorDict({"observation": obs, ("vla_action", "chunk"): chunk}, [B])
    net = _ChunkEcho()
    reference_style = TensorDictModule(net, ["observation", "action_chunk"], ["action_pred", "mu", "log_var"])
    rltrain_style = TensorDictModule(net, ["observation", ("vla_action", "chunk")], ["action_pred", "mu", "log_var"])
    expected_recon = torch.tensor(0.25)
    expected_kl = (0.5 * obs[:, :2].pow(2)).sum(-1).mean()
    for actor in (reference_style, rltrain_style):
        out = ACTLoss(actor, kl_weight=2.0)(batch.clone())
        torch.testing.assert_close(out["loss_reconstruction"], expected_recon)
        torch.testing.assert_close(out["loss_act"], expected_recon + 2.0 * expected_kl)
    renamed = TensorDict({"obs": obs, "chunk": chunk}, [B])
    out = ACTLoss(reference_style).set_keys(observation="obs", action_chunk="chunk")(renamed)
    torch.testing.assert_close(out["loss_reconstruction"], expected_recon)


# ---- 2. DiscreteCQLLoss pred_value ------------------------------------------------------------------------
def test_discrete_cql_pred_value_is_the_mean_over_every_action():
    torch.manual_seed(0)
    actor = QValueActor(MLP(OBS, 4, (8,)), action_space="categorical")
    batch = make_batch(B, OBS, 1)
    batch["action"] = torch.randint(4, (B,))
    out = DiscreteCQLLoss(actor)(batch)
    with torch.no_grad():
        values = actor.module(batch["observation"])
    torch.testing.assert_close(out["pred_value"], values.mean())
    assert not torch.allclose(out["pred_value"], values.gather(-1, batch["action"].unsqueeze(-1)).mean())


# ---- 3. TD3 state_action_value_actor [K, B] ---------------------------------------------------------------
def test_td3_reports_every_critic_at_the_actor_action_and_trains_on_the_first():
    torch.manual_seed(0)
    actor = Actor(nn.Sequential(MLP(OBS, ACT, (8,)), nn.Tanh()))
    loss = TD3Loss(actor, make_qvalue(OBS, ACT), num_qvalue_nets=3, bounds=(-1.0, 1.0))
    batch = make_batch(B, OBS, ACT)
    out = loss(batch)
    with torch.no_grad():
        action = actor.module(batch["observation"])
        per_critic = loss.qvalue_network(batch["observation"], action).squeeze(-1)
    assert out["state_action_value_actor"].shape == (3, B)
    torch.testing.assert_close(out["state_action_value_actor"], per_critic)
    torch.testing.assert_close(out["loss_actor"], -per_critic[0].mean())
    out["loss_actor"].backward()
    assert all(p.grad is None or not p.grad.any() for p in loss.qvalue_network.parameters())
    assert any(p.grad is not None and p.grad.any() for p in actor.parameters())


# ---- 4. NormalParamExtractor's floor -----------------------------------------------------------------------
def test_normal_param_extractor_default_is_the_reference_biased_softplus():
    x = torch.tensor([[0.0, 0.0, -30.0, 2.0]])
    _, scale = NormalParamExtractor()(x)
    bias = 0.99 + math.log(-math.expm1(-0.99))  # inv_softplus(1 - 0.01)
    torch.testing.assert_close(scale, F.softplus(x[:, 2:] + bias) + 0.01)
    torch.testing.assert_close(NormalParamExtractor()(torch.zeros(1, 2))[1], torch.ones(1, 1))
    assert scale[0, 0] >= 0.01
    _, floorless = NormalParamExtractor("biased_softplus_1.0_0.0")(x)
    torch.testing.assert_close(floorless, F.softplus(x[:, 2:] + 1.0 + math.log(-math.expm1(-1.0))).clamp_min(1e-4))
    with pytest.raises(ValueError, match="biased_softplus"):
        NormalParamExtractor("biased_softplus_0.5_1.0")
    for name in ("mlp", "crossq"):  # the CLI keeps its floorless scale, written out explicitly
        with open(os.path.join(CONFIGS, "network", f"{name}.yaml")) as f:
            assert yaml.safe_load(f)["actor"]["scale_mapping"] == "biased_softplus_1.0_0.0"


# ---- 5 (and the SAC example). SafeModule, imports, updaters --------------------------------------------------
def QNet() -> LinearQNet:  # noqa: N802 (the reference page's name)
    return LinearQNet(OBS, ACT)


def reference_sac_actor() -> ProbabilisticActor:
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT), (ACT,))
    net = nn.Sequential(nn.Linear(OBS, 2 * ACT), NormalParamExtractor())
    module = SafeModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module=module, in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal)


def test_reference_sac_example_ports_by_changing_imports():
    torch.manual_seed(0)
    actor = reference_sac_actor()
    qvalue = ValueOperator(module=QNet(), in_keys=["observation", "action"])
    loss_module = SACLoss(actor_network=actor, qvalue_network=qvalue)
    updater = SoftUpdate(loss_module, eps=0.995)
    assert isinstance(HardUpdate(loss_module, value_network_update_interval=10), HardUpdate)
    loss_td = loss_module(make_batch(B, OBS, ACT))
    (loss_td["loss_actor"] + loss_td["loss_qvalue"] + loss_td["loss_alpha"]).backward()
    assert all(torch.isfinite(loss_td[k]) for k in ("loss_actor", "loss_qvalue", "loss_alpha"))
    assert actor.module.module[0].weight.grad is not None
    updater.step()


def test_safe_module_projects_onto_its_spec_when_safe():
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT))
    big = SafeModule(nn.Linear(OBS, ACT), in_keys=["observation"], out_keys=["action"], spec=spec, safe=True)
    with torch.no_grad():
        big.module.weight.fill_(10.0)
    out = big(TensorDict({"observation": torch.ones(4, OBS)}, [4]))
    assert out["action"].abs().max() == 1.0
    with pytest.raises(ValueError, match="Bounded"):
        SafeModule(nn.Linear(OBS, ACT), in_keys=["observation"], out_keys=["action"], safe=True)


# ---- 6. mult_one_hot and binary action spaces ---------------------------------------------------------------
def _linear_q_batch(action: torch.Tensor, rows: int) -> TensorDict:
    batch = make_batch(rows, OBS, 1)
    batch["action"] = action
    return batch


@pytest.mark.parametrize("space", ["mult_one_hot", "binary"])
def test_dqn_accepts_mult_one_hot_and_binary_actions(space):
    torch.manual_seed(0)
    kwargs = {"var_nums": [3, 2]} if space == "mult_one_hot" else {}
    actor = QValueActor(MLP(OBS, 5, (8,)), action_space=space, **kwargs)
    values = torch.tensor([[0.1, 0.7, -0.2, -1.0, 0.3]])
    if space == "mult_one_hot":
        greedy, best = torch.tensor([[0, 1, 0, 0, 1]]), 0.7 + 0.3
    else:
        greedy, best = torch.tensor([[1, 1, 0, 0, 1]]), 0.1 + 0.7 + 0.3
    assert torch.equal(actor.greedy(values), greedy)
    torch.testing.assert_close(actor.max_value(values), torch.tensor([[best]]))

    g = torch.Generator().manual_seed(3)
    if space == "mult_one_hot":
        action = torch.cat([F.one_hot(torch.randint(3, (B,), generator=g), 3),
                            F.one_hot(torch.randint(2, (B,), generator=g), 2)], -1)
    else:
        action = torch.randint(2, (B, 5), generator=g)
    batch = _linear_q_batch(action, B)
    loss = DQNLoss(actor, action_space=space, delay_value=False, loss_function="l2")
    loss.make_value_estimator(gamma=0.9)
    out = loss(batch)
    with torch.no_grad():
        q = actor.module(batch["observation"])
        next_q = actor.module(batch["next", "observation"])
        next_best = actor.value_of(next_q, actor.greedy(next_q)).squeeze(-1)
        y = batch["next", "reward"].squeeze(-1) + 0.9 * (~batch["next", "terminated"].squeeze(-1)) * next_best
        pred = (q * action).sum(-1)
    torch.testing.assert_close(out["loss"], (pred - y).pow(2).mean())
    td = actor(TensorDict({"observation": batch["observation"]}, [B]))
    torch.testing.assert_close(td["chosen_action_value"], actor.max_value(td["action_value"]))


def test_mult_one_hot_needs_its_group_sizes():
    with pytest.raises(ValueError, match="var_nums"):
        QValueActor(MLP(OBS, 5, (8,)), action_space="mult_one_hot")
    assert QValueActor(MLP(OBS, 5, (8,)), action_space=MultiOneHot([3, 2])).var_nums == (3, 2)


# ---- 7. OnlineDTLoss with a ProbabilisticActor; CrossQ's message ------------------------------------------------
def test_online_dt_loss_accepts_a_probabilistic_actor_over_a_sequence_module():
    torch.manual_seed(0)
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT))
    net = nn.Sequential(nn.Linear(OBS, 2 * ACT), NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]), in_keys=["loc", "scale"],
                               spec=spec, distribution_class=TanhNormal)
    batch = TensorDict({"observation": torch.randn(4, 5, OBS), "action": torch.rand(4, 5, ACT) * 1.8 - 0.9}, [4, 5])
    loss = OnlineDTLoss(actor, alpha_init=0.5)
    out = loss(batch)
    loc, scale = net(batch["observation"])
    expected_ll = TanhNormal(loc, scale, spec.low, spec.high).log_prob(batch["action"]).mean()
    torch.testing.assert_close(out["loss_log_likelihood"], -expected_ll)
    assert loss.target_entropy == -ACT and torch.isfinite(out["loss_entropy"])
    out["loss_log_likelihood"].backward()
    assert net[0].weight.grad is not None
    with pytest.raises(TypeError, match="OnlineDTActor or a rltrain.modules.ProbabilisticActor"):
        OnlineDTLoss(Actor(nn.Linear(OBS, ACT)))


def test_crossq_says_which_critics_it_can_stack_and_why():
    with pytest.raises(TypeError, match=r"BRNMLP.*|normalization layers see the current and next"):
        CrossQLoss(reference_sac_actor(), ValueOperator(QNet(), in_keys=["observation", "action"]))


# ---- 8. Decision Transformer without timesteps -----------------------------------------------------------------
def test_dt_actor_derives_positions_when_timestep_is_absent():
    torch.manual_seed(0)
    transformer = DecisionTransformer(OBS, ACT, embed_dim=16, n_layer=1, n_head=2, dropout=0.0, context_len=5)
    actor = DTActor(transformer, Bounded(-torch.ones(ACT), torch.ones(ACT))).eval()
    td = TensorDict({"observation": torch.randn(2, 5, OBS), "action": torch.randn(2, 5, ACT),
                     "return_to_go": torch.randn(2, 5, 1)}, [2, 5])
    pad = torch.tensor([[True, True, False, False, False], [False] * 5])
    with_positions = td.clone()
    with_positions["timestep"] = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    with_positions["pad_mask"] = pad
    td["pad_mask"] = pad
    torch.testing.assert_close(actor(td)["action"], actor(with_positions)["action"])


# ---- 9. a missing key ------------------------------------------------------------------------------------------
MISSING_KEY_CASES = {
    "sac": (lambda: SACLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT)), ("next", "reward")),
    "td3": (lambda: TD3Loss(Actor(MLP(OBS, ACT, (8,))), make_qvalue(OBS, ACT), bounds=(-1.0, 1.0)), "action"),
    "iql": (lambda: IQLLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), make_value(OBS)), ("next", "observation")),
    "bc": (lambda: BCLoss(Actor(MLP(OBS, ACT, (8,)))), "observation"),
    "dqn": (lambda: DQNLoss(QValueActor(MLP(OBS, 4, (8,)), action_space="categorical")), ("next", "reward")),
}


@pytest.mark.parametrize("name", MISSING_KEY_CASES)
def test_a_batch_missing_a_key_raises_a_key_error_naming_it(name):
    build, missing = MISSING_KEY_CASES[name]
    batch = make_batch(B, OBS, ACT)
    if name == "dqn":
        batch["action"] = torch.randint(4, (B,))
    build()(batch.clone())  # the full batch works
    with pytest.raises(KeyError) as info:
        build()(batch.exclude(missing))
    assert isinstance(info.value, MissingKeyError)
    message = str(info.value)
    assert repr(missing) in message and "expects" in message and "set_keys" in message


# ---- 10. MLP defaults ---------------------------------------------------------------------------------------------
def test_mlp_defaults_are_the_reference_three_tanh_layers_of_32():
    net = MLP(in_features=4, out_features=3)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 32), (32, 32), (32, 32), (32, 3)]
    assert sum(isinstance(m, nn.Tanh) for m in net) == 3 and not any(isinstance(m, nn.ReLU) for m in net)
    for name in ("mlp", "crossq"):  # the CLI sets sizes and activations itself
        with open(os.path.join(CONFIGS, "network", f"{name}.yaml")) as f:
            network = yaml.safe_load(f)
        assert all(network[part]["num_cells"] and network[part]["activation"] for part in ("actor", "critic"))


# ---- 11. value estimators --------------------------------------------------------------------------------------------
def test_td_lambda_td1_and_gae_against_hand_worked_examples():
    # one row, four steps: the episode is truncated after step 1 (a new one starts at step 2), step 3 terminates
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    v = torch.tensor([[10.0, 20.0, 30.0, 40.0]])  # V(s_{t+1})
    done = torch.tensor([[False, True, False, True]])
    term = torch.tensor([[False, False, False, True]])
    g, lam = 0.5, 0.5
    # backwards: G3 = 4 (terminated); G2 = 3 + .5 (.5*30 + .5*4) = 11.5; G1 = 2 + .5*20 = 12 (end of episode);
    # G0 = 1 + .5 (.5*10 + .5*12) = 6.5
    torch.testing.assert_close(td_lambda_return(r, done, term, v, g, lam), torch.tensor([[6.5, 12.0, 11.5, 4.0]]))
    # TD(1): G3 = 4; G2 = 3 + .5*4 = 5; G1 = 2 + .5*20 = 12; G0 = 1 + .5*12 = 7
    torch.testing.assert_close(td1_return(r, done, term, v, g), torch.tensor([[7.0, 12.0, 5.0, 4.0]]))
    torch.testing.assert_close(td_lambda_return(r, done, term, v, g, 0.0), td0_return(r, term, v, g))
    # GAE with V(s_t) = [1, 2, 3, 4]: deltas [1+5-1, 2+10-2, 3+15-3, 4-4] = [5, 10, 15, 0];
    # A3 = 0, A2 = 15 + .25*0 = 15, A1 = 10 (done), A0 = 5 + .25*10 = 7.5
    value = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    advantage, target = generalized_advantage_estimate(g, lam, value, v, r, done, term, time_dim=1)
    torch.testing.assert_close(advantage, torch.tensor([[7.5, 10.0, 15.0, 0.0]]))
    torch.testing.assert_close(target, advantage + value)


def test_sac_td_lambda_on_trajectory_batches():
    torch.manual_seed(0)
    loss = SACLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), fixed_alpha=True, alpha_init=1e-6,
                   loss_function="l2")
    loss.make_value_estimator("td_lambda", gamma=0.9, lmbda=0.7)
    batch = make_batch(2 * 4, OBS, ACT).reshape(2, 4)
    captured = {}

    def spy(reward, done, terminated, next_value, gamma, lmbda, time_dim):
        captured.update(args=(reward, done, terminated, next_value, gamma, lmbda, time_dim))
        return td_lambda_return(reward, done, terminated, next_value, gamma, lmbda, time_dim)

    import rltrain.objectives.common as common
    original, common.td_lambda_return = common.td_lambda_return, spy
    try:
        loss(batch)
    finally:
        common.td_lambda_return = original
    reward, done, terminated, _, gamma, lmbda, time_dim = captured["args"]
    assert time_dim == 1 and lmbda == 0.7 and reward.shape == (2, 4)
    torch.testing.assert_close(done, batch["next", "done"].squeeze(-1))
    torch.testing.assert_close(terminated, batch["next", "terminated"].squeeze(-1))
    with pytest.raises(ValueError, match="trajectory"):
        loss(make_batch(B, OBS, ACT))
    with pytest.raises(ValueError, match="supports the value estimators"):
        loss.make_value_estimator("gae")


def test_ppo_takes_td_lambda_advantages():
    critic = make_value(OBS)
    loss = PPOLoss(make_actor(OBS, ACT), critic)
    loss.make_value_estimator("td1", gamma=0.9)
    rollout = make_batch(5, OBS, ACT).unsqueeze(1)  # time-major [T=5, N=1]
    loss.compute_advantage(rollout)
    with torch.no_grad():
        next_value = critic.module(rollout["next", "observation"])
    expected = td1_return(rollout["next", "reward"], rollout["next", "done"], rollout["next", "terminated"],
                          next_value, 0.9, time_dim=0)
    torch.testing.assert_close(rollout["value_target"], expected)
    torch.testing.assert_close(rollout["advantage"], expected - rollout["state_value"])


# ---- 12. GAIL with a probability discriminator ---------------------------------------------------------------------
def test_gail_probability_discriminator_option():
    torch.manual_seed(0)
    logits_net = nn.Linear(OBS + ACT, 1)
    probs_net = nn.Sequential(logits_net, nn.Sigmoid())
    keys = ["observation", "action"]
    batch = TensorDict({"observation": torch.randn(B, OBS), "action": torch.randn(B, ACT),
                        "collector_observation": torch.randn(B, OBS), "collector_action": torch.randn(B, ACT)}, [B])
    with_logits = GAILLoss(TensorDictModule(_Cat(logits_net), keys, ["d_logits"]))(batch)
    probs_loss = GAILLoss(TensorDictModule(_Cat(probs_net), keys, ["d_logits"]), discriminator_output="probs")
    with_probs = probs_loss(batch)
    p_expert = probs_net(torch.cat([batch["observation"], batch["action"]], -1)).squeeze(-1)
    p_collector = probs_net(torch.cat([batch["collector_observation"], batch["collector_action"]], -1)).squeeze(-1)
    expected = (F.binary_cross_entropy(p_expert, torch.ones(B), reduction="none")
                + F.binary_cross_entropy(p_collector, torch.zeros(B), reduction="none")).mean()
    torch.testing.assert_close(with_probs["loss"], expected)
    torch.testing.assert_close(with_probs["loss"], with_logits["loss"])
    reward = probs_loss.policy_reward(batch["observation"], batch["action"]).squeeze(-1)
    torch.testing.assert_close(reward, -torch.log(1 - p_expert + 1e-8))
    with pytest.raises(ValueError, match="discriminator_output"):
        GAILLoss(TensorDictModule(_Cat(probs_net), keys, ["d_logits"]), discriminator_output="sigmoid")


class _Cat(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, obs, action):
        return self.net(torch.cat([obs, action], -1))


# ---- 13. SAC skip_done_states selects terminated rows ---------------------------------------------------------
def test_sac_skip_done_states_keeps_truncated_rows():
    batch = make_batch(B, OBS, ACT)
    batch["next", "terminated"] = torch.zeros_like(batch["next", "terminated"])  # rows 1 and 6 stay truncated
    assert batch["next", "done"].any() and not batch["next", "terminated"].any()
    losses = {}
    for skip in (True, False):
        torch.manual_seed(0)
        loss = SACLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), skip_done_states=skip)
        torch.manual_seed(1)
        losses[skip] = loss(batch.clone())["loss_qvalue"]
    # Nothing terminated, so nothing is skipped: truncated rows get a real next action and bootstrap
    # (selecting with done gave them a zero action and log-prob: a different loss).
    torch.testing.assert_close(losses[True], losses[False])
    batch["next", "terminated"][0] = True  # a terminal row, whose next observation is NaN
    batch["next", "observation"][0] = float("nan")
    assert torch.isfinite(SACLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), skip_done_states=True)(batch)[
        "loss_qvalue"])


# ---- 14. Online DT buffer order ---------------------------------------------------------------------------------------
def test_trajectory_buffer_keeps_offline_episodes_by_ascending_return():
    lengths = torch.tensor([2, 3, 2, 2])
    returns = [5.0, -1.0, 9.0, 0.0]
    rewards = torch.cat([torch.full((int(n),), r / int(n)) for n, r in zip(lengths, returns)])
    n = int(lengths.sum())
    buffer = TrajectoryBuffer(torch.arange(n, dtype=torch.float32).unsqueeze(-1), torch.zeros(n, 1), rewards,
                              lengths, context_len=2, capacity=3)
    assert buffer.episode_lengths.tolist() == [2, 2, 2]  # returns 0, 5, 9: -1 dropped, the worst kept first
    assert buffer._observations.squeeze(-1).tolist() == [7.0, 8.0, 0.0, 1.0, 5.0, 6.0]
    buffer.add_episode(torch.full((2, 1), 100.0), torch.zeros(2, 1), torch.tensor([1.0, 1.0]))
    assert buffer._observations.squeeze(-1).tolist() == [0.0, 1.0, 5.0, 6.0, 100.0, 100.0]  # the return-0 one left


# ---- 15. C51 support per env ---------------------------------------------------------------------------------------------
def test_c51_support_warning_and_env_supports():
    with pytest.warns(UserWarning, match="does not cover"):
        assert not check_support_covers_returns(-10.0, 10.0, (1.0, 1.0), 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_support_covers_returns(0.0, 100.0, (1.0, 1.0), 0.99)
        assert check_support_covers_returns(-300.0, 300.0, None, 0.99)
    with open(os.path.join(CONFIGS, "algo", "c51.yaml")) as f:
        gamma = yaml.safe_load(f)["algo"]["gamma"]
    for name in ("cartpole", "acrobot", "mountaincar", "lunarlander"):
        with open(os.path.join(CONFIGS, "env", f"{name}.yaml")) as f:
            env = yaml.safe_load(f)["env"]
        support = env["c51_support"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_support_covers_returns(support["vmin"], support["vmax"], env["reward_range"], gamma), name


# ---- 20. deterministic IQL actor and CORL's presets ---------------------------------------------------------------------
def test_iql_deterministic_actor_is_awr_on_the_squared_error():
    torch.manual_seed(0)
    actor = Actor(nn.Sequential(MLP(OBS, ACT, (8,)), nn.Tanh()))
    qvalue, value = make_qvalue(OBS, ACT), make_value(OBS)
    loss = IQLLoss(actor, qvalue, value, temperature=3.0, expectile=0.7)
    batch = make_batch(B, OBS, ACT)
    out = loss(batch)
    with torch.no_grad():
        q_min = loss.target_qvalue_network(batch["observation"], batch["action"]).squeeze(-1).min(0).values
        advantage = q_min - value.module(batch["observation"]).squeeze(-1)
        weight = torch.exp(3.0 * advantage).clamp_max(100.0)
        error = (actor.module(batch["observation"]) - batch["action"]).pow(2).sum(-1)
    torch.testing.assert_close(out["loss_actor"], (weight * error).mean())
    assert "entropy" not in out.keys()


def test_corl_presets_carry_corls_per_dataset_values():
    presets = sorted(glob.glob(os.path.join(CONFIGS, "experiment", "corl", "*.yaml")))
    assert len(presets) == 36  # {iql, cql, td3bc, bc} x {hopper, halfcheetah, walker2d} x {medium, -expert, expert}
    for path in presets:
        with open(path) as f:
            text = f.read()
        assert "tinkoff-ai/CORL" in text and "configs/offline/" in text  # the source file is stated
    with open(os.path.join(CONFIGS, "experiment", "corl", "iql_hopper_medium.yaml")) as f:
        hopper = yaml.safe_load(f)
    assert hopper["algo"]["policy"] == "deterministic" and hopper["algo"]["updater"]["tau"] == 0.001
    with open(os.path.join(CONFIGS, "experiment", "corl", "iql_hopper_medium_expert.yaml")) as f:
        hopper_me = yaml.safe_load(f)
    assert hopper_me["algo"]["loss"] == {"temperature": 6.0, "expectile": 0.5}
    assert hopper_me["dataset"]["reward_transform"] == "none"
