"""The trajectory simulator: one causal transformer, readable top to bottom.

An episode becomes a sequence of four tokens per timestep, in the order of
Multi-Game Decision Transformer::

    o_0  R_0  a_0  r_0  o_1  R_1  a_1  r_1  ...

``o`` observation, ``R`` return-to-go (or a learned *unknown* token: return
dropout), ``a`` action (plus an *intervention* flag embedding), ``r`` reward.
Every token also gets its episode timestep embedding. Each position predicts
the token that follows it, plus what a planner needs:

=========  ===================================  ==================================
position   reads                                predicts
=========  ===================================  ==================================
``o_t``    history, o_t                         R_t: the *value* (return bins)
``R_t``    history, o_t, R_t                    a_t: the *policy* (return-conditioned
                                                when R_t is known, imitation when not)
``a_t``    history, o_t, R_t, a_t               r_t: the reward; R_t: the *action value*
``r_t``    history, o_t, R_t, a_t, r_t          o_{t+1}: the world model, and termination
=========  ===================================  ==================================

Returns are categorical over fixed bins (two-hot targets), so a planner can read
a whole distribution, not only its mean. The action-value head learns only on
windows whose return tokens were dropped (return dropout): with R_t visible,
predicting it would be copying. Planners therefore write the *unknown* token,
exactly as in training. The value head, read before R_t, learns on every window;
with earlier returns visible it learns the bookkeeping R_t = R_{t-1} - r_{t-1},
which is what expert return sampling (Multi-Game DT) needs.

The action flag tells evidence (a demonstrator's choice, informative about
hidden state) from intervention (the acting agent's own choice, made
independently of hidden state). Counterfactual teaching trains on flagged
actions without an action loss; an evidential planner reads action values with
the flag off, a causal one with it on.

*Labels* (optional, ``SimulatorConfig.condition_on_label``): every token of an episode
also gets the embedding of the episode's behaviour-policy label (``Episode.policy``,
e.g. which player played), or of the learned *unknown label*. The labels seen in the
training data are listed in :class:`Statistics`; the trainer replaces a window's label
by the unknown one with probability ``label_dropout`` (like return dropout; always when the
window shows its return, as no agent prompts both), so one
simulator serves both unconditioned imitation (whoever the history suggests is playing)
and imitation of a named player. The label is added to each token, like the timestep,
rather than prepended as a token of its own: no position is spent on it, and the KV
cache and its refills need no special case for a token that must never leave the window.

Normalisation (observation mean/std, action bounds, return range, reward
scale) is fitted on the data, kept in :class:`Statistics` (JSON) and applied
inside the model, so callers pass raw environment values.

:class:`Context` is the incremental decoder for acting: a preallocated KV cache
holding at most ``context_len`` timesteps; when it is full it keeps the newest
``min_history`` whole steps (default half) and refills the cache from their stored embeddings,
so every step is the full forward pass over the window it holds (to float32 rounding: the pass
is compiled, :mod:`simagents.kernels`), at amortised cost of ``context_len / (context_len -
min_history)`` timesteps per step: two by default, ``context_len`` for a sliding window of the
last ``context_len`` steps (``min_history = context_len - 1``, as the reference Decision
Transformer acts).
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from minari.serialization import deserialize_space, serialize_space
from torch import Tensor, nn

from simagents.errors import SimagentsError
from simagents.io import atomic_write_bytes, atomic_write_json, from_dict, read_json, to_dict
from simagents.kernels import (
    LayerWeights,
    decode_layers,
    decode_tokens,
    embed_tokens,
    evaluation_heads,
    gaussian_actions,
    layer_norm,
    linear,
    scaled_into,
)

TOKENS_PER_STEP = 4  # o, R, a, r
OBSERVATION_TARGETS = ("change", "next")
"""Values of :attr:`SimulatorConfig.observation_target`."""
SCHEMA_VERSION = 1  # of config.json; bump when the architecture's parameters change meaning
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATISTICS_FILE = "statistics.json"
LATEST_FILE = "latest.json"  # in a run's checkpoints/ folder: which checkpoint is newest
LOSS_HEADS = ("action", "value", "action_value", "reward", "termination", "observation", "aux_targets")
TOKEN_KINDS = ("obs", "return", "action", "reward")  # a timestep's tokens, in order
HEAD_READS = {
    "action": "return",
    "value": "obs",
    "action_value": "action",
    "reward": "action",
    "termination": "reward",
    "observation": "reward",
    "aux_targets": "return",
}  # the token kind whose hidden state each loss head reads


@dataclass(frozen=True)
class SimulatorConfig:
    """Architecture of the simulator. Token sizes come from the spaces, given beside it.

    Example (a small one, as ``TrainConfig(model=...)`` or ``--model.n-embd 32 --model.n-layer 1``):

    >>> from simagents import SimulatorConfig
    >>> SimulatorConfig(n_embd=32, n_layer=1).n_return_bins
    201
    """

    context_len: int = 20
    """K: timesteps the transformer sees at once (4K tokens)."""
    n_embd: int = 128
    """Width of every token embedding and hidden state."""
    n_layer: int = 3
    """Transformer blocks."""
    n_head: int = 1
    """Attention heads per block (n_embd must divide by it)."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of n_embd."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and MLP outputs in training. Off by default: on CPU, drawing
    the masks costs about a third of a training step, and generated datasets are large enough."""
    max_timestep: int = 0
    """Size of the timestep embedding table; later timesteps share the last entry. 0: fit to the
    longest episode in the training data."""
    n_return_bins: int = 201
    """Bins of the categorical return distribution, spread over the data's return range. Fine bins
    matter to planners: on CartPole, 51 bins left edt at 473 of 500, 201 bins reached 491."""
    obs_image: tuple[int, ...] = ()
    """(channels, height, width) of a flat Box observation to read as an image: a small
    convolutional encoder (``obs_conv_layers`` 3x3 convolutions of ``obs_conv_channels``, same
    padding) then adds its features to the observation's token beside the flat values, the
    inductive bias of board and grid inputs (AlphaZero's, the DQN's). Empty: the flat values only."""
    obs_conv_channels: int = 32
    """Channels of each convolution of the image encoder (read only with ``obs_image``)."""
    obs_conv_layers: int = 2
    """Convolutions of the image encoder (read only with ``obs_image``); two 3x3 see 5x5 cells."""
    condition_on_label: bool = False
    """Add an embedding of the episode's behaviour-policy label (one per label in the training
    data, plus a learned *unknown label*) to every token, so that agents can ask the simulator
    to play like a named policy (``make_agent("imitation", simulator, label=...)``)."""
    observation_target: str = "next"
    """What the world model's head at r_t learns for a Box observation: ``next``, o_{t+1} itself
    (normalised), or ``change``, o_{t+1} - o_t (normalised; the prediction adds it to o_t).
    Discrete observations are a class either way. Most of a state's next value is its present
    one, so the change is the smaller target, and its smaller loss leaves the other heads more of
    the shared layers early in training. On the quality benchmark's CartPole data (2026-12-08,
    seeds 0-2, 20 episodes each) ``change`` lifted ``edt`` by its action-value head from 259.8 to
    487.1 after 125 updates and from 287.5 to 379.1 after 250, but lowered it from 492.9 to 444.7
    after 500, and ``dt`` after 1,000 from 472.2 to 437.5 (``benchmarks/README.md`` has the table):
    neither is ahead at every budget, so the default stays ``next``, what every simulator before
    this field learned."""
    aux_targets: int = 0
    """Auxiliary targets per observation (``Episode.aux_targets``), predicted from R_t's hidden
    state, the one the policy reads, and never read as input: signal that shapes the policy's
    features, such as which moves lose. Set from the training data by the trainer; 0: none."""

    def __post_init__(self) -> None:
        for name in ("context_len", "n_embd", "n_layer", "n_head", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.aux_targets < 0:
            raise ValueError(f"aux_targets={self.aux_targets} must be 0 (none) or more")
        if self.n_return_bins < 2:
            raise ValueError(f"n_return_bins={self.n_return_bins} must be at least 2")
        if self.observation_target not in OBSERVATION_TARGETS:
            raise ValueError(
                f"observation_target={self.observation_target!r} must be one of {', '.join(OBSERVATION_TARGETS)}"
            )
        if self.max_timestep < 0:
            raise ValueError(f"max_timestep={self.max_timestep} must be 0 (fit to the data) or more")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1)")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.obs_image and (len(self.obs_image) != 3 or min(self.obs_image) < 1):
            raise ValueError(f"obs_image={self.obs_image} must be (channels, height, width), each at least 1")
        if self.obs_conv_channels < 1 or self.obs_conv_layers < 1:
            raise ValueError("obs_conv_channels and obs_conv_layers must be at least 1")


@dataclass(frozen=True)
class Statistics:
    """Normalisation fitted on the training data; saved as JSON beside the weights."""

    obs_mean: list[float]
    """Per-feature mean of Box observations (empty for Discrete)."""
    obs_std: list[float]
    """Per-feature standard deviation of Box observations, floored (empty for Discrete)."""
    act_low: list[float]
    """Lower bound of Box actions, mapped to -1 (empty for Discrete)."""
    act_high: list[float]
    """Upper bound of Box actions, mapped to +1 (empty for Discrete)."""
    return_low: float
    """Smallest return-to-go the return bins cover."""
    return_high: float
    """Largest return-to-go the return bins cover."""
    reward_scale: float
    """Rewards are divided by this before entering or leaving the model."""
    episode_return_percentiles: list[float]
    """Episode returns of the training data at percentiles 0, 5, ..., 100 (21 values): the targets a
    Decision Transformer can be prompted with."""
    labels: list[str] = field(default_factory=list)
    """The behaviour-policy labels (``Episode.policy``) of the training episodes, sorted; label
    ``labels[i]`` has index ``i + 1`` in the label embedding, index 0 is the unknown label."""
    label_shares: list[float] = field(default_factory=list)
    """Share of the training episodes with each label (aligned with ``labels``; the unlabelled
    ones count in the denominator): an imitator drawing its player from these plays the data's
    population episode by episode. Empty in simulators saved before it was recorded."""

    def __post_init__(self) -> None:
        for low, high in (("obs_mean", "obs_std"), ("act_low", "act_high")):
            if len(getattr(self, low)) != len(getattr(self, high)):
                raise ValueError(f"{low} and {high} must have the same length")
        if any(s <= 0 for s in self.obs_std):
            raise ValueError("obs_std must be positive")
        if any(h <= lo for lo, h in zip(self.act_low, self.act_high, strict=True)):
            raise ValueError("act_high must exceed act_low")
        if not self.return_high > self.return_low:
            raise ValueError("return_high must exceed return_low")
        if not self.reward_scale > 0:
            raise ValueError("reward_scale must be positive")
        if len(self.episode_return_percentiles) != 21:
            raise ValueError("episode_return_percentiles must hold 21 values (percentiles 0, 5, ..., 100)")
        if len(set(self.labels)) != len(self.labels) or not all(self.labels):
            raise ValueError("labels must be distinct non-empty names")
        if self.label_shares and (
            len(self.label_shares) != len(self.labels)
            or any(not 0 <= x <= 1 for x in self.label_shares)
            or sum(self.label_shares) > 1 + 1e-6
        ):
            raise ValueError("label_shares must hold one share in [0, 1] per label, summing to at most 1")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SimulatorConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        commit: bool = True,
        rows: Tensor | None = None,
    ) -> Tensor:
        """x (B,n,C) -> (B,n,C); ``rows`` (m,) long, without a cache: only those tokens' outputs
        (B,m,C), attending causally to all n."""
        if rows is not None:
            return self._rows_forward(x, rows)
        B, n, C = x.shape  # batch, new tokens, n_embd
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (
            z.view(B, n, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v)
        )  # (B,H,n,hd)
        dropout = self.dropout if self.training else 0.0
        if cache is None or (cache.length == 0 and commit):
            if cache is not None:
                cache.write(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif not commit and n == 1 and cache.k.shape[1] == 1:  # candidates, one token each
            past_k, past_v = cache.read(layer, cache.length)
            y = shared_prefix_attention(q, k, v, past_k[0], past_v[0])
        else:
            if commit:
                cache.write(layer, k, v)
                keys, values = cache.read(layer, cache.length + n)
            else:  # candidates: attend to the shared prefix without storing anything
                past_k, past_v = cache.read(layer, cache.length)
                keys = torch.cat([past_k.expand(B, -1, -1, -1), k], dim=2)
                values = torch.cat([past_v.expand(B, -1, -1, -1), v], dim=2)
            mask = None
            if n > 1:  # new tokens see the whole prefix and each other causally
                L = keys.shape[2] - n
                mask = causal_mask(L + n, x.device)[L:]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        y = self.proj(y.transpose(1, 2).reshape(B, n, C))
        # Dropout is skipped, not run at p=0: at batch 1 every op call is a visible share of an act.
        return F.dropout(y, dropout) if dropout else y

    def _rows_forward(self, x: Tensor, rows: Tensor) -> Tensor:
        # Queries only for the kept rows; keys and values for every token.
        B, n, C = x.shape
        m, hd = rows.numel(), C // self.n_head
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x.index_select(1, rows), weight[:C], bias[:C])  # (B,m,C)
        k, v = F.linear(x, weight[C:], bias[C:]).chunk(2, dim=2)  # (B,n,C) each
        q = q.view(B, m, self.n_head, hd).transpose(1, 2)  # (B,H,m,hd)
        k, v = (z.view(B, n, self.n_head, hd).transpose(1, 2) for z in (k, v))  # (B,H,n,hd)
        dropout = self.dropout if self.training else 0.0
        mask = causal_mask(n, x.device)[rows]  # (m,n): row i sees the tokens up to rows[i]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = self.proj(y.transpose(1, 2).reshape(B, m, C))
        return F.dropout(y, dropout) if dropout else y


class Block(nn.Module):
    def __init__(self, cfg: SimulatorConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd),
        )
        self.dropout = cfg.dropout

    def linears(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """qkv, proj and the MLP's two layers, typed (indexing ``mlp`` gives a plain Module)."""
        fc, out = self.mlp[0], self.mlp[2]
        if not isinstance(fc, nn.Linear) or not isinstance(out, nn.Linear):
            raise TypeError("Block.mlp is Linear, GELU, Linear")
        return self.attn.qkv, self.attn.proj, fc, out

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        commit: bool = True,
        rows: Tensor | None = None,
    ) -> Tensor:
        """x (B,n,C) -> (B,n,C), or with ``rows`` (m,) only those tokens' outputs (B,m,C)."""
        kept = x if rows is None else x.index_select(1, rows)
        x = kept + self.attn(self.ln1(x), cache, layer, commit, rows)
        y = self.mlp(self.ln2(x))
        return x + (F.dropout(y, self.dropout) if self.training and self.dropout else y)


class ImageEncoder(nn.Module):
    """Flat normalised observations (...,C*H*W) -> convolutional features (...,channels*H*W)."""

    def __init__(self, cfg: SimulatorConfig) -> None:
        super().__init__()
        self.shape = tuple(cfg.obs_image)
        channels = [self.shape[0]] + [cfg.obs_conv_channels] * cfg.obs_conv_layers
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.features = cfg.obs_conv_channels * self.shape[1] * self.shape[2]

    def forward(self, obs: Tensor) -> Tensor:
        lead = obs.shape[:-1]
        y: Tensor = self.convs(obs.reshape(-1, *self.shape))  # (N,channels,H,W)
        return y.reshape(*lead, self.features)


def typed_blocks(model: Simulator) -> list[Block]:
    """``model.blocks`` as Blocks: iterating a ModuleList gives a type checker plain Modules."""
    blocks = []
    for block in model.blocks:
        if not isinstance(block, Block):
            raise TypeError(f"Simulator.blocks holds {type(block).__name__}, not Block")
        blocks.append(block)
    return blocks


def shared_prefix_attention(q: Tensor, k: Tensor, v: Tensor, past_k: Tensor, past_v: Tensor) -> Tensor:
    """Attention of B one-token queries (B,H,1,hd), each with its own key and value, to one shared
    prefix (H,L,hd) -> (B,H,1,hd).

    Equal to attending over [prefix, own token] for each row, without copying the prefix B times:
    the B queries are the rows of one (H,B,hd) x (H,hd,L) product."""
    scale = q.shape[-1] ** -0.5
    rows = q[:, :, 0].transpose(0, 1)  # (H,B,hd)
    prefix = torch.bmm(rows, past_k.transpose(1, 2)) * scale  # (H,B,L)
    own = (q * k).sum(-1)[:, :, 0].transpose(0, 1).unsqueeze(-1) * scale  # (H,B,1)
    weights = torch.cat([prefix, own], dim=-1).softmax(-1)
    y = torch.bmm(weights[..., :-1], past_v) + weights[..., -1:] * v[:, :, 0].transpose(0, 1)  # (H,B,hd)
    return y.transpose(0, 1).unsqueeze(2)


_CAUSAL_MASKS: dict[tuple[int, str], Tensor] = {}


def causal_mask(n: int, device: torch.device) -> Tensor:
    """(n,n) bool, True on and below the diagonal; built once per size and reused (read-only)."""
    key = (n, str(device))
    if key not in _CAUSAL_MASKS:
        _CAUSAL_MASKS[key] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return _CAUSAL_MASKS[key]


class KVCache:
    """Preallocated keys and values of every layer for up to ``max_tokens`` tokens."""

    def __init__(self, cfg: SimulatorConfig, batch: int, max_tokens: int) -> None:
        head_dim = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, max_tokens, head_dim)
        self.k = torch.zeros(shape)
        self.v = torch.zeros(shape)
        self.length = 0  # tokens stored; advanced by the caller once every layer has written

    # select + narrow rather than a tuple of slices: the same views at a third of the Python cost.
    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        n = k.shape[2]
        self.k[layer].narrow(2, self.length, n).copy_(k)
        self.v[layer].narrow(2, self.length, n).copy_(v)

    def read(self, layer: int, length: int) -> tuple[Tensor, Tensor]:
        return self.k[layer].narrow(2, 0, length), self.v[layer].narrow(2, 0, length)


class Simulator(nn.Module):
    """Causal transformer over (observation, return, action, reward) tokens. See the module docstring.

    Example (``runs/cartpole`` as trained by :func:`~simagents.train.train`'s example):

    >>> from simagents import Simulator
    >>> simulator = Simulator.load("runs/cartpole")
    >>> simulator.action_space, simulator.return_bins.shape
    (Discrete(2), torch.Size([201]))
    """

    # Buffers registered in __init__; declared so that they read as Tensor, not Tensor | Module.
    obs_mean: Tensor
    obs_std: Tensor
    act_low: Tensor
    act_high: Tensor
    return_bins: Tensor

    def __init__(
        self,
        cfg: SimulatorConfig,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        stats: Statistics,
    ) -> None:
        super().__init__()
        if cfg.max_timestep < 1:
            raise ValueError("max_timestep must be fitted to the data (>= 1) before building the model")
        self.cfg = cfg
        self.observation_space = observation_space
        self.action_space = action_space
        self.stats = stats
        self.obs_discrete, self.obs_dim = token_size(observation_space)
        self.act_discrete, self.act_dim = token_size(action_space)
        # Discrete spaces may start anywhere; the model works with 0-based indices.
        self.obs_start = int(getattr(observation_space, "start", 0))
        self.act_start = int(getattr(action_space, "start", 0))
        d = cfg.n_embd
        self.obs_encoder = self._image_encoder(cfg) if cfg.obs_image else None
        # Box: the observation token embeds the normalised values and any image features, concatenated
        self.obs_features = self.obs_dim + (self.obs_encoder.features if self.obs_encoder else 0)
        self.obs_embed = (
            nn.Embedding(self.obs_dim, d) if self.obs_discrete else nn.Linear(self.obs_features, d)
        )
        self.act_embed = nn.Embedding(self.act_dim, d) if self.act_discrete else nn.Linear(self.act_dim, d)
        self.return_embed = nn.Linear(1, d)
        self.unknown_return = nn.Parameter(torch.zeros(d))
        self.reward_embed = nn.Linear(1, d)
        self.intervention_embed = nn.Embedding(2, d)
        self.time_embed = nn.Embedding(cfg.max_timestep, d)
        # (labels + 1, d), row 0 the unknown label; None without label conditioning
        self.label_embed = nn.Embedding(len(stats.labels) + 1, d) if cfg.condition_on_label else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.value_head = nn.Linear(d, cfg.n_return_bins)  # at o_t
        self.action_head = nn.Linear(d, self.act_dim if self.act_discrete else 2 * self.act_dim)  # at R_t
        self.action_value_head = nn.Linear(d, cfg.n_return_bins)  # at a_t
        self.reward_head = nn.Linear(d, 1)  # at a_t
        self.next_obs_head = nn.Linear(d, self.obs_dim)  # at r_t
        self.termination_head = nn.Linear(d, 1)  # at r_t
        self.aux_head = nn.Linear(d, cfg.aux_targets) if cfg.aux_targets else None  # at R_t

        # Normalisation lives in buffers (not saved with the weights: statistics.json is the source).
        def buffer(name: str, values: list[float] | float) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)

        buffer("obs_mean", stats.obs_mean)
        buffer("obs_std", stats.obs_std)
        buffer("act_low", stats.act_low)
        buffer("act_high", stats.act_high)
        buffer("return_bins", torch.linspace(stats.return_low, stats.return_high, cfg.n_return_bins).tolist())
        self.apply(self._init_weights)

    def _image_encoder(self, cfg: SimulatorConfig) -> ImageEncoder:
        if self.obs_discrete or math.prod(cfg.obs_image) != self.obs_dim:
            raise ValueError(
                f"obs_image={tuple(cfg.obs_image)} does not fit the observation space {self.observation_space}: "
                "it reads a flat Box observation of channels*height*width values; fix --model.obs-image"
            )
        return ImageEncoder(cfg)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ---- normalisation -------------------------------------------------------------------

    def _scale_return(self, returns: Tensor) -> Tensor:
        lo, hi = self.stats.return_low, self.stats.return_high
        return (returns - 0.5 * (lo + hi)) / (0.5 * (hi - lo))

    def normalize_action(self, actions: Tensor) -> Tensor:
        """Box actions from env units to [-1, 1]."""
        return 2 * (actions - self.act_low) / (self.act_high - self.act_low) - 1

    def denormalize_action(self, actions: Tensor) -> Tensor:
        return self.act_low + (actions.clamp(-1, 1) + 1) * 0.5 * (self.act_high - self.act_low)

    def normalize_observation(self, obs: Tensor) -> Tensor:
        return ((obs - self.obs_mean) / self.obs_std).clamp(-10, 10)

    def next_observation_normalized(self, h_reward: Tensor, obs_normalized: Tensor) -> Tensor:
        """Box observations: hidden at r_t (...,d) and o_t normalised (...,obs_dim) -> the world
        model's o_{t+1}, normalised (the mean of its Gaussian)."""
        predicted: Tensor = self.next_obs_head(h_reward)
        return predicted + obs_normalized if self.cfg.observation_target == "change" else predicted

    # ---- embeddings: shared by the training forward pass and incremental decoding ----------

    def _time(self, timesteps: Tensor, labels: Tensor | None = None) -> Tensor:
        """timesteps (B,n); labels (B,) label indices or None (unknown) -> (B,n,d): what every token
        of those timesteps adds to its content (the label's embedding too, with label conditioning)."""
        x: Tensor = self.time_embed(timesteps.clamp(max=self.cfg.max_timestep - 1))
        if self.label_embed is None:
            return x
        if labels is None:
            return x + self.label_embed.weight[0]
        label: Tensor = self.label_embed(labels)
        return x + label.unsqueeze(1)

    def label_index(self, label: str | None) -> int:
        """Index of ``label`` in the label embedding; None is the unknown label (0).

        Raises :class:`SimagentsError` for a label the training data did not have, or for any
        label if the simulator was trained without label conditioning."""
        if label is None:
            return 0
        if self.label_embed is None:
            raise SimagentsError(
                f"label {label!r}: this simulator was trained without label conditioning; "
                "train it with --model.condition-on-label to condition on a player's label"
            )
        if label not in self.stats.labels:
            raise SimagentsError(
                f"label {label!r} never occurs in this simulator's training data; "
                f"its labels are: {', '.join(self.stats.labels) or 'none'}"
            )
        return self.stats.labels.index(label) + 1

    # Each token is its content plus its timestep's embedding. The content parts are apart so that
    # the four tokens of a timestep look the time embedding up once (forward, Context).

    def _observation_content(self, obs: Tensor) -> Tensor:
        x: Tensor
        if self.obs_discrete:
            x = self.obs_embed(obs - self.obs_start)
        else:
            x = self.obs_embed(self.observation_features(self.normalize_observation(obs)))
        return x

    def observation_features(self, normalized: Tensor) -> Tensor:
        """Normalised Box observations (...,obs_dim) -> what the observation embedding reads
        (...,obs_features): the values, then the image encoder's features if there is one."""
        if self.obs_encoder is None:
            return normalized
        return torch.cat([normalized, self.obs_encoder(normalized)], -1)

    def _return_content(self, returns: Tensor, known: Tensor) -> Tensor:
        x = self.return_embed(self._scale_return(returns).unsqueeze(-1))
        return torch.where(known.unsqueeze(-1), x, self.unknown_return)

    def _action_content(self, actions: Tensor, interventions: Tensor) -> Tensor:
        x: Tensor
        if self.act_discrete:
            x = self.act_embed(actions - self.act_start)
        else:
            x = self.act_embed(self.normalize_action(actions))
        intervention: Tensor = self.intervention_embed(interventions.long())
        return x + intervention

    def _reward_content(self, rewards: Tensor) -> Tensor:
        x: Tensor = self.reward_embed((rewards / self.stats.reward_scale).unsqueeze(-1))
        return x

    # ``labels`` (B,) label indices (label_index), None: the unknown label; ignored without labels.

    def embed_observation(self, obs: Tensor, timesteps: Tensor, labels: Tensor | None = None) -> Tensor:
        """obs (B,n) long or (B,n,obs_dim); timesteps (B,n) -> (B,n,d)"""
        return self._observation_content(obs) + self._time(timesteps, labels)

    def embed_return(
        self, returns: Tensor, known: Tensor, timesteps: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """returns (B,n); known (B,n) bool, False writes the unknown-return token -> (B,n,d)"""
        return self._return_content(returns, known) + self._time(timesteps, labels)

    def embed_action(
        self, actions: Tensor, interventions: Tensor, timesteps: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """actions (B,n) long or (B,n,act_dim); interventions (B,n) bool -> (B,n,d)"""
        return self._action_content(actions, interventions) + self._time(timesteps, labels)

    def embed_reward(self, rewards: Tensor, timesteps: Tensor, labels: Tensor | None = None) -> Tensor:
        """rewards (B,n) -> (B,n,d)"""
        return self._reward_content(rewards) + self._time(timesteps, labels)

    def transform(
        self, x: Tensor, cache: KVCache | None = None, commit: bool = True, rows: Tensor | None = None
    ) -> Tensor:
        """Token embeddings (B,n,d) -> final hidden states (B,n,d), optionally through a KV cache.

        ``rows`` (m,) long, without a cache: only those tokens' final states (B,m,d). The last
        block then runs its queries, MLP and final norm on those rows alone (the earlier blocks
        feed every token's keys and values, so they run in full)."""
        if self.training and self.cfg.dropout:
            x = self.drop(x)
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, commit, rows if layer == last else None)
        if cache is not None and commit:
            cache.length += x.shape[1]
        h: Tensor = self.ln_f(x)
        return h

    # ---- training --------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor], kinds: Collection[str] = TOKEN_KINDS) -> dict[str, Tensor]:
        """Hidden states per token kind for a batch of windows, each (B,K,d).

        ``batch["label"]`` (B,) long, optional: each window's label index (0, the unknown label,
        when absent); read only with label conditioning. ``kinds``: the token kinds wanted (of
        ``TOKEN_KINDS``); the last block skips the others' queries and MLP."""
        t = batch["timesteps"]  # (B,K)
        B, K = t.shape
        known = batch["return_known"].unsqueeze(1).expand(B, K)  # per window
        tokens = torch.stack(
            [
                self._observation_content(batch["observations"]),
                self._return_content(batch["returns_to_go"], known),
                self._action_content(batch["actions"], batch["interventions"]),
                self._reward_content(batch["rewards"]),
            ],
            dim=2,
        ) + self._time(t, batch.get("label")).unsqueeze(2)  # (B,K,4,d)
        wanted = [i for i, kind in enumerate(TOKEN_KINDS) if kind in kinds]
        rows = None
        if len(wanted) < TOKENS_PER_STEP:
            steps = torch.arange(K, device=t.device).unsqueeze(1) * TOKENS_PER_STEP
            rows = (steps + torch.tensor(wanted, device=t.device)).flatten()  # (K*len(wanted),)
        h = self.transform(tokens.reshape(B, TOKENS_PER_STEP * K, -1), rows=rows).view(B, K, len(wanted), -1)
        return {TOKEN_KINDS[i]: h[:, :, j] for j, i in enumerate(wanted)}

    @property
    def loss_heads(self) -> tuple[str, ...]:
        """The heads this simulator has: ``LOSS_HEADS``, less ``aux_targets`` without auxiliary targets."""
        return tuple(head for head in LOSS_HEADS if head != "aux_targets" or self.aux_head is not None)

    def loss(self, batch: dict[str, Tensor], heads: Collection[str] | None = None) -> dict[str, Tensor]:
        """Per-head mean losses over valid tokens, for the heads named (default: all of
        :attr:`loss_heads`). Weighting them is the trainer's choice; a head left out costs nothing,
        and a token kind that no named head reads skips the last block's queries and MLP
        (``heads=("action",)``, the Decision Transformer's loss, runs the last block on a quarter
        of the tokens)."""
        heads = self.loss_heads if heads is None else heads
        unknown_heads = sorted(set(heads) - set(self.loss_heads))
        if unknown_heads:
            raise ValueError(f"unknown loss head(s) {unknown_heads}; choose from {list(self.loss_heads)}")
        h = self(batch, kinds={HEAD_READS[head] for head in heads})
        valid = batch["mask"]  # (B,K) bool, False on padding

        def mean(per_token: Tensor, where: Tensor) -> Tensor:
            return (per_token * where).sum() / where.sum().clamp(min=1)

        losses: dict[str, Tensor] = {}
        if "action" in heads:
            evidence = valid & ~batch["interventions"]  # intervened actions are not evidence
            losses["action"] = mean(-self.action_log_prob(h["return"], batch["actions"]), evidence)
        if "value" in heads or "action_value" in heads:
            target = self.two_hot(batch["returns_to_go"])  # (B,K,bins)
        if "value" in heads:
            losses["value"] = mean(-(target * F.log_softmax(self.value_head(h["obs"]), -1)).sum(-1), valid)
        if "action_value" in heads:
            unknown = valid & ~batch["return_known"].unsqueeze(
                1
            )  # R_t hidden: the action value is not a copy
            losses["action_value"] = mean(
                -(target * F.log_softmax(self.action_value_head(h["action"]), -1)).sum(-1), unknown
            )
        if "reward" in heads:
            losses["reward"] = mean(
                (self.reward_head(h["action"]).squeeze(-1) - batch["rewards"] / self.stats.reward_scale) ** 2,
                valid,
            )
        if "termination" in heads:
            losses["termination"] = mean(
                F.binary_cross_entropy_with_logits(
                    self.termination_head(h["reward"]).squeeze(-1),
                    batch["terminations"].float(),
                    reduction="none",
                ),
                valid,
            )
        if "observation" in heads:
            next_obs = self.next_obs_head(h["reward"])
            if self.obs_discrete:
                target_obs = batch["next_observations"] - self.obs_start
                obs_err = F.cross_entropy(next_obs.transpose(1, 2), target_obs, reduction="none")
            else:
                if self.cfg.observation_target == "change":  # the error of o_t + change, as predicted
                    next_obs = next_obs + self.normalize_observation(batch["observations"])
                obs_err = ((next_obs - self.normalize_observation(batch["next_observations"])) ** 2).mean(-1)
            losses["observation"] = mean(obs_err, valid)
        if self.aux_head is not None and "aux_targets" in heads:
            per_target = F.binary_cross_entropy_with_logits(
                self.aux_head(h["return"]), batch["aux_targets"], reduction="none"
            )  # (B,K,A)
            losses["aux_targets"] = mean(per_target.mean(-1), valid)
        return losses

    def two_hot(self, returns: Tensor) -> Tensor:
        """Returns (...) -> two-hot weights over the return bins (..., bins); the expectation is exact."""
        bins = self.return_bins
        n = bins.numel()
        pos = (returns.clamp(bins[0], bins[-1]) - bins[0]) / (bins[-1] - bins[0]) * (n - 1)
        lower = pos.floor().long().clamp(max=n - 2)
        upper_weight = (pos - lower).unsqueeze(-1)
        out = torch.zeros(*returns.shape, n, device=returns.device)
        out.scatter_(-1, lower.unsqueeze(-1), 1 - upper_weight)
        out.scatter_add_(-1, (lower + 1).unsqueeze(-1), upper_weight)
        return out

    # ---- heads as distributions --------------------------------------------------------------

    def action_params(self, h_return: Tensor) -> Tensor:
        """Hidden at R_t (...,d) -> logits (...,act_dim) or Gaussian [mean, log_std] (...,2*act_dim)."""
        params: Tensor = self.action_head(h_return)
        return params

    def action_log_prob(self, h_return: Tensor, actions: Tensor) -> Tensor:
        params = self.action_params(h_return)
        if self.act_discrete:
            logits = params.transpose(1, 2) if params.dim() == 3 else params
            return -F.cross_entropy(logits, actions - self.act_start, reduction="none")
        mean, log_std = self._gaussian(params)
        z = (self.normalize_action(actions) - mean) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    @staticmethod
    def _gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params.chunk(2, dim=-1)
        return torch.tanh(mean), log_std.clamp(-5, 1)

    def sample_action(
        self, h_return: Tensor, generator: torch.Generator | None, temperature: float = 1.0, n: int = 1
    ) -> Tensor:
        """Hidden at R_t (1,d) -> n sampled actions: (n,) long or (n,act_dim) in env units.

        temperature 0 takes the mode."""
        if self.act_discrete:
            params = self.action_params(h_return).reshape(-1)
            if temperature == 0:
                return params.argmax().repeat(n) + self.act_start
            probs = F.softmax(params / temperature, -1)
            return torch.multinomial(probs, n, replacement=True, generator=generator) + self.act_start
        return self.gaussian_sample(self.action_params_array(h_return), generator, temperature, n=n)

    def gaussian_sample(
        self,
        params: np.ndarray,
        generator: torch.Generator | None,
        temperature: float = 1.0,
        n: int | None = None,
    ) -> Tensor:
        """Box: the policy head's output (2*act_dim,) -> n actions (n,act_dim) in env units, as
        :meth:`sample_action` (temperature 0 takes the mode); n None: one action (act_dim,)."""
        shape = (1 if n is None else n, self.act_dim)
        if temperature == 0:  # the mode: the mean alone
            noise = np.zeros(shape, np.float32)
        else:
            noise = torch.randn(shape, generator=generator).numpy()
        actions, _ = self.gaussian_actions(params, noise, temperature)
        return torch.from_numpy(actions[0] if n is None else actions)

    def gaussian_actions(
        self, params: np.ndarray, noise: np.ndarray, temperature: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Box: the policy head's output (2*act_dim,) and standard normal noise (n,act_dim) ->
        actions mean + temperature * std * noise (n,act_dim) in env units (clipped to the range),
        and their log densities under the policy up to a constant shared by all (n,), in numpy."""
        weights = _decode_weights(self)
        return gaussian_actions(params, noise, temperature, weights.act_low, weights.act_half_span)

    def action_params_array(self, h_return: Tensor) -> np.ndarray:
        """:meth:`action_params` of one row: hidden at R_t (1,d) -> (act_dim,) logits or
        (2*act_dim,) Gaussian parameters, in numpy (from the decoder's copy of the head)."""
        weights = _decode_weights(self)
        weights.refresh()
        params = np.empty(weights.policy_bias.shape, np.float32)
        weights.policy_head(h_return.detach().numpy().reshape(1, -1), params)
        return params

    def expected_return(self, logits: Tensor) -> Tensor:
        """Return-bin logits (...,bins) -> expected return (...) in env units."""
        return F.softmax(logits, -1) @ self.return_bins

    def predicted_reward(self, h_action: Tensor) -> Tensor:
        reward: Tensor = self.reward_head(h_action)
        return reward.squeeze(-1) * self.stats.reward_scale

    # ---- checkpoints -------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write model.safetensors, config.json and statistics.json into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, safetensors.torch.save(weights))
        atomic_write_json(
            directory / CONFIG_FILE,
            {
                "schema": SCHEMA_VERSION,
                "model": to_dict(self.cfg),
                "observation_space": json.loads(serialize_space(self.observation_space)),
                "action_space": json.loads(serialize_space(self.action_space)),
            },
        )
        atomic_write_json(directory / STATISTICS_FILE, to_dict(self.stats))

    @classmethod
    def load(cls, path: str | Path) -> Simulator:
        """Load a simulator from a run folder (its latest checkpoint) or a checkpoint folder."""
        directory = resolve_checkpoint(Path(path))
        config = read_json(directory / CONFIG_FILE, "simulator config")
        source = str(directory / CONFIG_FILE)
        if not isinstance(config, dict) or config.get("schema") != SCHEMA_VERSION:
            found = config.get("schema") if isinstance(config, dict) else None
            raise SimagentsError(
                f"{source}: checkpoint schema {found!r} is not {SCHEMA_VERSION}, the one this simagents reads; "
                "retrain with this version or load it with the version that made it"
            )
        for key in ("model", "observation_space", "action_space"):
            if key not in config:
                raise SimagentsError(
                    f"{source}: missing key {key!r}; the checkpoint is incomplete, retrain it"
                )
        cfg = from_dict(SimulatorConfig, config["model"], f"{source} [model]")
        stats = from_dict(
            Statistics, read_json(directory / STATISTICS_FILE, "statistics"), str(directory / STATISTICS_FILE)
        )
        try:
            spaces = [deserialize_space(json.dumps(config[k])) for k in ("observation_space", "action_space")]
        except Exception as exc:  # minari raises several types for a malformed space
            raise SimagentsError(f"{source}: cannot read the spaces ({exc}); the file is corrupt") from None
        for what, space, stat in (
            ("observation", spaces[0], stats.obs_mean),
            ("action", spaces[1], stats.act_low),
        ):
            features = 0 if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))
            if len(stat) != features:
                raise SimagentsError(
                    f"{directory / STATISTICS_FILE}: {len(stat)} {what} features, but the {what} space "
                    f"{space} has {features}; the files come from different runs"
                )
        try:
            model = cls(cfg, spaces[0], spaces[1], stats)
        except (ValueError, RuntimeError, MemoryError) as exc:  # e.g. sizes torch cannot allocate
            raise SimagentsError(f"{source}: cannot build the model ({exc}); the file is corrupt") from None
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise SimagentsError(f"{weights_path}: weights not found; the checkpoint is incomplete")
        try:
            weights = safetensors.torch.load_file(weights_path)
        except Exception as exc:  # truncated or garbled files raise safetensors' own error types
            raise SimagentsError(
                f"{weights_path}: cannot read the weights ({exc}); the file is truncated or corrupt, "
                "use an earlier checkpoint or retrain"
            ) from None
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        # Compare shapes first: load_state_dict raises a bare RuntimeError on a mismatch.
        if missing or unexpected or any(weights[k].shape != v.shape for k, v in expected.items()):
            raise SimagentsError(
                f"{weights_path}: weights do not fit the architecture in {CONFIG_FILE} "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
                "the files come from different runs or schema versions"
            )
        model.load_state_dict(weights)
        return model.eval()


@dataclass
class ActionEvaluation:
    """What the simulator predicts for candidate actions at the current step."""

    return_logits: Tensor  # (N,bins): action-value distribution per candidate
    expected_return: Tensor  # (N,)
    reward: Tensor  # (N,) predicted immediate reward


_VERSION = operator.attrgetter("_version")  # a tensor's count of in-place changes


class _DecodeWeights:
    """The weights :class:`Context` decodes with, laid out for its compiled pass (:mod:`simagents.kernels`).

    Token embeddings become one lookup (each token sums 4 rows of one table: its
    timestep, its label, its type's bias or discrete content, and the action flag or a zero row)
    plus one product of the continuous features (normalised observation, scaled return,
    normalised action, scaled reward; zero where a token has none) by their stacked weights,
    both in numpy. The blocks' parameters are stacked per kind over the layers, as torch stores
    them ((out, in) weights), in numpy float32 arrays. These are copies, shared by the model's
    Contexts: :meth:`refresh` rebuilds them when a parameter they copy changed in place (an
    optimiser step, ``load_state_dict``)."""

    def __init__(self, model: Simulator) -> None:
        self.model = model
        d = model.cfg.n_embd
        self.time_rows = model.cfg.max_timestep
        self.label_row = self.time_rows  # + label index
        n_labels = 0 if model.label_embed is None else model.label_embed.num_embeddings
        self.unknown_row = self.label_row + max(n_labels, 1)
        self.flag_row = self.unknown_row + 1
        self.obs_row = self.flag_row + 2  # the observation's bias row, or its first content row (Discrete)
        self.act_row = self.obs_row + (model.obs_dim if model.obs_discrete else 1)
        self.return_row = self.act_row + (model.act_dim if model.act_discrete else 1)
        self.reward_row = self.return_row + 1
        self.zero_row = self.reward_row + 1
        # continuous feature columns
        self.obs_col = 0
        # With an image encoder the observation's content comes whole (Context.token_direct), not as columns here.
        self.return_col = 0 if model.obs_discrete or model.obs_encoder else model.obs_dim
        self.act_col = self.return_col + 1
        self.reward_col = self.act_col + (0 if model.act_discrete else model.act_dim)
        self.n_features = self.reward_col + 1
        self.d = d
        stats = model.stats
        self.obs_mean = np.asarray(stats.obs_mean, dtype=np.float32)
        self.obs_std = np.asarray(stats.obs_std, dtype=np.float32)
        self.act_low = np.asarray(stats.act_low, dtype=np.float32)
        self.act_span = np.asarray(stats.act_high, dtype=np.float32) - self.act_low
        self.act_half_span = 0.5 * self.act_span  # (a + 1) * 0.5 * span exactly: halving is exact
        self.return_mid = np.float32(0.5 * (stats.return_low + stats.return_high))
        self.return_half = np.float32(0.5 * (stats.return_high - stats.return_low))
        embeddings = [model.time_embed, model.label_embed, model.intervention_embed, model.obs_embed]
        embeddings += [model.act_embed, model.return_embed, model.reward_embed]
        self.sources: list[Tensor] = [p for m in embeddings if m is not None for p in m.parameters()]
        self.sources += [model.unknown_return, *model.ln_f.parameters()]
        self.sources += list(model.blocks.parameters())
        self.evaluation_heads = (model.action_value_head, model.reward_head)
        self.sources += [p for head in self.evaluation_heads for p in head.parameters()]
        self.sources += [*model.action_head.parameters(), model.return_bins]
        blocks = typed_blocks(model)
        self.eps = np.array([(b.ln1.eps, b.ln2.eps) for b in blocks], dtype=np.float64)  # (L,2)
        self.final_eps = model.ln_f.eps
        self.versions: tuple[int, ...] = ()
        self.table = np.empty((0, d), dtype=np.float32)  # (rows, d)
        self.features_weight = np.empty((0, d), dtype=np.float32)  # (n_features, d)
        # At a_t: the action-value head's logits and the reward head's output in one product
        self.evaluation_weight = np.empty((0, d), dtype=np.float32)  # (bins + 1, d)
        self.evaluation_bias = np.empty(0, dtype=np.float32)  # (bins + 1,)
        self.return_bins = np.empty(0, dtype=np.float32)  # (bins,)
        # The policy head at one row, compiled (Simulator.action_params_array)
        self.policy_weight = np.empty((0, d), dtype=np.float32)  # (out, d)
        self.policy_bias = np.empty(0, dtype=np.float32)  # (out,)
        self.final_norm = np.empty((2, d), dtype=np.float32)  # ln_f weight, bias
        # The blocks' parameters stacked over the L layers, as kernels.decode_layers takes them
        empty = np.empty(0, dtype=np.float32)
        self.norms = self.qkv_w = self.qkv_b = self.proj_w = self.proj_b = empty  # (L,4,C), (L,3C,C), ...
        self.fc_w = self.fc_b = self.out_w = self.out_b = empty
        self.layers: LayerWeights  # all of them, in decode_layers' order of arguments
        self.refresh()

    def policy_head(self, h: np.ndarray, out: np.ndarray) -> None:
        """The action head on one final state h (1,d) into out (act_dim,) or (2*act_dim,), compiled."""
        linear(h, self.policy_weight, self.policy_bias, out.reshape(1, -1))

    def refresh(self) -> None:
        """Rebuild the copies if a parameter they copy has changed since they were built."""
        versions = tuple(map(_VERSION, self.sources))  # map, not a generator: ~2x faster on 55
        if versions == self.versions:
            return
        model, d = self.model, self.d
        with torch.no_grad():

            def rows(module: nn.Module, discrete: bool) -> Tensor:
                if discrete and isinstance(module, nn.Embedding):
                    return module.weight.detach()
                if not discrete and isinstance(module, nn.Linear):
                    return module.bias.unsqueeze(0).detach()
                raise TypeError(f"a {'discrete' if discrete else 'continuous'} token embeds with {module}")

            labels = model.label_embed.weight.detach() if model.label_embed is not None else torch.zeros(1, d)
            table = torch.cat(
                [
                    model.time_embed.weight.detach(),
                    labels,
                    model.unknown_return.detach().unsqueeze(0),
                    model.intervention_embed.weight.detach(),
                    rows(model.obs_embed, model.obs_discrete),
                    rows(model.act_embed, model.act_discrete),
                    model.return_embed.bias.detach().unsqueeze(0),
                    model.reward_embed.bias.detach().unsqueeze(0),
                    torch.zeros(1, d),
                ]
            )
            self.table = table.numpy()
            flat_obs = not (model.obs_discrete or model.obs_encoder)
            columns = [model.obs_embed.weight.detach().t()] if flat_obs else []
            columns.append(model.return_embed.weight.detach().t())
            if not model.act_discrete:
                columns.append(model.act_embed.weight.detach().t())
            columns.append(model.reward_embed.weight.detach().t())
            self.features_weight = torch.cat(columns).numpy()  # (n_features, d)
            heads = self.evaluation_heads
            self.evaluation_weight = torch.cat([h.weight.detach() for h in heads]).numpy()
            self.evaluation_bias = torch.cat([h.bias.detach() for h in heads]).numpy()
            self.return_bins = model.return_bins.numpy()
            self.policy_weight = model.action_head.weight.detach().clone().numpy()
            self.policy_bias = model.action_head.bias.detach().clone().numpy()
            self.final_norm = torch.stack([model.ln_f.weight, model.ln_f.bias]).numpy()
            blocks = typed_blocks(model)
            linears = [b.linears() for b in blocks]

            def stacked(tensors: list[Tensor]) -> np.ndarray:
                return torch.stack(tensors).numpy()

            def weights(i: int) -> np.ndarray:
                return stacked([layer[i].weight for layer in linears])

            def biases(i: int) -> np.ndarray:
                return stacked([layer[i].bias for layer in linears])

            self.norms = stacked(
                [torch.stack([b.ln1.weight, b.ln1.bias, b.ln2.weight, b.ln2.bias]) for b in blocks]
            )
            self.qkv_w, self.proj_w, self.fc_w, self.out_w = (weights(i) for i in range(4))
            self.qkv_b, self.proj_b, self.fc_b, self.out_b = (biases(i) for i in range(4))
            self.layers = (
                *(self.norms, self.eps, self.qkv_w, self.qkv_b, self.proj_w, self.proj_b),
                *(self.fc_w, self.fc_b, self.out_w, self.out_b),
            )
        self.versions = versions


def _decode_weights(model: Simulator) -> _DecodeWeights:
    """The model's :class:`_DecodeWeights`, built once and shared by its Contexts."""
    weights: _DecodeWeights | None = model.__dict__.get("_decode_weights")
    if weights is None or weights.model is not model:
        weights = _DecodeWeights(model)
        model.__dict__["_decode_weights"] = weights
    return weights


class Context:
    """One episode's history, decoded step by step through a KV cache.

    Push tokens in the order o, R, a, r. Pushes are lazy: tokens wait until a hidden
    state is needed (:meth:`hidden`, :meth:`push_return`, :meth:`evaluate_actions`)
    and then go through the transformer together, so one ``act`` costs one pass over
    about four tokens. A full cache keeps its newest ``min_history`` whole steps (default
    ``context_len // 2``) and is refilled from the stored embeddings, so every output equals
    the full forward pass over the window held. Run under ``torch.no_grad()`` in eval mode.

    ``label`` (a behaviour-policy label of the training data, with label conditioning) asks
    the simulator to continue the episode as that policy; None leaves it unknown.

    ``min_history`` trades speed for context: the cache then holds between ``min_history + 1``
    and ``context_len`` steps, refilling every ``context_len - min_history`` steps with a pass
    over the ``min_history`` kept. ``context_len - 1`` acts on the last ``context_len`` steps at
    every step, as the reference Decision Transformer does, at the cost of a pass over the whole
    window per step. Decisions can depend on it: see :class:`~simagents.agents.SimulatorAgent`.

    At batch 1 an ``act`` is bound by per-call overhead and by reading the weights (2.4 MB at
    the reference size, hidden 128 and 3 layers: more than a core's L2, so each pass also evicts
    the interpreter's data and every Python or numpy step after it runs several times slower
    than warm). So the pass is one compiled call (:func:`simagents.kernels.decode_tokens`)
    rather than some 35 torch calls, and passes are few: a planner whose candidates are known
    before the step (Discrete actions, a grid) runs them in the same pass as the step's own
    tokens (:meth:`queue_return`, :meth:`evaluate_actions`). Tokens wait in three preallocated
    arrays (per token its four table rows, its continuous features, content added as it is),
    which the compiled call embeds, runs and clears, computing the policy head at the last
    token as it goes (:meth:`policy_params`); the keys and values of each layer are written in
    place into one preallocated buffer; candidates of :meth:`evaluate_actions` sit in scratch
    slots after the history, each seeing the history and itself; the last layer runs its
    query, attention and MLP only for the rows read, and the final layer norm only on them.
    """

    def __init__(self, model: Simulator, label: str | None = None, min_history: int | None = None) -> None:
        self.model = model
        self.weights = _decode_weights(model)
        K = model.cfg.context_len
        self.min_history = K // 2 if min_history is None else min_history
        if not 0 <= self.min_history < K:
            raise ValueError(
                f"min_history must be a whole number of steps from 0 to context_len - 1 = {K - 1} "
                f"(the steps a full context keeps), got {min_history}"
            )
        index = model.label_index(label)  # SimagentsError for a label not in the data
        self.label = torch.tensor([index]) if label is not None else None  # (1,) or None: unknown
        # the table row each token adds for its label: the zero row without label conditioning
        self.label_row = (
            self.weights.label_row + index if model.label_embed is not None else self.weights.zero_row
        )
        cfg = model.cfg
        self.max_tokens = TOKENS_PER_STEP * cfg.context_len
        self.n_head = cfg.n_head
        self.length = 0  # tokens in the cache
        # the embeddings of the cached tokens, for refills
        self.embeddings = np.zeros((self.max_tokens, cfg.n_embd), np.float32)
        self.kv = np.zeros((cfg.n_layer, 0, 2 * cfg.n_embd), np.float32)
        self._allocate(self.max_tokens + 1)
        self.pending = 0  # tokens pushed and not yet run
        self.token_rows = np.zeros((0, 4), np.intp)  # (slots,4) per token: its 4 table rows
        self.token_features = np.zeros((0, self.weights.n_features), np.float32)  # (slots,F), zero if none
        self.token_direct = np.zeros((0, cfg.n_embd), np.float32)  # (slots,d) content added as it is
        self._reserve(2 * TOKENS_PER_STEP)
        self.last_hidden: Tensor | None = None
        self.last_policy = np.zeros(self.weights.policy_bias.shape, np.float32)  # the policy head there
        self.timestep = -1
        self.last_observation: np.ndarray | None = None  # (1,obs_dim) Box: o_t, where a rollout starts

    def _allocate(self, slots: int) -> None:
        """(Re)allocate the key-value buffer (L,slots,2C) for ``slots`` tokens, keeping its content:
        per layer and slot the keys, then the values, heads as in qkv."""
        cfg = self.model.cfg
        kv = np.zeros((cfg.n_layer, slots, 2 * cfg.n_embd), np.float32)
        kv[:, : self.kv.shape[1]] = self.kv
        self.kv = kv

    def _reserve(self, slots: int) -> None:
        """Room for ``slots`` tokens (pending and candidates) in the token arrays, keeping their content."""
        have = self.token_rows.shape[0]
        if slots <= have:
            return
        grow = max(slots, 2 * have) - have
        self.token_rows = np.concatenate([self.token_rows, np.zeros((grow, 4), np.intp)])
        self.token_features = np.concatenate(
            [self.token_features, np.zeros((grow, self.token_features.shape[1]), np.float32)]
        )
        self.token_direct = np.concatenate(
            [self.token_direct, np.zeros((grow, self.token_direct.shape[1]), np.float32)]
        )

    def _run(self, x: np.ndarray) -> Tensor:
        """Embeddings (n,d) at slots length.. (a refill) -> the last row's final state (1,d)."""
        n = x.shape[0]
        if self.length + n > self.kv.shape[1]:
            self._allocate(self.length + n)
        w = self.weights
        h = decode_layers(x, self.length, n, n - 1, self.kv, *w.layers, self.n_head)
        layer_norm(h, w.final_norm[0], w.final_norm[1], w.final_eps, h)
        w.policy_head(h[:1], self.last_policy)
        return torch.from_numpy(h)

    def _push(self, content_row: int, extra_row: int | None = None) -> int:
        """A new pending token with these table rows; returns its slot, for the caller to write its
        continuous features (``token_features``) or direct content (``token_direct``)."""
        w = self.weights
        k = self.pending
        self._reserve(k + 1)
        extra = w.zero_row if extra_row is None else extra_row
        self.token_rows[k] = (self._time_row(), self.label_row, content_row, extra)
        self.pending = k + 1
        return k

    def _time_row(self) -> int:
        """The table row of the current timestep's embedding (the last one past max_timestep)."""
        return min(max(self.timestep, 0), self.weights.time_rows - 1)

    def hidden(self) -> Tensor:
        """Run the pending tokens; the hidden state at the last token pushed (1,d)."""
        if not self.pending:
            if self.last_hidden is None:
                raise RuntimeError("nothing pushed yet")
            return self.last_hidden
        self._flush()
        assert self.last_hidden is not None
        return self.last_hidden

    def policy_params(self) -> np.ndarray:
        """Run the pending tokens; the policy head's output at the last token pushed (the return
        token, where the policy reads): (act_dim,) logits or (2*act_dim,) Gaussian parameters, as
        :meth:`Simulator.action_params_array` of :meth:`hidden`, computed in the pass. The array is
        the Context's own, overwritten by the next pass: copy it to keep it."""
        self.hidden()
        return self.last_policy

    def _flush(self, candidates: int = 0) -> np.ndarray | None:
        """Run the pending tokens into the cache, then the ``candidates`` tokens written after them
        without keeping those; sets ``last_hidden``. Returns the candidates' final states (m,d),
        None without candidates.

        While the cache has room, pending tokens and candidates go through the transformer in
        one pass (one read of every weight, which at batch 1 is most of the time); a full cache
        is refilled first and the candidates run after. The candidates' rows are scratch: each
        sees the history, the rows before them and itself, and nothing keeps them. Only the last
        committed row's state is ever read, so the last layer computes its query, attention and
        MLP for that row and the candidates alone."""
        w = self.weights
        w.refresh()
        first, pending = 0, self.pending
        end = pending + candidates
        self.pending = 0
        if pending and self.length + pending > self.max_tokens:
            tokens = (self.token_rows[:pending], self.token_features[:pending], self.token_direct[:pending])
            self._refill(embed_tokens(*tokens, w.table, w.features_weight))
            self.token_features[:pending] = 0
            self.token_direct[:pending] = 0
            first, pending = pending, 0
        if end == first:
            return None
        if self.length + end - first > self.kv.shape[1]:
            self._allocate(self.length + end - first)
        h = decode_tokens(  # clears the features and content of tokens first..end for reuse
            self.token_rows,
            self.token_features,
            self.token_direct,
            first,
            end,
            w.table,
            w.features_weight,
            self.embeddings,
            self.length,
            pending,
            self.kv,
            w.layers,
            self.n_head,
            w.final_norm,
            w.final_eps,
            w.policy_weight,
            w.policy_bias,
            self.last_policy,
        )
        self.length += pending
        if pending:
            self.last_hidden, h = torch.from_numpy(h[:1]), h[1:]
        return h if candidates else None

    def _refill(self, new: np.ndarray) -> None:
        """The cache is full: keep the newest ``min_history`` whole steps (and the step begun) with
        ``new``, rebuild it from them."""
        tokens = np.concatenate([self.embeddings[: self.length], new])
        partial = tokens.shape[0] % TOKENS_PER_STEP
        kept = tokens[max(tokens.shape[0] - partial - TOKENS_PER_STEP * self.min_history, 0) :]
        if kept.shape[0] > self.embeddings.shape[0]:
            self.embeddings = np.zeros_like(kept)
        self.embeddings[: kept.shape[0]] = kept
        self.length = 0
        self.last_hidden = self._run(kept)
        self.length = kept.shape[0]

    @property
    def held_steps(self) -> int:
        """Timesteps (whole or begun) whose tokens the cache holds after the pending ones run."""
        self.hidden()
        return -(-self.length // TOKENS_PER_STEP)

    def push_observation(self, obs: Tensor | np.ndarray | int) -> None:
        """Start a new timestep with its observation: an index (Discrete), or floats of the
        observation's shape or flattened (Box), as a tensor, an array or the env gives it."""
        self.timestep += 1
        model, w = self.model, self.weights
        if model.obs_discrete:
            self._push(w.obs_row + int(obs) - model.obs_start)
            return
        values = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        self.last_observation = values
        k = self._push(w.obs_row)
        if model.obs_encoder is None:  # as normalize_observation
            scaled_into(values, w.obs_mean, w.obs_std, 1.0, 0.0, 10.0, self.token_features[k:], w.obs_col)
        else:  # the encoder's features are many (1,344 on Connect Four): one torch product, not numpy's
            normalised = torch.from_numpy(((values[0] - w.obs_mean) / w.obs_std).clip(-10, 10))
            features = model.observation_features(normalised)
            self.token_direct[k] = F.linear(features, model.obs_embed.weight).detach().numpy()

    def push_return(self, target: float | None) -> Tensor:
        """Return-to-go token (None: unknown); returns the hidden state at R_t (1,d), the policy's input."""
        self.queue_return(target)
        return self.hidden()

    def queue_return(self, target: float | None) -> None:
        """:meth:`push_return` without running the transformer: for a planner whose candidates do not
        depend on the policy (Discrete actions, a fixed grid), :meth:`evaluate_actions` then runs
        the step's tokens and the candidates in one pass."""
        w = self.weights
        if target is None:
            self._push(w.unknown_row)
        else:
            k = self._push(w.return_row)
            self.token_features[k, w.return_col] = (np.float32(target) - w.return_mid) / w.return_half

    def _write_actions(self, actions: Tensor, intervention: bool) -> int:
        """Actions (n,) or (n,act_dim) -> tokens written after the pending ones; returns n."""
        model, w = self.model, self.weights
        n, at = actions.shape[0], self.pending
        self._reserve(at + n)
        rows = self.token_rows[at : at + n]
        rows[:, 0] = self._time_row()
        rows[:, 1] = self.label_row
        rows[:, 3] = w.flag_row + int(intervention)
        if model.act_discrete:
            rows[:, 2] = actions.reshape(-1).numpy() + (w.act_row - model.act_start)
        else:
            rows[:, 2] = w.act_row
            values = actions.detach().numpy().reshape(n, -1)  # as push_action's
            scaled_into(values, w.act_low, w.act_span, 2.0, -1.0, np.inf, self.token_features[at:], w.act_col)
        return n

    def push_action(self, action: Tensor, intervention: bool) -> None:
        """The action taken, as evidence (False) or as an intervention (True)."""
        model, w = self.model, self.weights
        flag = w.flag_row + int(intervention)
        if model.act_discrete:
            self._push(w.act_row - model.act_start + int(action), extra_row=flag)
        else:
            values = (action.detach() if action.requires_grad else action).numpy().reshape(1, -1)
            k = self._push(w.act_row, extra_row=flag)  # as normalize_action: 2 (a - low) / span - 1
            scaled_into(values, w.act_low, w.act_span, 2.0, -1.0, np.inf, self.token_features[k:], w.act_col)

    def push_reward(self, reward: float) -> None:
        """The reward received for the action."""
        w = self.weights
        k = self._push(w.reward_row)
        self.token_features[k, w.reward_col] = np.float32(reward) / np.float32(self.model.stats.reward_scale)

    def evaluate_actions(self, candidates: Tensor, intervention: bool) -> ActionEvaluation:
        """Score N candidate actions (N,) or (N,act_dim) as one batch on the shared cached prefix.

        Call after push_return or queue_return; nothing is stored. Tokens still pending (as
        after queue_return) run in the same pass as the candidates."""
        if candidates.shape[0] == 0:
            raise ValueError("evaluate_actions needs at least one candidate action")
        h = self._flush(self._write_actions(candidates, intervention))  # (N,d)
        assert h is not None  # one row per candidate, and there is one
        w = self.weights
        # compiled: after the pass each numpy or torch call costs several times its warm cost
        heads = evaluation_heads(
            h, w.evaluation_weight, w.evaluation_bias, w.return_bins, self.model.stats.reward_scale
        )
        return ActionEvaluation(*map(torch.from_numpy, heads))  # as expected_return and predicted_reward

    def fork(self, n: int, extra_tokens: int) -> Rollout:
        """n imagined continuations of this history, sharing its cached prefix; the Context is unchanged.

        The rollout's cache holds the prefix plus ``extra_tokens`` and is never refilled, so a
        rollout may look past the ``context_len`` window the model was trained on (by at most
        ``extra_tokens``). Rollouts are scratch for planning; the Context keeps its own window."""
        self.hidden()
        length = self.length
        cache = KVCache(self.model.cfg, batch=n, max_tokens=length + extra_tokens)
        cfg = self.model.cfg
        C, H = cfg.n_embd, cfg.n_head
        kv = torch.from_numpy(self.kv[:, :length])  # (L,length,2C)
        for layer in range(cfg.n_layer):  # (length,C) -> (H,length,hd), batch n
            cache.k[layer, :, :, :length] = kv[layer, :, :C].view(length, H, C // H).transpose(0, 1)
            cache.v[layer, :, :, :length] = kv[layer, :, C:].view(length, H, C // H).transpose(0, 1)
        cache.length = length
        observations = None
        if self.last_observation is not None:
            observations = torch.from_numpy(self.last_observation).expand(n, -1).clone()
        return Rollout(self.model, cache, self.timestep, self.label, observations)


class Rollout:
    """A batch of B imagined continuations of one history (made by :meth:`Context.fork`).

    Row i is one continuation. Every push runs its tokens for all B rows in one committed
    transformer pass and returns their hidden states; :meth:`select` keeps, drops or
    duplicates rows (a beam search's bookkeeping). Timesteps go on from the forked
    Context's: actions and rewards at the current one, an observation starts the next.
    """

    def __init__(
        self,
        model: Simulator,
        cache: KVCache,
        timestep: int,
        label: Tensor | None = None,
        observations: Tensor | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.timestep = timestep
        self.label = label  # (1,) the forked Context's label index, shared by every row; None: unknown
        self.observations = observations  # (B,obs_dim) Box: each row's o_t in env units, for the world model

    @property
    def batch(self) -> int:
        return self.cache.k.shape[1]

    def _t(self) -> Tensor:
        return torch.full((self.batch, 1), self.timestep)

    def _labels(self) -> Tensor | None:
        return None if self.label is None else self.label.expand(self.batch)

    def _run(self, tokens: Tensor) -> Tensor:
        """Embeddings (B,n,d) -> hidden states (B,n,d), stored in the cache."""
        if self.cache.length + tokens.shape[1] > self.cache.k.shape[3]:
            raise RuntimeError("rollout past the tokens its fork allocated")
        return self.model.transform(tokens, self.cache)

    def select(self, rows: Tensor) -> None:
        """Keep rows (B',) long indices into the current batch, in that order; repeats duplicate."""
        self.cache.k = self.cache.k[:, rows]
        self.cache.v = self.cache.v[:, rows]
        if self.observations is not None:
            self.observations = self.observations[rows]

    def push_actions(self, actions: Tensor, intervention: bool) -> Tensor:
        """Actions (B,) long or (B,act_dim) -> hidden at a_t (B,d): reward and action-value heads."""
        flags = torch.full((self.batch, 1), intervention)
        tokens = self.model.embed_action(actions.unsqueeze(1), flags, self._t(), self._labels())
        return self._run(tokens)[:, -1]

    def push_rewards(self, rewards: Tensor) -> Tensor:
        """Rewards (B,) in env units -> hidden at r_t (B,d): next-observation and termination heads."""
        return self._run(self.model.embed_reward(rewards.unsqueeze(1), self._t(), self._labels()))[:, -1]

    def push_observations(self, obs: Tensor, unknown_return: bool) -> Tensor:
        """Start the next timestep: observations (B,) long or (B,obs_dim) -> hidden at o (B,1,d), or at
        o and R (B,2,d) with the unknown-return token pushed too (value head at o, policy at R)."""
        self.timestep += 1
        t = self._t()
        if not self.model.obs_discrete:
            self.observations = obs
        tokens = self.model.embed_observation(obs.unsqueeze(1), t, self._labels())  # (B,1,d)
        if unknown_return:
            unknown = self.model.embed_return(
                torch.zeros(self.batch, 1), torch.zeros(self.batch, 1, dtype=torch.bool), t, self._labels()
            )
            tokens = torch.cat([tokens, unknown], dim=1)
        return self._run(tokens)

    def predicted_observation(self, h_reward: Tensor) -> Tensor:
        """Hidden at r_t (B,d) -> the world model's next observation in env form: (B,) long (argmax)
        or (B,obs_dim) floats (the de-normalised mean)."""
        model = self.model
        if model.obs_discrete:
            logits: Tensor = model.next_obs_head(h_reward)
            return logits.argmax(-1) + model.obs_start
        if self.observations is None:
            raise RuntimeError("the rollout's fork had no observation pushed: nothing to predict from")
        out = model.next_observation_normalized(h_reward, model.normalize_observation(self.observations))
        return out * model.obs_std + model.obs_mean

    def terminated(self, h_reward: Tensor) -> Tensor:
        """Hidden at r_t (B,d) -> (B,) bool: the termination head says P(done) > 0.5."""
        logit: Tensor = self.model.termination_head(h_reward)
        return torch.sigmoid(logit.squeeze(-1)) > 0.5


def token_size(space: gym.Space[Any]) -> tuple[bool, int]:
    """(is_discrete, size): number of values for Discrete, flattened length for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return True, int(space.n)
    if isinstance(space, gym.spaces.Box):
        return False, int(np.prod(space.shape))
    raise ValueError(f"unsupported space {space}: use Discrete or Box")


def as_model_input(value: object, space: gym.Space[Any]) -> Tensor:
    """An env observation or action -> what the model embeds: a long scalar or a flat float vector."""
    if isinstance(space, gym.spaces.Discrete):
        return torch.tensor(int(np.asarray(value)), dtype=torch.long)
    return torch.as_tensor(np.asarray(value, dtype=np.float32).reshape(-1))


def resolve_checkpoint(path: Path) -> Path:
    """A run folder -> its newest checkpoint folder; a checkpoint folder -> itself."""
    if not path.exists():
        raise SimagentsError(
            f"{path}: no such run or checkpoint folder; pass the --out folder of `simagents train`"
        )
    if (path / WEIGHTS_FILE).is_file():
        return path
    latest = path / "checkpoints" / LATEST_FILE
    if latest.is_file():
        pointer = read_json(latest, "latest-checkpoint pointer")
        name = pointer.get("checkpoint") if isinstance(pointer, dict) else None
        if not isinstance(name, str) or not (path / "checkpoints" / name).is_dir():
            raise SimagentsError(
                f"{latest}: points to a checkpoint that does not exist; the run folder is damaged"
            )
        return path / "checkpoints" / name
    inside = _simulators_below(path)
    if inside:
        more = f" (and {len(inside) - 3} more)" if len(inside) > 3 else ""
        raise SimagentsError(
            f"{path}: holds no checkpoint itself; the simulators below it: {', '.join(map(str, inside[:3]))}"
            f"{more}; pass one of them"
        )
    raise SimagentsError(
        f"{path}: holds no checkpoint (no {WEIGHTS_FILE}, no checkpoints/{LATEST_FILE}); "
        "train first with `simagents train --out` this folder"
    )


def _simulators_below(folder: Path, depth: int = 4) -> list[Path]:
    """Run or simulator folders up to ``depth`` levels below ``folder`` (a testbed's or a study's
    folder holds them), without reading the datasets' folders."""
    if depth == 0 or not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in ("data", "checkpoints")):
        if (sub / WEIGHTS_FILE).is_file() or (sub / "checkpoints" / LATEST_FILE).is_file():
            found.append(sub)
        else:
            found += _simulators_below(sub, depth - 1)
    return found
