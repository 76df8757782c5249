"""trainer.compile and trainer.updates_per_call on CPU: compiled updates equal eager ones, K updates per
call equal K single updates, resume is exact with compilation on, and the deferred finiteness flag
covers every update.

Every Trainer here learns from a ~600-transition random-policy Minari dataset of the real env
(Pendulum, CartPole for DQN) with 32x32 networks and batch 32, so inductor compiles each objective in
seconds. In the parity tests inductor is told to draw random numbers with eager PyTorch's generator
(``fallback_random``): its own generator gives equally valid but different samples (SAC's and CQL's
actions), which would make the two runs incomparable.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from hydra import compose, initialize_config_module

import rltrain.__main__  # noqa: F401  (registers the config resolvers)
from rltrain import checkpoint
from rltrain.build import build_trainer
from rltrain.errors import ConfigError
from rltrain.schema import validate_config
from rltrain.trainer import NonFiniteLossError

UPDATES = 20
# Inductor fuses and reorders float32 arithmetic; after 20 Adam updates the differences stay ~1e-6.
RTOL, ATOL = 1e-4, 1e-5
TINY = ["network.actor.num_cells=[32,32]", "network.critic.num_cells=[32,32]", "trainer.batch_size=32",
        "hparams=none", "device=cpu", "logger.progress=false", "trainer.eval_episodes=1"]
ALGOS = {
    "sac": ["algo=sac"],
    "td3": ["algo=td3"],                                     # delayed actor: two due sets
    "iql": ["algo=iql", "trainer.total_updates=40"],         # cosine actor lr over 40 updates
    "cql": ["algo=cql", "algo.bc_warmup_updates=5"],         # BC warm-up window, then the CQL actor term
    "dqn": ["algo=dqn", "algo.updater.value_network_update_interval=5"],
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each Trainer compiles its own functions (dynamo's per-function cache holds 8 variants)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def same_random_numbers(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)


def make_trainer(tiny_datasets, tmp_path, algo: str, *overrides: str):
    env = "cartpole" if algo == "dqn" else "pendulum"
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        cfg = compose("config", overrides=[*ALGOS[algo], "dataset=minari", f"dataset.id={tiny_datasets[env]}",
                                           *TINY, *overrides])
    validate_config(cfg)
    torch.manual_seed(0)  # the same initial weights for every trainer of an algorithm
    return build_trainer(cfg, tmp_path / f"{algo}-{'-'.join(overrides)}-{time.monotonic_ns()}")


def train(trainer, updates: int, per_call: int | None = None) -> list[dict[str, float]]:
    """Run ``updates`` updates (through ``run_updates`` when ``per_call`` is given); the losses of each."""
    torch.manual_seed(1)
    if per_call is not None:
        trainer.config.updates_per_call = per_call
        trainer.run_updates(updates)
        return []
    history = []
    for _ in range(updates):
        trainer.update()
        history.append({k: float(v.detach()) for k, v in trainer._last_losses.items() if v.numel() == 1})
    return history


def assert_same_parameters(a, b, rtol=0.0, atol=0.0):
    for (name, x), (_, y) in zip(a.objective.state_dict().items(), b.objective.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("algo", list(ALGOS))
def test_compiled_updates_equal_eager_ones(tiny_datasets, tmp_path, algo, same_random_numbers):
    eager = make_trainer(tiny_datasets, tmp_path, algo)
    compiled = make_trainer(tiny_datasets, tmp_path, algo, "trainer.compile=compile")
    lr_before = [g.optimizer.param_groups[0]["lr"] for g in compiled.groups]
    eager_losses = train(eager, UPDATES)
    start = time.perf_counter()
    compiled_losses = train(compiled, UPDATES)
    print(f"{algo}: {UPDATES} compiled updates (compilation included) in {time.perf_counter() - start:.1f} s")
    assert compiled._losses.compiling and compiled._losses._compiled, "the updates did not run compiled"
    if algo in ("td3", "cql"):  # the delayed actor / the BC warm-up give two due sets, each compiled
        assert len(compiled._losses._compiled) == 2
    if algo == "iql":  # the schedule kept applying: the actor's lr moved, and equally in both runs
        assert compiled.groups[0].optimizer.param_groups[0]["lr"] < 0.8 * lr_before[0]
        assert compiled.groups[0].optimizer.param_groups[0]["lr"] == eager.groups[0].optimizer.param_groups[0]["lr"]
    assert len(eager_losses) == len(compiled_losses) == UPDATES
    for update, (e, c) in enumerate(zip(eager_losses, compiled_losses)):
        assert e.keys() == c.keys()
        for key in e:
            assert math.isclose(e[key], c[key], rel_tol=RTOL, abs_tol=ATOL), (update, key, e[key], c[key])
    assert_same_parameters(eager, compiled, RTOL, ATOL)


@pytest.mark.parametrize("compile_mode", ["none", "compile"])
def test_k_updates_per_call_equal_k_single_updates(tiny_datasets, tmp_path, compile_mode):
    # 10 owed updates with K=4: calls of 4, 4 and 2; TD3's delayed actor crosses the call boundaries.
    single = make_trainer(tiny_datasets, tmp_path, "td3", f"trainer.compile={compile_mode}")
    batched = make_trainer(tiny_datasets, tmp_path, "td3", f"trainer.compile={compile_mode}")
    train(single, 10, per_call=1)
    train(batched, 10, per_call=4)
    assert single.updates == batched.updates == 10
    assert_same_parameters(single, batched)  # the same updates on the same batches: bit-identical


def test_updates_per_call_from_config_and_owed_count(tiny_datasets, tmp_path):
    trainer = make_trainer(tiny_datasets, tmp_path, "dqn", "trainer.updates_per_call=8")
    assert trainer.config.updates_per_call == 8
    calls = []
    dispatch = trainer._dispatch
    trainer._dispatch = lambda count: (calls.append(count), dispatch(count))
    trainer.run_updates(19)
    assert calls == [8, 8, 3] and trainer.updates == 19


def test_resume_is_exact_with_compilation(tiny_datasets, tmp_path):
    """N updates, checkpoint, a fresh trainer resumes to 2N: the same as 2N uninterrupted (SAC: the
    compiled graph draws the actor's noise, so the checkpointed RNG state must reach it)."""
    n = 8
    straight = make_trainer(tiny_datasets, tmp_path, "sac", "trainer.compile=compile")
    train(straight, 2 * n, per_call=1)
    first = make_trainer(tiny_datasets, tmp_path, "sac", "trainer.compile=compile")
    train(first, n, per_call=1)
    checkpoint.save_atomic(first.state_dict(), tmp_path / "last.pt")
    resumed = make_trainer(tiny_datasets, tmp_path, "sac", "trainer.compile=compile", "seed=5")
    resumed.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False))
    resumed.config.updates_per_call = 3
    resumed.run_updates(n)
    assert resumed.updates == straight.updates == 2 * n
    assert_same_parameters(straight, resumed)


def test_deferred_finiteness_flag_covers_every_update(tiny_datasets, tmp_path):
    """On an accelerator the loss is not read per update; a NaN at update 2 of 5 must still stop the
    run at the next log/checkpoint read, although the last update's losses are finite."""
    trainer = make_trainer(tiny_datasets, tmp_path, "dqn")
    trainer._check_every_update = False  # as on a GPU
    losses_of = trainer._losses

    def nan_total_at_update_2(batch, terms):
        losses, total = losses_of(batch, terms)
        if trainer.updates == 1:  # the second update: a NaN value whose gradient stays finite
            total = total + (total.detach() * math.nan - total.detach())
        return losses, total

    trainer._losses = nan_total_at_update_2
    trainer.run_updates(5)
    assert all(torch.isfinite(v).all() for v in trainer._last_losses.values())
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(total\) at update 5"):
        trainer._verify_finite()
    trainer.run_updates(2)  # the flag was read: later finite updates pass
    trainer._verify_finite()


def test_cudagraphs_off_cuda_is_refused_before_any_work(tiny_datasets, tmp_path):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        cfg = compose("config", overrides=["algo=sac", "env=pendulum", "device=cpu", "trainer.compile=cudagraphs"])
    with pytest.raises(ConfigError, match=r"trainer.compile=cudagraphs needs a CUDA device.*accepts none or compile"):
        validate_config(cfg)
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        cfg = compose("config", overrides=["algo=sac", "env=pendulum", "trainer.compile=graphs"])
    with pytest.raises(ConfigError, match=r"trainer.compile='graphs' is not accepted.*none, compile, cudagraphs"):
        validate_config(cfg)


def test_an_objective_that_fails_to_compile_falls_back_to_eager_with_one_warning(tiny_datasets, tmp_path,
                                                                                  monkeypatch):
    """A compiler failure at the first compiled call (here a backend that refuses every graph) warns
    once, naming the objective and the reason, and the run goes on eagerly with the same results."""
    import rltrain.compiled

    def refusing_backend(graph, example_inputs):
        raise RuntimeError("data-dependent shape in this graph")

    monkeypatch.setattr(rltrain.compiled, "compile_options", lambda mode, device: {"backend": refusing_backend})
    eager = make_trainer(tiny_datasets, tmp_path, "td3")
    compiled = make_trainer(tiny_datasets, tmp_path, "td3", "trainer.compile=compile")
    with pytest.warns(rltrain.compiled.ObjectiveNotCompilable) as caught:
        train(compiled, 6, per_call=2)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "TD3Loss cannot be compiled" in message and "data-dependent shape in this graph" in message
    assert not compiled._losses.compiling
    train(eager, 6, per_call=2)
    assert_same_parameters(eager, compiled)
