"""Convolutional encoders for image observations ``[C, H, W]`` and the choice of encoder.

Observations stay uint8 (or whatever the env gives) until here: :class:`ScaleInput` turns them into
float32 divided by the space's upper bound (255 for Atari frames, 1 for MinAtar's binary channels)
on the device the network runs on.

* ``nature``: the DQN paper's CNN (Mnih et al. 2015): conv 32x8x8/4, 64x4x4/2, 64x3x3/1, each ReLU,
  then a 512-unit ReLU layer. 84x84 inputs give 64x7x7 = 3136 features before it.
* ``minatar``: MinAtar's CNN (Young and Tian 2019): conv 16x3x3/1, ReLU, then a 128-unit ReLU layer.
* ``impala``: IMPALA's residual CNN (Espeholt et al. 2018): three stages of 16, 32, 32 channels, each
  conv 3x3, max-pool 3x3/2 and two residual blocks, then a 256-unit ReLU layer.

:func:`build_encoder` picks ``nature`` for images of at least 36x36 pixels (the smallest the Nature
CNN accepts), ``minatar`` for smaller ones, and no encoder (the MLP heads read the vector) for flat
observations; ``network.encoder`` overrides the choice.
"""

from __future__ import annotations

import torch
from torch import nn

from rltrain.errors import ConfigError
from rltrain.modules.specs import Bounded

ENCODERS = ("auto", "mlp", "nature", "minatar", "impala")
CNN_ENCODERS = ("nature", "minatar", "impala")
NATURE_MIN_SIZE = 36


class ScaleInput(nn.Module):
    """``x.float() / scale``: raw (uint8) observations to the network's float range."""

    def __init__(self, scale: float):
        super().__init__()
        self.inverse = 1.0 / float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.inverse) if x.dtype != torch.float32 else x * self.inverse


def _conv_output_size(body: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(body(torch.zeros(1, *shape)).shape[-1])


class ImageEncoder(nn.Sequential):
    """An encoder of images ``[*B, C, H, W]`` -> ``[*B, features]`` for any batch shape ``B`` (a
    rollout's ``[T, N]`` included): the batch dimensions are flattened around the convolutions.

    Convolutions run channels-last (NHWC: the input and the filters), which oneDNN and cuDNN run
    faster than NCHW (about 1.35x for the Nature CNN's update on one CPU thread, see README); the
    values are the same."""

    def __init__(self, *modules: nn.Module):
        super().__init__(*modules)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        images = x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last)
        out = super().forward(images)
        return out.reshape(*batch, out.shape[-1])


class NatureCNN(ImageEncoder):
    """The DQN paper's encoder: ``[B, C, H, W]`` -> ``[B, 512]``."""

    def __init__(self, shape: tuple[int, int, int], scale: float = 255.0, features: int = 512):
        body = nn.Sequential(
            nn.Conv2d(shape[0], 32, 8, stride=4), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(inplace=True),
            nn.Flatten(),
        )
        super().__init__(ScaleInput(scale), body, nn.Linear(_conv_output_size(body, shape), features),
                         nn.ReLU(inplace=True))
        self.out_features = features


class MinAtarCNN(ImageEncoder):
    """MinAtar's encoder: ``[B, C, 10, 10]`` -> ``[B, 128]``."""

    def __init__(self, shape: tuple[int, int, int], scale: float = 1.0, features: int = 128):
        body = nn.Sequential(nn.Conv2d(shape[0], 16, 3, stride=1), nn.ReLU(inplace=True), nn.Flatten())
        super().__init__(ScaleInput(scale), body, nn.Linear(_conv_output_size(body, shape), features),
                         nn.ReLU(inplace=True))
        self.out_features = features


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                   nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ImpalaCNN(ImageEncoder):
    """IMPALA's residual encoder: ``[B, C, H, W]`` -> ``[B, 256]``."""

    def __init__(self, shape: tuple[int, int, int], scale: float = 255.0, features: int = 256,
                 channels: tuple[int, ...] = (16, 32, 32)):
        layers: list[nn.Module] = []
        n_in = shape[0]
        for n_out in channels:
            layers += [nn.Conv2d(n_in, n_out, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       _Residual(n_out), _Residual(n_out)]
            n_in = n_out
        body = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        super().__init__(ScaleInput(scale), body, nn.Linear(_conv_output_size(body, shape), features), nn.ReLU())
        self.out_features = features


CNN_CLASSES = {"nature": NatureCNN, "minatar": MinAtarCNN, "impala": ImpalaCNN}


def choose_encoder(obs_spec: Bounded, requested: str = "auto") -> str:
    """``mlp`` (flat observations) or a CNN name (images), checking a forced choice against the data."""
    if requested not in ENCODERS:
        raise ConfigError(f"unknown network.encoder {requested!r}; accepted: {', '.join(ENCODERS)}")
    shape = tuple(obs_spec.shape)
    image = len(shape) == 3
    if requested == "auto":
        if not image:
            return "mlp"
        return "nature" if min(shape[1:]) >= NATURE_MIN_SIZE else "minatar"
    if requested in CNN_ENCODERS and not image:
        raise ConfigError(f"network.encoder={requested} is a convolutional encoder for image observations "
                          f"[C, H, W], but the observations are vectors of shape {list(shape)}; use "
                          "network.encoder=mlp (or auto)")
    if requested == "mlp" and image:
        raise ConfigError(f"network.encoder=mlp needs flat observations, but they are images of shape {list(shape)}; "
                          f"use network.encoder=auto or one of {', '.join(CNN_ENCODERS)}")
    if requested == "nature" and min(shape[1:]) < NATURE_MIN_SIZE:
        raise ConfigError(f"network.encoder=nature needs images of at least {NATURE_MIN_SIZE}x{NATURE_MIN_SIZE} "
                          f"pixels, got {list(shape)}; use network.encoder=minatar or impala")
    return requested


def build_encoder(obs_spec: Bounded, encoder: str = "auto") -> tuple[nn.Module, int]:
    """The encoder for ``obs_spec`` and its output size; flat observations get ``nn.Identity``
    (the heads' MLPs read them directly)."""
    name = choose_encoder(obs_spec, encoder)
    if name == "mlp":
        return nn.Identity(), obs_spec.dim
    scale = float(obs_spec.high.max())
    net = CNN_CLASSES[name](tuple(obs_spec.shape), scale=scale if scale > 0 else 1.0)
    return net, net.out_features


class EncodedHead(nn.Sequential):
    """``head(encoder(obs))``: a Q, policy or value head on an encoder (shared or not)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__(encoder, head)

    @property
    def encoder(self) -> nn.Module:
        return self[0]
