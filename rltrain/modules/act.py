r"""ACT, the Action Chunking Transformer (Zhao et al. 2023), for low-dimensional states.

A conditional VAE predicts the next ``H`` actions (a chunk) from the state ``s``:

* **CVAE encoder** ``q(z | s, a_{1:H})``: a transformer encoder over the tokens
  ``[CLS, proj(s), proj(a_1), ..., proj(a_H)]`` plus learned positional embeddings; padded actions
  (``action_is_pad``, True past the end of an episode) are masked out as attention keys. The CLS
  output gives ``(mu, log_var)`` of a diagonal Gaussian over the latent ``z`` (size ``latent_dim``).
* **latent**: ``z = mu + exp(log_var / 2) * eps`` while training with actions; ``z = mu`` in eval
  mode with actions; ``z = 0`` (the prior's mean) at inference, without actions.
* **decoder** ``p(a_{1:H} | s, z)``: a transformer encoder over the memory tokens
  ``[proj(z), proj(s)]`` (+ positional embeddings), then a transformer decoder whose ``H`` learned
  query embeddings attend to each other and to the memory; a linear head maps each query's output
  to an action. The head is **linear** (as in ACT) and predicts actions in normalized ``[-1, 1]``
  units; :class:`ACTActor` maps them affinely to the env's bounds (clamped only at inference).

Positional embeddings are added once to the input tokens (ACT/DETR add them at every layer); the
layers are pre-norm (``norm_first``) with a final LayerNorm, which trains stably at the learning
rates rltrain's configs use. Batches may have any leading shape ``[*B]``.

:class:`TemporalEnsemblePolicy` runs a trained actor in an env (the episodic policy protocol of
:mod:`rltrain.evaluate`): a fresh chunk every step, combined by temporal ensembling, or
open-loop execution of each chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rltrain.modules.diffusion import ActionScaler
from rltrain.modules.specs import Bounded

NestedKey = str | tuple[str, ...]


def _transformer_encoder(embed_dim: int, n_heads: int, ff_dim: int, dropout: float, n_layers: int,
                         activation: str) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(embed_dim, n_heads, ff_dim, dropout, activation=activation,
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)


def _transformer_decoder(embed_dim: int, n_heads: int, ff_dim: int, dropout: float, n_layers: int,
                         activation: str) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(embed_dim, n_heads, ff_dim, dropout, activation=activation,
                                       batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, n_layers, norm=nn.LayerNorm(embed_dim))


def _learned_embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, *shape) * 0.02)


class ACTModel(nn.Module):
    """The CVAE of ACT (module docstring). ``forward(obs, actions=None, action_is_pad=None)`` returns
    ``(actions [*B, H, A] in normalized units, mu [*B, latent], log_var [*B, latent])``.

    Args:
        obs_dim, action_dim: sizes of the state and action vectors.
        chunk_size: ``H``, the number of actions predicted at once.
        embed_dim, n_heads: transformer width and attention heads (``embed_dim % n_heads == 0``).
        n_encoder_layers: layers of the decoder-side transformer encoder (paper: 4).
        n_decoder_layers: layers of the transformer decoder (paper: 7).
        n_cvae_layers: layers of the CVAE encoder (default: ``n_encoder_layers``).
        latent_dim: size of ``z`` (paper: 32).
        ff_dim: feed-forward width (default ``4 * embed_dim``).
        dropout: dropout in every transformer layer (paper: 0.1).
        activation: the feed-forward activation, ``"relu"`` (paper) or ``"gelu"``.
    """

    def __init__(self, obs_dim: int, action_dim: int, chunk_size: int, *, embed_dim: int = 256, n_heads: int = 8,
                 n_encoder_layers: int = 4, n_decoder_layers: int = 7, n_cvae_layers: int | None = None,
                 latent_dim: int = 32, ff_dim: int | None = None, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        n_cvae_layers = n_encoder_layers if n_cvae_layers is None else n_cvae_layers
        self._check_sizes(chunk_size=chunk_size, embed_dim=embed_dim, n_heads=n_heads, latent_dim=latent_dim,
                          n_encoder_layers=n_encoder_layers, n_decoder_layers=n_decoder_layers,
                          n_cvae_layers=n_cvae_layers)
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of n_heads ({n_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        ff_dim = 4 * embed_dim if ff_dim is None else ff_dim
        self.obs_dim, self.action_dim, self.chunk_size, self.latent_dim = obs_dim, action_dim, chunk_size, latent_dim
        blocks = (embed_dim, n_heads, ff_dim, dropout)
        # CVAE encoder q(z | s, a_{1:H})
        self.cvae_cls = _learned_embedding(1, embed_dim)
        self.cvae_obs_proj = nn.Linear(obs_dim, embed_dim)
        self.cvae_action_proj = nn.Linear(action_dim, embed_dim)
        self.cvae_pos = _learned_embedding(chunk_size + 2, embed_dim)
        self.cvae_encoder = _transformer_encoder(*blocks, n_cvae_layers, activation)
        self.latent_head = nn.Linear(embed_dim, 2 * latent_dim)
        # decoder p(a_{1:H} | s, z)
        self.latent_proj = nn.Linear(latent_dim, embed_dim)
        self.obs_proj = nn.Linear(obs_dim, embed_dim)
        self.memory_pos = _learned_embedding(2, embed_dim)
        self.encoder = _transformer_encoder(*blocks, n_encoder_layers, activation)
        self.queries = _learned_embedding(chunk_size, embed_dim)
        self.decoder = _transformer_decoder(*blocks, n_decoder_layers, activation)
        self.action_head = nn.Linear(embed_dim, action_dim)

    @staticmethod
    def _check_sizes(**sizes: int) -> None:
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def encode(self, obs: torch.Tensor, actions: torch.Tensor,
               action_is_pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_var)`` ``[n, latent]`` from ``obs [n, obs]`` and normalized ``actions [n, H, A]``."""
        n = obs.shape[0]
        tokens = torch.cat([self.cvae_cls.expand(n, -1, -1), self.cvae_obs_proj(obs).unsqueeze(1),
                            self.cvae_action_proj(actions)], dim=1) + self.cvae_pos
        key_padding = None
        if action_is_pad is not None:
            # CLS and state are always attended to, so a fully padded chunk still has valid keys.
            key_padding = torch.cat([action_is_pad.new_zeros(n, 2), action_is_pad], dim=1).bool()
        cls_out = self.cvae_encoder(tokens, src_key_padding_mask=key_padding)[:, 0]
        mu, log_var = self.latent_head(cls_out).chunk(2, dim=-1)
        return mu, log_var

    def decode(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Normalized actions ``[n, H, A]`` from ``obs [n, obs]`` and ``z [n, latent]``."""
        memory = torch.stack([self.latent_proj(z), self.obs_proj(obs)], dim=1) + self.memory_pos
        memory = self.encoder(memory)
        queries = self.queries.expand(obs.shape[0], -1, -1)
        return self.action_head(self.decoder(queries, memory))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor | None = None,
                action_is_pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead = obs.shape[:-1]
        obs = obs.reshape(-1, self.obs_dim)
        if actions is None:
            mu = obs.new_zeros(obs.shape[0], self.latent_dim)
            log_var, z = torch.zeros_like(mu), torch.zeros_like(mu)
        else:
            expected = (*lead, self.chunk_size, self.action_dim)
            if tuple(actions.shape) != expected:
                raise ValueError(f"ACT expects an action chunk of shape {expected} (batch, chunk_size, action_dim), "
                                 f"got {tuple(actions.shape)}")
            pad = None if action_is_pad is None else action_is_pad.reshape(-1, self.chunk_size)
            mu, log_var = self.encode(obs, actions.reshape(-1, self.chunk_size, self.action_dim), pad)
            z = mu + (0.5 * log_var).exp() * torch.randn_like(mu) if self.training else mu
        pred = self.decode(obs, z)
        return (pred.reshape(*lead, self.chunk_size, self.action_dim), mu.reshape(*lead, self.latent_dim),
                log_var.reshape(*lead, self.latent_dim))


class ACTActor(TensorDictModuleBase):
    """The TensorDict face of an :class:`ACTModel`.

    Reads the observation, the action chunk ``[*B, H, A]`` (env units; optional: without it the
    latent is 0) and ``action_is_pad`` ``[*B, H]`` (optional); writes ``"action_pred"``
    ``[*B, H, A]`` (env units, not clamped, so the L1 loss keeps its gradient at the bounds),
    ``"mu"`` and ``"log_var"`` ``[*B, latent]``.

    Args:
        module: the :class:`ACTModel`.
        spec: the action box (finite bounds); ``None`` = ``[-1, 1]``.
        observation_key, action_chunk_key, action_is_pad_key: the keys read.
        out_keys: the keys written, in the order prediction, mu, log_var.
    """

    def __init__(self, module: ACTModel, *, spec: Bounded | None = None, observation_key: NestedKey = "observation",
                 action_chunk_key: NestedKey = ("vla_action", "chunk"), action_is_pad_key: NestedKey = "action_is_pad",
                 out_keys: list[NestedKey] | None = None):
        super().__init__()
        if not isinstance(module, ACTModel):
            raise TypeError(f"ACTActor wraps a rltrain.modules.act.ACTModel, got {type(module).__name__}")
        self.module = module
        self.spec = spec
        self.scaler = ActionScaler(spec, module.action_dim)
        self.action_is_pad_key = action_is_pad_key
        self.in_keys = [observation_key, action_chunk_key]
        self.out_keys = list(out_keys) if out_keys is not None else ["action_pred", "mu", "log_var"]
        if len(self.out_keys) != 3:
            raise ValueError(f"ACTActor writes three keys (prediction, mu, log_var), got out_keys={self.out_keys}")

    @property
    def chunk_size(self) -> int:
        return self.module.chunk_size

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return self.scaler.normalize(action)

    def unnormalize_action(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaler.unnormalize(x)

    def predict(self, obs: torch.Tensor, chunk: torch.Tensor | None = None,
                action_is_pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action_pred [*B, H, A] env units, mu, log_var)`` (plain-tensor path)."""
        actions = None if chunk is None else self.normalize_action(chunk)
        pred, mu, log_var = self.module(obs, actions, action_is_pad)
        return self.unnormalize_action(pred), mu, log_var

    def predict_chunk(self, obs: torch.Tensor) -> torch.Tensor:
        """Inference (``z = 0``): a chunk ``[n, H, A]`` clamped to the env's bounds."""
        pred, _, _ = self.module(obs)
        return self.unnormalize_action(pred.clamp(-1.0, 1.0))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs_key, chunk_key = self.in_keys
        outputs = self.predict(tensordict.get(obs_key), tensordict.get(chunk_key, None),
                               tensordict.get(self.action_is_pad_key, None))
        for key, value in zip(self.out_keys, outputs):
            tensordict.set(key, value)
        return tensordict


class TemporalEnsemblePolicy:
    """Runs a chunk predictor in vector envs (the episodic policy protocol of :mod:`rltrain.evaluate`).

    ``temporal_ensemble=True`` (ACT's temporal ensembling): a chunk is predicted at every step; the
    action of step ``t`` is the weighted average of every stored prediction for ``t`` (from the
    chunks of steps ``t-H+1 .. t``), with weights ``w_i = exp(-m * i)`` normalized to sum to 1,
    ``i = 0`` being the **oldest** prediction and ``m = ensemble_decay`` (0.01 in the paper; a
    larger m weights old predictions more, a negative m new ones).

    ``temporal_ensemble=False``: each chunk is executed open-loop for ``H`` steps, then the policy
    re-plans.

    Args:
        actor: anything with ``predict_chunk(obs [n, obs]) -> [n, H, A]`` in env units (an
            :class:`ACTActor`).
        temporal_ensemble: ensemble overlapping chunks (True) or execute chunks open-loop.
        ensemble_decay: ``m`` above.
        normalizer: optional callable applied to raw observations before the actor.

    Call it under ``torch.no_grad()`` with the actor in eval mode; :meth:`reset` after every reset
    of the envs (all envs restart together).
    """

    def __init__(self, actor, *, temporal_ensemble: bool = True, ensemble_decay: float = 0.01,
                 normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not callable(getattr(actor, "predict_chunk", None)):
            raise TypeError("TemporalEnsemblePolicy needs an actor with predict_chunk(obs), got "
                            f"{type(actor).__name__}")
        if not math.isfinite(ensemble_decay):
            raise ValueError(f"ensemble_decay must be a finite number, got {ensemble_decay}")
        self.actor = actor
        self.temporal_ensemble = temporal_ensemble
        self.ensemble_decay = float(ensemble_decay)
        self.normalizer = normalizer
        self.num_envs: int | None = None
        self._steps = 0
        self._chunks: torch.Tensor | None = None  # [n, H(age), H(index in chunk), A]; age 0 = newest

    def reset(self, num_envs: int) -> None:
        """Forget every stored chunk: the envs start new episodes."""
        self.num_envs = num_envs
        self._steps = 0
        self._chunks = None

    def record(self, reward: torch.Tensor) -> None:
        """Rewards do not condition ACT; part of the episodic protocol only."""

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self.num_envs is None:
            self.reset(obs.shape[0])
        if obs.shape[0] != self.num_envs:
            raise ValueError(f"TemporalEnsemblePolicy was reset for {self.num_envs} envs but got {obs.shape[0]} "
                             "observations; call reset(num_envs) after resetting the envs")
        if self.normalizer is not None:
            obs = self.normalizer(obs)
        action = self._ensembled(obs) if self.temporal_ensemble else self._open_loop(obs)
        self._steps += 1
        return action

    def _predict(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.predict_chunk(obs)

    def _open_loop(self, obs: torch.Tensor) -> torch.Tensor:
        if self._chunks is None or self._steps % self._chunks.shape[1] == 0:
            self._chunks = self._predict(obs)
        return self._chunks[:, self._steps % self._chunks.shape[1]]

    def _ensembled(self, obs: torch.Tensor) -> torch.Tensor:
        chunk = self._predict(obs)
        n, horizon = chunk.shape[:2]
        if self._chunks is None:
            self._chunks = chunk.new_zeros(n, horizon, horizon, chunk.shape[-1])
        self._chunks = torch.roll(self._chunks, 1, dims=1)
        self._chunks[:, 0] = chunk
        stored = min(self._steps + 1, horizon)
        # The chunk of age r predicted the current step at its index r.
        predictions = torch.diagonal(self._chunks, dim1=1, dim2=2).transpose(1, 2)[:, :stored]  # [n, stored, A]
        return (self.ensemble_weights(stored).to(chunk).unsqueeze(-1) * predictions).sum(1)

    def ensemble_weights(self, stored: int) -> torch.Tensor:
        """Weights ``[stored]`` of the predictions indexed by age (0 = newest), summing to 1.

        The oldest prediction (age ``stored - 1``) has ``i = 0``: ``w = exp(-m * (stored - 1 - age))``.
        """
        age = torch.arange(stored, dtype=torch.float64)
        weights = torch.exp(-self.ensemble_decay * (stored - 1 - age))
        return weights / weights.sum()
