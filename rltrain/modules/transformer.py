r"""The Decision Transformer network, its actor heads and its episodic policy.

**Network** (Chen et al. 2021). A context of ``T`` steps ``(R_t, s_t, a_t)`` (return-to-go, state,
action) becomes ``3T`` tokens, interleaved ``R_1, s_1, a_1, ..., R_T, s_T, a_T``::

    token(R_t) = W_R R_t + b_R + E[t_t]      token(s_t) = W_s s_t + b_s + E[t_t]
    token(a_t) = W_a a_t + b_a + E[t_t]      (E: an embedding of the step's timestep in the episode)

then LayerNorm and dropout, ``n_layer`` pre-LN GPT blocks (causal multi-head self-attention, an MLP
``d -> inner -> d`` with GELU, residual dropout) and a final LayerNorm. Token ``i`` attends to token
``j`` only if ``j <= i`` (causal) and ``j`` is not part of a padded step, or ``j = i`` (so a padded
query row stays finite; its output is never used). The action ``a_t`` is predicted from the hidden
state of the STATE token ``s_t``, which has seen ``R_1..R_t``, ``s_1..s_t`` and ``a_1..a_{t-1}``.
Timesteps use the embedding instead of positional embeddings, as in the paper; a batch without
``timestep`` (the reference's examples have none) uses each step's position in the context window.

**Heads.** :class:`DTActor`: ``a_t = mid + half_range * tanh(W h_t + b)`` (deterministic, Decision
Transformer). :class:`OnlineDTActor`: a :class:`~rltrain.modules.TanhNormal` on the action bounds with
``loc = W_mu h_t`` and ``log_std = W_sigma h_t`` squashed into ``[log_std_min, log_std_max]`` with a
tanh (Online DT; it keeps the gradient where a hard clamp would cut it).

**Policy.** :class:`DTPolicy` runs either actor in an environment with the episodic protocol of
:mod:`rltrain.evaluate` (``reset`` / ``__call__`` / ``record``), keeping each env's last
``context_len`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase
from tensordict.nn.probabilistic import interaction_type  # tensordict.nn re-exports it only from 0.15.2
from torch import nn

from rltrain.modules.distributions import ScaledTanh, TanhNormal
from rltrain.modules.dropout import FastDropout
from rltrain.modules.specs import Bounded

NestedKey = str | tuple[str, ...]
DT_IN_KEYS: list[NestedKey] = ["observation", "action", "return_to_go", "timestep", "pad_mask"]
TOKENS_PER_STEP = 3  # return-to-go, state, action
STATE_TOKEN = 1


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a boolean mask (True = may attend)."""

    def __init__(self, embed_dim: int, n_head: int, dropout: float):
        super().__init__()
        if embed_dim % n_head:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.resid_dropout = FastDropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, dim // self.n_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))


class TransformerBlock(nn.Module):
    """Pre-LN GPT block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, embed_dim: int, n_head: int, inner_dim: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, n_head, dropout)
        self.ln_mlp = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, inner_dim), nn.GELU(), nn.Linear(inner_dim, embed_dim),
                                 FastDropout(dropout))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask)
        return x + self.mlp(self.ln_mlp(x))


class DecisionTransformer(nn.Module):
    """GPT-style causal transformer over ``(R_t, s_t, a_t)`` tokens (module docstring).

    ``forward(observation [B,T,obs], action [B,T,A], return_to_go [B,T,1], timestep [B,T] long,
    pad_mask [B,T] bool or None) -> [B, T, embed_dim]``: the hidden states of the state tokens.

    Args:
        obs_dim, action_dim: sizes of a state and of an action.
        embed_dim: token width ``d``.
        n_layer, n_head: blocks and attention heads.
        inner_dim: the MLP's hidden width (default ``4 d``).
        dropout: embedding, attention and residual dropout.
        max_ep_len: size of the timestep embedding (timesteps are clamped to ``max_ep_len - 1``).
        context_len: the longest context ``T`` accepted.
    """

    def __init__(self, obs_dim: int, action_dim: int, *, embed_dim: int = 128, n_layer: int = 3, n_head: int = 1,
                 inner_dim: int | None = None, dropout: float = 0.1, max_ep_len: int = 1000, context_len: int = 20):
        super().__init__()
        for name, value in {"obs_dim": obs_dim, "action_dim": action_dim, "embed_dim": embed_dim,
                            "n_layer": n_layer, "n_head": n_head, "max_ep_len": max_ep_len,
                            "context_len": context_len}.items():
            if value < 1:
                raise ValueError(f"DecisionTransformer: {name} must be at least 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DecisionTransformer: dropout must be in [0, 1), got {dropout}")
        self.obs_dim, self.action_dim, self.embed_dim = obs_dim, action_dim, embed_dim
        self.max_ep_len, self.context_len = max_ep_len, context_len
        self.embed_return = nn.Linear(1, embed_dim)
        self.embed_state = nn.Linear(obs_dim, embed_dim)
        self.embed_action = nn.Linear(action_dim, embed_dim)
        self.embed_timestep = nn.Embedding(max_ep_len, embed_dim)
        self.embed_ln = nn.LayerNorm(embed_dim)
        self.embed_dropout = FastDropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, n_head, inner_dim or 4 * embed_dim, dropout) for _ in range(n_layer))
        self.final_ln = nn.LayerNorm(embed_dim)
        length = TOKENS_PER_STEP * context_len
        self.register_buffer("causal", torch.ones(length, length, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("diagonal", torch.eye(length, dtype=torch.bool), persistent=False)
        self.apply(_gpt_init)

    def _attention_mask(self, pad_mask: torch.Tensor | None, steps: int, dtype: torch.dtype) -> torch.Tensor | None:
        """``[B, 1, 3T, 3T]`` additive (0 or -inf): causal, no padded key except the token itself;
        None = plain causal. (An additive mask takes a faster attention kernel on CPU than a boolean one.)"""
        if pad_mask is None:
            return None
        length = TOKENS_PER_STEP * steps
        valid_keys = (~pad_mask.bool()).repeat_interleave(TOKENS_PER_STEP, dim=1)      # [B, 3T]
        allowed = (valid_keys[:, None, :] | self.diagonal[:length, :length]) & self.causal[:length, :length]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
        return mask.unsqueeze(1)

    def forward(self, observation: torch.Tensor, action: torch.Tensor, return_to_go: torch.Tensor,
                timestep: torch.Tensor | None, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps = observation.shape[:2]
        if steps > self.context_len:
            raise ValueError(f"context of {steps} steps is longer than the transformer's context_len "
                             f"{self.context_len}")
        if timestep is None:
            timestep = context_positions(batch, steps, pad_mask, observation.device)
        time = self.embed_timestep(timestep.long().clamp(0, self.max_ep_len - 1))
        tokens = torch.stack([self.embed_return(return_to_go), self.embed_state(observation),
                              self.embed_action(action)], dim=2) + time.unsqueeze(2)   # [B, T, 3, d]
        x = self.embed_dropout(self.embed_ln(tokens.reshape(batch, TOKENS_PER_STEP * steps, self.embed_dim)))
        attn_mask = self._attention_mask(pad_mask, steps, x.dtype)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.final_ln(x)
        return x.view(batch, steps, TOKENS_PER_STEP, self.embed_dim)[:, :, STATE_TOKEN]


def context_positions(batch: int, steps: int, pad_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Timesteps for a context without them (the reference's examples give none): each step's
    position among the window's real steps, ``0, 1, ..`` from the first unpadded one (padded steps 0)."""
    if pad_mask is None:
        return torch.arange(steps, device=device).expand(batch, steps)
    return (torch.cumsum((~pad_mask.bool()).long(), dim=1) - 1).clamp_min(0)


def _gpt_init(module: nn.Module) -> None:
    """GPT-2's initialisation: weights N(0, 0.02), biases 0, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _as_keys(keys: NestedKey | Sequence[NestedKey] | None, default: list[NestedKey]) -> list[NestedKey]:
    if keys is None:
        return list(default)
    return [keys] if isinstance(keys, (str, tuple)) else list(keys)


class _DTActorBase(TensorDictModuleBase):
    """A transformer plus a head; reads ``in_keys`` (observation, action, return_to_go, timestep, pad_mask)."""

    def __init__(self, transformer: DecisionTransformer, spec: Bounded, in_keys, out_keys):
        super().__init__()
        if not isinstance(spec, Bounded):
            raise TypeError(f"{type(self).__name__} needs a Bounded action spec, got {type(spec).__name__}")
        if tuple(spec.shape) != (transformer.action_dim,):
            raise ValueError(f"action spec shape {tuple(spec.shape)} does not match the transformer's action_dim "
                             f"{transformer.action_dim}")
        self.transformer = transformer
        self.spec = spec
        self.in_keys = _as_keys(in_keys, DT_IN_KEYS)
        if len(self.in_keys) != len(DT_IN_KEYS):
            raise ValueError(f"{type(self).__name__} takes {len(DT_IN_KEYS)} in_keys in the order {DT_IN_KEYS}, "
                             f"got {self.in_keys}")
        self.out_keys = out_keys

    def inputs(self, tensordict: TensorDictBase) -> list[torch.Tensor | None]:
        """The ``in_keys`` tensors of a batch; a missing timestep reads as None (positions within the
        context are used, :func:`context_positions`) and a missing pad mask as None (nothing padded)."""
        *required, timestep_key, pad_key = self.in_keys
        return ([tensordict.get(k) for k in required]
                + [tensordict.get(timestep_key, None), tensordict.get(pad_key, None)])


class DTActor(_DTActorBase):
    """Decision Transformer's deterministic actor: ``tanh`` head scaled onto the action bounds.

    ``act(observation, action, return_to_go, timestep, pad_mask)`` -> ``[B, T, A]`` actions, one per
    context step; ``forward(td)`` writes them at ``out_keys[0]`` (default ``"action"``).
    """

    def __init__(self, transformer: DecisionTransformer, spec: Bounded, in_keys=None, out_keys=None):
        super().__init__(transformer, spec, in_keys, _as_keys(out_keys, ["action"]))
        self.head = nn.Linear(transformer.embed_dim, transformer.action_dim)
        self.squash = ScaledTanh(spec.low, spec.high)
        _gpt_init(self.head)

    def act(self, *inputs: torch.Tensor | None, deterministic: bool = True) -> torch.Tensor:
        return self.squash(self.head(self.transformer(*inputs)))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set(self.out_keys[0], self.act(*self.inputs(tensordict)))
        return tensordict


class OnlineDTActor(_DTActorBase):
    """Online DT's stochastic actor: a :class:`TanhNormal` on the action bounds per context step.

    ``distribution(*inputs)`` / ``get_dist(td)`` give the distribution (batch ``[B, T]``, event
    ``[A]``); ``act(*inputs, deterministic)`` its mode or a sample; ``forward(td)`` writes ``loc``,
    ``scale`` and the action (the mode, or a sample under ``set_interaction_type(RANDOM)``).

    Args:
        log_std_min, log_std_max: the log-std range (Online DT: -5 and 2).
    """

    def __init__(self, transformer: DecisionTransformer, spec: Bounded, in_keys=None, out_keys=None, *,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        if log_std_min >= log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be below log_std_max ({log_std_max})")
        action_key = _as_keys(out_keys, ["action"])[0]
        super().__init__(transformer, spec, in_keys, ["loc", "scale", action_key])
        self.action_key = action_key
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.head = nn.Linear(transformer.embed_dim, 2 * transformer.action_dim)
        _gpt_init(self.head)

    def loc_scale(self, *inputs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of the pre-tanh Gaussian, ``[B, T, A]`` each."""
        loc, raw_log_std = self.head(self.transformer(*inputs)).chunk(2, dim=-1)
        half_width = 0.5 * (self.log_std_max - self.log_std_min)
        log_std = self.log_std_min + half_width * (torch.tanh(raw_log_std) + 1.0)
        return loc, log_std.exp()

    def distribution(self, *inputs: torch.Tensor | None) -> TanhNormal:
        loc, scale = self.loc_scale(*inputs)
        return TanhNormal(loc, scale, self.spec.low.to(loc.device), self.spec.high.to(loc.device))

    def get_dist(self, tensordict: TensorDictBase) -> TanhNormal:
        return self.distribution(*self.inputs(tensordict))

    def act(self, *inputs: torch.Tensor | None, deterministic: bool = False) -> torch.Tensor:
        dist = self.distribution(*inputs)
        return dist.deterministic_sample if deterministic else dist.sample()

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        loc, scale = self.loc_scale(*self.inputs(tensordict))
        dist = TanhNormal(loc, scale, self.spec.low.to(loc.device), self.spec.high.to(loc.device))
        random = (interaction_type() or InteractionType.DETERMINISTIC) is InteractionType.RANDOM
        tensordict.set("loc", loc)
        tensordict.set("scale", scale)
        tensordict.set(self.action_key, dist.rsample() if random else dist.deterministic_sample)
        return tensordict


class DTPolicy:
    """A Decision Transformer actor run step by step in a vector env (the episodic protocol).

    Per env it keeps the last ``context_len`` steps: normalized states, the actions taken, the
    returns-to-go and the timesteps. ``reset(n)`` starts every env at return-to-go
    ``target_return * rtg_scale`` and timestep 0; ``__call__(obs)`` appends the step (its action slot
    is zero until the actor has chosen it: the state token never sees it), runs the actor on the
    left-padded windows and returns the last step's actions; ``record(reward)`` lowers each env's
    return-to-go by ``reward * rtg_scale`` and advances its timestep.

    Args:
        actor: a :class:`DTActor` or :class:`OnlineDTActor`.
        target_return: the return the episodes are conditioned on (unscaled).
        rtg_scale: the buffer's return-to-go scale.
        context_len: the window length (the training context).
        max_ep_len: timesteps are clamped to ``max_ep_len - 1``.
        normalizer: applied to the raw env observations (e.g. an ObservationNormalizer).
        deterministic: act with the mode (evaluation) or a sample (Online DT's exploration).
    """

    def __init__(self, actor: DTActor | OnlineDTActor, target_return: float, rtg_scale: float, context_len: int,
                 max_ep_len: int, normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 deterministic: bool = True):
        if context_len < 1:
            raise ValueError(f"context_len must be at least 1, got {context_len}")
        self.actor = actor
        self.target_return = float(target_return)
        self.rtg_scale = float(rtg_scale)
        self.context_len = int(context_len)
        self.max_ep_len = int(max_ep_len)
        self.normalizer = normalizer
        self.deterministic = deterministic
        self.num_envs = 0

    @property
    def device(self) -> torch.device:
        return next(self.actor.parameters()).device

    def reset(self, num_envs: int) -> None:
        """Empty histories for ``num_envs`` envs, each at the target return."""
        device, transformer = self.device, self.actor.transformer
        shape = (num_envs, self.context_len)
        self.num_envs = num_envs
        self.observations = torch.zeros(*shape, transformer.obs_dim, device=device)
        self.actions = torch.zeros(*shape, transformer.action_dim, device=device)
        self.returns_to_go = torch.zeros(*shape, 1, device=device)
        self.timesteps = torch.zeros(*shape, dtype=torch.long, device=device)
        self.pad_mask = torch.ones(*shape, dtype=torch.bool, device=device)
        self.current_return_to_go = torch.full((num_envs,), self.target_return * self.rtg_scale, device=device)
        self.current_timestep = torch.zeros(num_envs, dtype=torch.long, device=device)

    @staticmethod
    def _push(window: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Shift the window one step left and put ``value`` in the last slot."""
        return torch.cat([window[:, 1:], value.unsqueeze(1)], dim=1)

    @torch.no_grad()
    def __call__(self, observation: torch.Tensor) -> torch.Tensor:
        if self.num_envs != observation.shape[0]:
            raise RuntimeError(f"DTPolicy got {observation.shape[0]} observations but was reset for "
                               f"{self.num_envs} envs; call reset(num_envs) after every envs.reset")
        observation = observation.to(self.device, torch.float32)
        if self.normalizer is not None:
            observation = self.normalizer(observation)
        self.observations = self._push(self.observations, observation)
        self.actions = self._push(self.actions, torch.zeros_like(self.actions[:, 0]))
        self.returns_to_go = self._push(self.returns_to_go, self.current_return_to_go.unsqueeze(-1))
        self.timesteps = self._push(self.timesteps, self.current_timestep.clamp_max(self.max_ep_len - 1))
        self.pad_mask = self._push(self.pad_mask, torch.zeros_like(self.pad_mask[:, 0]))
        action = self.actor.act(self.observations, self.actions, self.returns_to_go, self.timesteps,
                                self.pad_mask, deterministic=self.deterministic)[:, -1]
        self.actions[:, -1] = action
        return action.to(torch.float32)

    def record(self, reward: torch.Tensor) -> None:
        """After a step: lower the returns-to-go by the rewards and advance the timesteps."""
        self.current_return_to_go = self.current_return_to_go - reward.to(self.device) * self.rtg_scale
        self.current_timestep = self.current_timestep + 1
