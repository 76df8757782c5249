"""Networks: MLP, stacked ensembles, TanhNormal, NormalParamExtractor, TensorDict wrappers."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, set_interaction_type
from torch import distributions as D
from torch import nn

from rltrain.modules import (
    MLP, Actor, Bounded, NormalParamExtractor, ProbabilisticActor, StackedMLP, TanhNormal, ValueOperator,
    VmapEnsemble, frozen_copy, make_ensemble,
)
from rltrain.modules.ensemble import ROW_CHUNK
from rltrain.modules.ensemble import fresh_copies


def test_mlp_concatenates_inputs_and_uses_given_sizes():
    mlp = MLP(5, 3, (8, 4), "tanh", layer_norm=True)
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [8, 4, 3]
    x, y = torch.randn(2, 2), torch.randn(2, 3)
    torch.testing.assert_close(mlp(x, y), mlp(torch.cat([x, y], -1)))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(2, 2, (4,), "nope")


@pytest.mark.parametrize("layer_norm", [False, True])
def test_stacked_mlp_equals_its_members(layer_norm):
    torch.manual_seed(0)
    members = fresh_copies(MLP(7, 1, (16, 16), layer_norm=layer_norm), 3)
    stacked = StackedMLP(members)
    obs, act = torch.randn(5, 4), torch.randn(5, 3)
    out = stacked(obs, act)
    assert out.shape == (3, 5, 1)
    for k, member in enumerate(members):
        torch.testing.assert_close(out[k], member(obs, act))
    per_member = torch.randn(3, 5, 7)
    out = stacked(per_member, per_member=True)
    for k, member in enumerate(members):
        torch.testing.assert_close(out[k], member(per_member[k]))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_stacked_mlp_runs_large_batches_in_chunks_with_the_same_values_and_gradients(layer_norm):
    torch.manual_seed(0)
    members = fresh_copies(MLP(7, 1, (16, 16), layer_norm=layer_norm), 2)
    stacked = StackedMLP(members)
    rows = 2 * ROW_CHUNK + 3  # two full chunks and a remainder
    obs, act = torch.randn(rows, 4), torch.randn(rows, 3)
    out = stacked(obs, act)
    for k, member in enumerate(members):
        torch.testing.assert_close(out[k], member(obs, act))
    out.square().mean().backward()
    sum(member(obs, act).square().mean() for member in members).backward()
    for k, member in enumerate(members):
        linear = member[0]
        torch.testing.assert_close(stacked.weight_0.grad[k], linear.weight.grad.t() / 2)


@pytest.mark.parametrize("members", [slice(0, 1), torch.tensor([2, 0])])
def test_ensembles_evaluate_a_subset_of_members(members):
    torch.manual_seed(0)
    members_list = fresh_copies(MLP(4, 1, (8,)), 3)
    x = torch.randn(5, 4)
    for ensemble in (StackedMLP(members_list), VmapEnsemble(members_list)):
        full = ensemble(x)
        torch.testing.assert_close(ensemble(x, members=members), full[members])
        per_member = torch.randn(full[members].shape[0], 5, 4)
        assert ensemble(per_member, per_member=True, members=members).shape == full[members].shape


def test_members_are_independent_initialisations_first_keeps_weights():
    torch.manual_seed(0)
    module = MLP(4, 1, (8,))
    ensemble = make_ensemble(module, 3)
    assert isinstance(ensemble, StackedMLP)
    first = ensemble.weight_0
    torch.testing.assert_close(first[0], module[0].weight.t())
    assert not torch.allclose(first[1], first[2]) and not torch.allclose(first[0], first[1])


def test_vmap_ensemble_for_other_modules_and_loop_fallback():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)

        def forward(self, x):
            return (self.a(x) * self.b(x)).sum(-1, keepdim=True)

    torch.manual_seed(0)
    members = fresh_copies(Custom(), 2)
    x = torch.randn(6, 3)
    vmapped = VmapEnsemble(members)
    looped = VmapEnsemble(members, use_vmap=False)
    assert isinstance(make_ensemble(Custom(), 2), VmapEnsemble)
    for k in range(2):
        torch.testing.assert_close(vmapped(x)[k], members[k](x))
    torch.testing.assert_close(looped(x), vmapped(x))


def test_detached_ensemble_sends_gradient_to_inputs_only():
    ensemble = make_ensemble(MLP(3, 1, (8,)), 2)
    x = torch.randn(4, 3, requires_grad=True)
    ensemble(x, detach=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in ensemble.parameters())


def test_frozen_copy_has_no_parameters_and_same_output():
    ensemble = make_ensemble(MLP(3, 1, (8,)), 2)
    target = frozen_copy(ensemble)
    assert list(target.parameters()) == []
    x = torch.randn(4, 3)
    torch.testing.assert_close(target(x), ensemble(x))
    assert set(dict(target.named_buffers())) == set(dict(ensemble.named_parameters()))


def test_tanh_normal_log_prob_matches_transformed_distribution():
    torch.manual_seed(0)
    loc, scale = torch.randn(1000, 3) * 0.5, torch.rand(1000, 3) + 0.2
    low, high = torch.tensor([-2.0, 0.0, -1.0]), torch.tensor([2.0, 1.0, 3.0])
    dist = TanhNormal(loc, scale, low, high)
    action, log_prob = dist.rsample_and_log_prob()
    assert (action >= low).all() and (action <= high).all()
    reference = D.TransformedDistribution(
        D.Normal(loc, scale), [D.TanhTransform(), D.AffineTransform((high + low) / 2, (high - low) / 2)])
    torch.testing.assert_close(log_prob, reference.log_prob(action).sum(-1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(dist.log_prob(action), log_prob, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(dist.mode, (high + low) / 2 + (high - low) / 2 * torch.tanh(loc))


def test_tanh_normal_is_stable_where_tanh_saturates():
    loc = torch.full((4, 2), 30.0, requires_grad=True)
    dist = TanhNormal(loc, torch.full((4, 2), 0.01))
    action, log_prob = dist.rsample_and_log_prob()
    assert torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(loc.grad).all()


def test_normal_param_extractor_mappings():
    loc, scale = NormalParamExtractor()(torch.zeros(2, 4))
    torch.testing.assert_close(scale, torch.ones(2, 2))
    assert loc.shape == (2, 2)
    _, scale = NormalParamExtractor("clamped_exp_-5_2")(torch.full((1, 2), 10.0))
    torch.testing.assert_close(scale, torch.full((1, 1), 2.0).exp())
    with pytest.raises(ValueError, match="scale_mapping"):
        NormalParamExtractor("cubic")


def test_probabilistic_actor_tensordict_api():
    spec = Bounded(-torch.ones(2), torch.ones(2))
    net = nn.Sequential(MLP(3, 4, (8,)), NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]), in_keys=["loc", "scale"],
                               spec=spec, distribution_class=TanhNormal, return_log_prob=True)
    td = TensorDict(observation=torch.randn(5, 3), batch_size=[5])
    deterministic = actor(td.clone())
    torch.testing.assert_close(deterministic["action"], torch.tanh(deterministic["loc"]))
    with set_interaction_type(InteractionType.RANDOM):
        sampled = actor(td.clone())
    assert not torch.allclose(sampled["action"], deterministic["action"])
    assert sampled[actor.log_prob_key].shape == (5,)
    assert actor.in_keys == ["observation"]


def test_value_operator_and_actor_default_keys():
    q = ValueOperator(MLP(5, 1, (4,)), in_keys=["observation", "action"])
    v = ValueOperator(MLP(3, 1, (4,)))
    assert q.out_keys == ["state_action_value"] and v.out_keys == ["state_value"]
    td = TensorDict(observation=torch.randn(2, 3), action=torch.randn(2, 2), batch_size=[2])
    assert q(td)["state_action_value"].shape == (2, 1)
    actor = Actor(MLP(3, 2, (4,)))
    assert actor(td.clone())["action"].shape == (2, 2)


def test_bounded_spec_checks_bounds():
    with pytest.raises(ValueError, match="low <= high"):
        Bounded(torch.ones(2), torch.zeros(2))
    assert Bounded(-1.0, 1.0, (3,)).dim == 3


def test_fast_dropout_keeps_1_minus_p_scales_and_masks_the_gradient():
    from rltrain.modules.dropout import FastDropout

    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    layer = FastDropout(0.25)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert not torch.equal(layer(x), y)  # a fresh mask per call
    layer.eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        FastDropout(1.0)
