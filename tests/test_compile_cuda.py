"""trainer.compile on CUDA (skipped without a GPU): cudagraphs equals eager, K updates per call
equal K single updates under CUDA graphs, and an update issues no host sync.

Run on a GPU machine by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_compile import fresh_dynamo, make_trainer, same_random_numbers, train  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

UPDATES = 20
# TF32 is off by default for matmuls; the remaining differences are fusion/reduction order.
RTOL, ATOL = 1e-3, 1e-4


def cuda_trainer(tiny_datasets, tmp_path, algo, *overrides):
    return make_trainer(tiny_datasets, tmp_path, algo, "device=cuda", *overrides)


@pytest.mark.parametrize("algo", ["sac", "td3", "iql", "cql", "dqn"])
@pytest.mark.parametrize("mode", ["compile", "cudagraphs"])
def test_compiled_cuda_updates_equal_eager_ones(tiny_datasets, tmp_path, algo, mode, same_random_numbers):
    eager = cuda_trainer(tiny_datasets, tmp_path, algo)
    compiled = cuda_trainer(tiny_datasets, tmp_path, algo, f"trainer.compile={mode}")
    eager_losses, compiled_losses = train(eager, UPDATES), train(compiled, UPDATES)
    assert compiled._losses.compiling and compiled._losses._compiled
    for update, (e, c) in enumerate(zip(eager_losses, compiled_losses)):
        for key in e:
            assert math.isclose(e[key], c[key], rel_tol=RTOL, abs_tol=ATOL), (update, key, e[key], c[key])
    for (name, x), (_, y) in zip(eager.objective.state_dict().items(), compiled.objective.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}")


def test_cudagraphs_k_per_call_equals_single_updates(tiny_datasets, tmp_path):
    single = cuda_trainer(tiny_datasets, tmp_path, "td3", "trainer.compile=cudagraphs")
    batched = cuda_trainer(tiny_datasets, tmp_path, "td3", "trainer.compile=cudagraphs")
    train(single, 20, per_call=1)
    train(batched, 20, per_call=8)
    for x, y in zip(single.objective.state_dict().values(), batched.objective.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["none", "compile", "cudagraphs"])
def test_an_update_does_not_sync_with_the_host(tiny_datasets, tmp_path, mode):
    """Sampling aside (a fixed device batch), losses, backward, optimizer and target steps and the
    finiteness flag run without a device-to-host sync."""
    trainer = cuda_trainer(tiny_datasets, tmp_path, "sac", f"trainer.compile={mode}")
    trainer.run_updates(4)  # first steps: optimizer state, compilation, graph capture
    batch = trainer.source.sample()
    trainer.source.sample = lambda: batch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.run_updates(8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer._verify_finite()
