"""``python -m rltrain.export run=<run dir> format=torchscript|onnx [checkpoint=last|best|<step>] [out=<file>]``

Writes the run's deterministic policy, observation normalizer included, as one module that maps a
batch of raw observations ``observation [n, *obs_shape]`` (float32; uint8 for frames, which the
encoder scales as in training) to actions ``action [n, A]`` (float32
in the env's bounds) or ``[n]`` (int64 indices, discrete actions): TorchScript
(``torch.jit.load(path)``, default ``<run dir>/export/policy.pt``) or ONNX (an ``onnxruntime``
session, default ``<run dir>/export/policy.onnx``, the batch dimension dynamic).

Policies with a memory across steps (Decision Transformer, ACT) and diffusion policies (a sampling
loop) are not exported: act with ``rltrain.load_agent`` instead.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rltrain.agent import Agent, load_agent
from rltrain.cli_args import parse_args
from rltrain.errors import ConfigError

USAGE = __doc__.split("\n\n")[0]
FORMATS = {"torchscript": "policy.pt", "onnx": "policy.onnx"}
NOT_EXPORTABLE = ("dt", "online_dt", "act", "diffusion_bc")
DEFAULTS = {"run": None, "format": "torchscript", "checkpoint": "last", "out": None}


class ExportedPolicy(nn.Module):
    """``policy(normalizer(observation))`` as one module; ``networks`` (the objective) owns the weights
    the policy uses, so tracing records them as parameters."""

    def __init__(self, agent: Agent):
        super().__init__()
        self.networks = agent.modules
        self.act = agent.policy(deterministic=True)  # the normalizer folded in

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.act(observation)


def exportable(agent: Agent) -> ExportedPolicy:
    objective = agent.config.algo.objective
    if objective in NOT_EXPORTABLE:
        raise ConfigError(f"algo={agent.config.algo.name}: export writes stateless one-step policies; this one "
                          f"{'keeps a memory across steps' if agent.has_memory else 'samples in a loop'}. Act with "
                          "rltrain.load_agent(run_dir) instead.")
    module = ExportedPolicy(agent).eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def export_policy(agent: Agent, path: str | Path, fmt: str = "torchscript") -> Path:
    """Write ``agent``'s deterministic policy to ``path`` in format ``fmt`` (torchscript or onnx)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: accepted values are {', '.join(FORMATS)}")
    module = exportable(agent)
    example = torch.as_tensor(np.stack([agent.observation_space.sample()] * 2)).to(agent.obs_dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():  # the action bounds, constants of the trace as they should be
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 prefers torch.export
                torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
        else:
            _export_onnx(module, example, path)
    return path


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # the TorchScript-based exporter: traces plain tensor code, needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["observation"],
                          output_names=["action"], dynamic_axes={"observation": {0: "batch"}, "action": {0: "batch"}})


def main(argv: list[str] | None = None) -> None:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, ("run",), USAGE)
        if args["format"] not in FORMATS:
            raise ConfigError(f"format={args['format']!r}: accepted values are {', '.join(FORMATS)}")
        agent = load_agent(args["run"], args["checkpoint"])
        out = args["out"] or Path(args["run"]) / "export" / FORMATS[args["format"]]
        path = export_policy(agent, out, args["format"])
    except ConfigError as err:
        print(f"rltrain.export: error: {err}", file=sys.stderr)
        sys.exit(2)
    shape = ", ".join(map(str, agent.observation_space.shape))
    dtype = str(agent.obs_dtype).removeprefix("torch.")
    print(f"wrote {path} ({args['format']}: observation [n, {shape}] {dtype} -> action)")


if __name__ == "__main__":
    main()
