"""Training a simulator on one or more datasets: AdamW, warmup + cosine, clipping, exact resume.

Every step draws its batch and its dropout from generators seeded by
``(seed, step)``, so a run resumed from a checkpoint replays the same batches
and ends with weights bit-identical to an uninterrupted run.

Run folder::

    RUN/config.json          resolved TrainConfig
    RUN/command.txt          the command that made it
    RUN/metrics.jsonl        one JSON object per logged step: train/..., eval/...
    RUN/data_cache/          the datasets as memory-mapped arrays (simagents.data.flat); rebuilt if deleted
    RUN/checkpoints/latest.json
    RUN/checkpoints/step_00001000/{model.safetensors, config.json, statistics.json,
                                   optimizer.safetensors, trainer.json}
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import safetensors.torch
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.attention import SDPBackend, sdpa_kernel

from simagents.data.episodes import Episode
from simagents.data.flat import FlatEpisodes, masked_chunks, prepare_cache
from simagents.data.minari_io import Dataset, load_dataset
from simagents.data.windows import WindowSampler
from simagents.errors import SimagentsError
from simagents.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    from_dict,
    hold_lock,
    read_json,
    to_dict,
    write_run_record,
)
from simagents.model import (
    LATEST_FILE,
    Simulator,
    SimulatorConfig,
    Statistics,
    resolve_checkpoint,
)
from simagents.threads import threads

OPTIMIZER_FILE = "optimizer.safetensors"
CACHE_DIR = "data_cache"
TRAINER_FILE = "trainer.json"
PRECISIONS = ("fp32", "bf16")
"""Values of :attr:`TrainConfig.precision`."""


def check_precision(precision: str, where: str) -> None:
    """Raise a SimagentsError naming ``where`` (the config field) unless ``precision`` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise SimagentsError(f"--precision {precision}: must be one of {', '.join(PRECISIONS)} ({where})")


@dataclass(frozen=True)
class LossWeights:
    """How much each prediction counts in the training loss."""

    action: float = 4.0
    """Policy: the next action (evidence tokens only). Weighted as the four heads that predict
    what follows (value, action value, reward, observation) together: the action-value head reads
    features the policy learns from the actions, so with the policy leading it learns what an
    action adds to the return several times sooner (benchmarks/README.md, *Quality*)."""
    value: float = 1.0
    """Return distribution before the action."""
    action_value: float = 1.0
    """Return distribution after the action (return-dropped windows only)."""
    reward: float = 1.0
    """Immediate reward after the action."""
    observation: float = 1.0
    """Next observation (the world model)."""
    termination: float = 0.1
    """Whether the episode terminates after the step."""
    aux_targets: float = 1.0
    """Auxiliary targets (``Episode.aux_targets``), where the data carry them; read by no agent,
    they shape the features the policy shares (see :attr:`~simagents.model.SimulatorConfig.aux_targets`)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Saved as RUN/config.json.

    Example (``simagents train --data data/cartpole --out runs/cartpole --steps 20``):

    >>> from pathlib import Path
    >>> from simagents import SimulatorConfig, TrainConfig
    >>> config = TrainConfig(
    ...     data=("data/cartpole",), out=Path("runs/cartpole"), steps=20,
    ...     model=SimulatorConfig(n_embd=32, n_layer=1),
    ... )
    """

    data: tuple[str, ...]
    """Minari datasets (folder paths or local dataset ids); several are mixed, e.g. evidential and
    interventional data for counterfactual teaching. Their spaces must match."""
    out: Path
    """Run folder to write (config, metrics, checkpoints)."""
    model: SimulatorConfig = field(default_factory=SimulatorConfig)
    """Architecture of the simulator."""
    loss: LossWeights = field(default_factory=LossWeights)
    """Weight of each head's loss."""
    steps: int = 1000
    """Optimizer steps (the default trains a CartPole simulator in about 3 minutes on 2 cores)."""
    batch_size: int = 64
    """Windows per step."""
    length_grouping: int = 1
    """Draw this many steps' windows at once and batch them by length, longest first (each step's
    windows are then padded only to its own longest): for data whose episodes are shorter than
    the context, such as games, where most of a random window is padding. 1 draws each step's
    windows on their own. Not for data with paired blocks (a block must share its batch)."""
    lr: float = 6e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, norms or embeddings)."""
    warmup_steps: int | None = None
    """Linear warmup before the cosine decay; None: a tenth of ``steps``, at most 100 (a fixed 100
    would leave a 125-step run 25 steps at its learning rate)."""
    min_lr_ratio: float = 0.1
    """The cosine decays to this fraction of lr."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    return_dropout: float = 0.5
    """Probability that a window's return tokens are all replaced by the unknown token. Such windows
    train the value and action-value heads and the unconditioned (imitation) policy."""
    label_dropout: float = 0.5
    """With ``model.condition_on_label``: probability that a window whose return is unknown has its
    behaviour-policy label replaced by the unknown label (windows showing their return always
    hide it). Such windows train the simulator to infer who is playing from the history
    (unconditioned imitation, the planners); the others to play as the named policy."""
    first_step_share: float = 0.0
    """Share of windows that begin at their episode's first step; the others begin at a uniform
    step. A window from the first step shows the whole history up to each of its steps, as an
    agent acting from an episode's start holds it: for inferring from the whole history who is
    acting (unconditioned imitation of a population of players)."""
    validation_fraction: float = 0.1
    """Share of episodes held out for eval/... metrics."""
    eval_every: int = 250
    """Steps between held-out evaluations (and checkpoints)."""
    log_every: int = 50
    """Steps between train/... metric lines."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    seed: int = 0
    """Seeds the split, the model's initial weights, every batch and every dropout mask."""
    threads: int = 0
    """torch and numpy's BLAS threads while training (:mod:`simagents.threads`), restored after;
    0 leaves both as they are."""
    precision: str = "fp32"
    """Arithmetic of each step's forward and backward pass: ``fp32``, or ``bf16`` (``torch.autocast``
    to bfloat16: matrix products and attention in bfloat16; weights, AdamW's state, the losses and
    the saved weights stay fp32). bf16 trades about three significant digits in those products
    for speed on CPUs with bfloat16 matrix units (Intel AMX, AVX512-BF16): on a 2-core Xeon with
    AMX, one thread, 1.61 times as fast on the benchmark's Decision Transformer step and 1.65 on
    100 steps of a default CartPole simulator (every head), to the same loss. Not measured on
    CPUs without such units, where there is no bfloat16 hardware to gain from: time a few
    steps both ways first. Acting is fp32 either way."""

    def check(self) -> None:
        """Raise a SimagentsError naming the option if a value cannot make a run (tyro checks only types)."""
        rules = {
            "at least 1": (
                ("steps", "batch_size", "length_grouping", "eval_every", "log_every", "keep_checkpoints"),
                1,
                math.inf,
            ),
            "0 or more": (
                ("warmup_steps", "seed", "threads", "lr", "weight_decay", "grad_clip"),
                0,
                math.inf,
            ),
            "in [0, 1]": (
                (
                    "min_lr_ratio",
                    "return_dropout",
                    "label_dropout",
                    "first_step_share",
                    "validation_fraction",
                ),
                0,
                1,
            ),
        }
        for rule, (names, low, high) in rules.items():
            for name in names:
                value = getattr(self, name)
                if value is not None and not low <= value <= high:  # NaN fails this too
                    raise SimagentsError(
                        f"--{name.replace('_', '-')} {value}: must be {rule} (train config field {name})"
                    )
        check_precision(self.precision, "train config field precision")
        weights = to_dict(self.loss)
        for name, weight in weights.items():
            if not weight >= 0:
                raise SimagentsError(
                    f"--loss.{name.replace('_', '-')} {weight}: must be 0 or more (train config field loss.{name})"
                )
        if not any(weight for name, weight in weights.items() if name != "aux_targets"):
            raise SimagentsError(
                "every --loss.* weight is 0 (auxiliary targets alone train no head an agent reads): nothing "
                "would train; give --loss.action 1, say"
            )


def fit_statistics(
    flat: FlatEpisodes,
    episodes: np.ndarray,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
) -> Statistics:
    """Normalisation from the training ``episodes`` (indices into ``flat``); degenerate features get
    safe scales. Read a chunk at a time, so memory-mapped data larger than memory never sits in RAM."""
    obs_mean: list[float] = []
    obs_std: list[float] = []
    act_low: list[float] = []
    act_high: list[float] = []
    steps = flat.rows(episodes)
    if not isinstance(observation_space, gym.spaces.Discrete):
        mean, std = _mean_std(masked_chunks(flat.observations, flat.rows(episodes, observations=True)))
        obs_mean = mean.tolist()
        obs_std = np.maximum(std, 1e-3).tolist()
    if isinstance(action_space, gym.spaces.Box):  # load_dataset admits only Discrete and Box
        chunks = list(
            (part.min(0), part.max(0)) for part in masked_chunks(flat.actions, steps)
        )  # per-chunk extremes: small
        low = np.asarray(action_space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_space.high, dtype=np.float64).reshape(-1)
        # Unbounded action spaces take their range from the data.
        low = np.where(np.isfinite(low), low, np.min([c[0] for c in chunks], axis=0))
        high = np.where(np.isfinite(high), high, np.max([c[1] for c in chunks], axis=0))
        high = np.where(high > low, high, low + 1.0)
        act_low, act_high = low.tolist(), high.tolist()
    lo, hi, scale = math.inf, -math.inf, 0.0
    for part in masked_chunks(flat.returns_to_go, steps):
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    for part in masked_chunks(flat.rewards, steps):
        scale = max(scale, float(np.abs(part).max()))
    margin = max(0.05 * (hi - lo), 1e-3)
    counts = np.bincount(flat.policy_ids[episodes], minlength=len(flat.policies))  # episodes per policy
    shares: dict[str, float] = {}
    for name, count in zip(flat.policies, counts, strict=True):
        if name and count:
            shares[name] = shares.get(name, 0.0) + count / len(episodes)
    labels = sorted(shares)
    return Statistics(
        obs_mean=obs_mean,
        obs_std=obs_std,
        act_low=act_low,
        act_high=act_high,
        return_low=lo - margin,
        return_high=hi + margin,
        reward_scale=scale if scale > 0 else 1.0,
        episode_return_percentiles=np.percentile(
            flat.episode_returns[episodes], np.arange(0, 101, 5)
        ).tolist(),
        labels=labels,
        label_shares=[shares[label] for label in labels],
    )


def _mean_std(chunks: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) standard deviation over row chunks, in float64, merging the
    chunks' moments (Chan et al.) so that no chunk's rounding swamps another's."""
    n, mean, m2 = 0, np.zeros(()), np.zeros(())
    for part in chunks:
        x = part.reshape(len(part), -1).astype(np.float64)
        k, part_mean = len(x), x.mean(0)
        part_m2 = ((x - part_mean) ** 2).sum(0)
        delta = part_mean - mean
        total = n + k
        mean = mean + delta * (k / total)
        m2 = m2 + part_m2 + delta**2 * (n * k / total)
        n = total
    return mean, np.sqrt(m2 / max(n, 1))


def load_training_data(refs: tuple[str, ...]) -> Dataset:
    """Load and concatenate datasets; their spaces must agree."""
    if not refs:
        raise SimagentsError(
            "train: no dataset given; pass --data PATH (a folder written by `simagents collect`)"
        )
    datasets = [load_dataset(ref) for ref in refs]
    first = datasets[0]
    for ref, other in zip(refs[1:], datasets[1:], strict=True):
        if other.observation_space != first.observation_space or other.action_space != first.action_space:
            raise SimagentsError(
                f"{ref}: spaces {other.observation_space} / {other.action_space} differ from {refs[0]}'s "
                f"{first.observation_space} / {first.action_space}; mix only datasets of the same env"
            )
    episodes: list[Episode] = []
    for d in datasets:
        # Block ids are per dataset: shift them so that two datasets' blocks stay apart.
        offset = 1 + max((e.block for e in episodes), default=-1)
        episodes += [e if e.block < 0 else replace(e, block=e.block + offset) for e in d.episodes]
    return replace(first, episodes=episodes)


def training_data(cfg: TrainConfig, parallel: DataParallel) -> tuple[Dataset, FlatEpisodes]:
    """The training datasets, memory-mapped from RUN/data_cache (converted from their HDF5 on the
    first run, reused while they are unchanged). Under torchrun rank 0 converts, the others wait."""
    folder = cfg.out / CACHE_DIR
    if parallel.world == 1:
        return prepare_cache(cfg.data, folder)
    import torch.distributed as dist

    if parallel.writer:
        try:
            return prepare_cache(cfg.data, folder)
        finally:
            dist.barrier()
    dist.barrier()
    return prepare_cache(cfg.data, folder, build=False)


def split_episodes(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episode indices into (train, validation); validation may be empty."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = round(n * fraction) if n >= 5 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@contextmanager
def step_arithmetic(precision: str) -> Iterator[None]:
    """The context of a training step's forward pass (the backward follows it) for ``precision``,
    one of :data:`PRECISIONS` (:attr:`TrainConfig.precision`)."""
    if precision == "fp32":
        yield
        return
    # Plain matmul-softmax-matmul attention: at a window's few dozen tokens the CPU's fused (flash)
    # attention runs its bfloat16 backward slower than the matmuls do on bfloat16 units.
    with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.MATH):
        yield


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Warmup then cosine to min_lr_ratio * lr; a pure function of the step (nothing to resume).
    The warmup is ``cfg.warmup_steps``, or by default a tenth of the steps, at most 100."""
    warmup = min(100, cfg.steps // 10) if cfg.warmup_steps is None else cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(cfg.steps - warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: Simulator, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def to_batch(windows: dict[str, np.ndarray], return_known: np.ndarray) -> dict[str, torch.Tensor]:
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    batch["return_known"] = torch.from_numpy(return_known)
    return batch


def training_batch(sampler: WindowSampler, cfg: TrainConfig, step: int) -> dict[str, torch.Tensor]:
    """The batch of ``step``: a pure function of (seed, step)."""
    group = cfg.length_grouping
    if group == 1:
        rng = np.random.default_rng([cfg.seed, step])
        windows = sampler.sample(rng, cfg.batch_size, cfg.first_step_share)
        # One dropout coin per draw: a block's episodes hide or show their returns together, else the
        # action-value head would see one action of a pair without the other half the time.
        coin = rng.random(cfg.batch_size)
        return to_batch(trim_padding(windows), coin[windows["draw"]] >= cfg.return_dropout)
    if sampler.units is not None:
        raise SimagentsError(
            "--length-grouping: the data has paired blocks, whose windows must share a batch; "
            "use --length-grouping 1"
        )
    # The group's windows are drawn alike at each of its steps; only this step's are gathered.
    rng = np.random.default_rng([cfg.seed, step // group, group])
    episode, start = sampler.draw(rng, cfg.batch_size * group, cfg.first_step_share)
    coin = rng.random(cfg.batch_size * group)
    length = np.minimum(sampler.context_len, sampler.lengths[episode] - start)
    longest_first = np.argsort(-length, kind="stable").reshape(group, cfg.batch_size)
    # The group's batches in a random order, so that no step is always the long windows'.
    chosen = longest_first[rng.permutation(group)[step % group]]
    windows = {**sampler.windows(episode[chosen], start[chosen]), "draw": np.arange(cfg.batch_size)}
    known = coin[chosen] >= cfg.return_dropout
    return to_batch(trim_padding(windows), known)


def trim_padding(windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the trailing steps that are padding in every window: causal attention means no valid
    token sees them and the losses mask them, so the batch computes the same for less."""
    mask = windows["mask"]
    used = np.flatnonzero(mask.any(axis=0))  # steps some window reaches
    length = int(used[-1]) + 1 if len(used) else 1
    if length == mask.shape[1]:
        return windows
    return {k: v[:, :length] if v.ndim >= 2 else v for k, v in windows.items()}  # (B,K,...) arrays


@torch.no_grad()
def evaluate_heldout(model: Simulator, sampler: WindowSampler, max_windows: int = 256) -> dict[str, float]:
    """Held-out figures on fixed windows: action NLL (unconditioned, vs the marginal action
    frequency for Discrete actions) and the value head's mean absolute error against true returns."""
    model.eval()
    n = len(sampler.lengths)
    # Tile each held-out episode with consecutive windows, deterministic and covering every step.
    episode = np.concatenate(
        [np.full(-(-int(L) // sampler.context_len), i) for i, L in enumerate(sampler.lengths)]
    )
    start = np.concatenate([np.arange(0, int(L), sampler.context_len) for L in sampler.lengths])
    episode, start = episode[:max_windows], start[:max_windows]
    batch = to_batch(sampler.windows(episode, start), np.zeros(len(episode), dtype=bool))
    h = model(batch)
    mask = batch["mask"] & ~batch["interventions"]
    nll = -model.action_log_prob(h["return"], batch["actions"])
    value = model.expected_return(model.value_head(h["obs"]))
    metrics = {
        "eval/action_nll": float(nll[mask].mean()),
        "eval/value_mae": float((value - batch["returns_to_go"])[batch["mask"]].abs().mean()),
        "eval/episodes": float(n),
    }
    if model.act_discrete:
        steps = sampler.flat.rows(sampler.episode_index)
        counts = np.zeros(model.act_dim, dtype=np.int64)
        for actions, flags in zip(
            masked_chunks(sampler.actions, steps), masked_chunks(sampler.interventions, steps), strict=True
        ):
            counts += np.bincount(actions[~flags] - model.act_start, minlength=model.act_dim)
        freq = (counts + 1) / (counts.sum() + model.act_dim)
        chosen = batch["actions"][mask].numpy() - model.act_start
        metrics["eval/marginal_action_nll"] = float(-np.log(freq[chosen]).mean())
    losses = model.loss(replace_known(batch, False))
    metrics.update({f"eval/loss_{k}": float(v) for k, v in losses.items()})
    model.train()
    return metrics


def window_labels(
    batch: dict[str, torch.Tensor], episode_labels: np.ndarray, cfg: TrainConfig, step: int
) -> torch.Tensor:
    """(B,) label index of each window's episode, the unknown label (0) with probability
    ``label_dropout``; drawn from its own generator seeded by (seed, step), so resume replays it.

    A window that shows its return always hides its label: no agent asks for a return and a
    player at once (``dt`` prompts a return with the label unknown, a labelled imitator plays
    with the return unknown), so such windows train the Decision Transformer as they would
    without labels, instead of a combination nobody uses."""
    rng = np.random.default_rng([cfg.seed, step, 1])
    labels = episode_labels[batch["episode"].numpy()]
    drop = (rng.random(len(labels)) < cfg.label_dropout) | batch["return_known"].numpy()
    return torch.from_numpy(np.where(drop, 0, labels))


def replace_known(batch: dict[str, torch.Tensor], known: bool) -> dict[str, torch.Tensor]:
    return {**batch, "return_known": torch.full_like(batch["return_known"], known)}


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as past any checkpoint."""
    try:
        step: float = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
    return step


class RunLog:
    """metrics.jsonl, appended line by line; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            # errors="replace": bytes garbled by a crash become a line that fails to parse, and is dropped.
            lines = path.read_text(errors="replace").splitlines()
            kept = [line for line in lines if _logged_step(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def save_checkpoint(
    run: Path, model: Simulator, optimizer: torch.optim.Optimizer, step: int, keep: int
) -> Path:
    """Write a complete checkpoint folder, then point latest.json at it: a crash leaves the last good one."""
    folder = run / "checkpoints"
    name = f"step_{step:08d}"
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    state = optimizer.state_dict()
    tensors = {
        f"{i}.{key}": value.contiguous()
        for i, param_state in state["state"].items()
        for key, value in param_state.items()
    }
    atomic_write_bytes(tmp / OPTIMIZER_FILE, safetensors.torch.save(tensors))
    atomic_write_json(tmp / TRAINER_FILE, {"step": step})
    shutil.rmtree(folder / name, ignore_errors=True)
    tmp.rename(folder / name)
    atomic_write_json(folder / LATEST_FILE, {"checkpoint": name, "step": step})
    for old in sorted(folder.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder / name


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    path = checkpoint / OPTIMIZER_FILE
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as exc:
        raise SimagentsError(
            f"{path}: cannot read the optimizer state ({exc}); the checkpoint is damaged"
        ) from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        # Moments must have their parameter's shape; a mismatch would only fail inside optimizer.step.
        fits = index.isdigit() and int(index) < len(params) and name != ""
        if not fits or (value.dim() > 0 and value.shape != params[int(index)].shape):
            raise SimagentsError(
                f"{path}: entry {key!r} does not fit the model in this checkpoint; the checkpoint is damaged, "
                "delete it (and point latest.json at the one before) or start a new --out"
            )
        per_param.setdefault(int(index), {})[name] = value
    # make_optimizer's AdamW keeps these per parameter; every parameter has them after one step.
    if any(sorted(per_param.get(i, {})) != ["exp_avg", "exp_avg_sq", "step"] for i in range(len(params))):
        raise SimagentsError(
            f"{path}: the optimizer state is incomplete (every parameter needs step, exp_avg and exp_avg_sq); "
            "the checkpoint is damaged, delete it (and point latest.json at the one before) or start a new --out"
        )
    state["state"] = per_param
    optimizer.load_state_dict(state)


@dataclass(frozen=True)
class TrainerState:
    """checkpoints/step_N/trainer.json: where training stopped."""

    step: int
    """Optimizer steps done."""

    def __post_init__(self) -> None:
        if self.step < 0:
            raise ValueError(f"step {self.step} is negative; the checkpoint is damaged")


@dataclass
class DataParallel:
    """This process's share of a step under ``torchrun`` (DistributedDataParallel, gloo); alone: 0 of 1.

    Every rank draws the same global batch from ``(seed, step)`` and trains on its slice. Each
    head's loss is a mean over that head's tokens in the whole global batch (weighted by token
    counts, not an average of per-rank means), so the gradients DDP averages equal one process's
    on the global batch, and the loss curve matches a single-process run. With dropout > 0 each
    rank draws masks for its own slice, so the curves then agree only in distribution.
    """

    rank: int = 0
    world: int = 1
    losses_of: torch.nn.Module | None = None  # DDP around the model's loss, from wrap()

    @property
    def writer(self) -> bool:
        """Only rank 0 writes the run folder."""
        return self.rank == 0

    def wrap(self, model: Simulator) -> None:
        if self.world > 1:
            self.losses_of = torch.nn.parallel.DistributedDataParallel(_LossOf(model))

    def losses(
        self, model: Simulator, batch: dict[str, torch.Tensor], heads: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        if self.losses_of is None:
            return model.loss(batch, heads)
        size = len(batch["mask"]) // self.world
        local = {k: v[self.rank * size : (self.rank + 1) * size] for k, v in batch.items()}
        everywhere, here = _loss_tokens(batch), _loss_tokens(local)
        return {
            head: value * (here[head] * self.world / max(everywhere[head], 1))
            for head, value in self.losses_of(local, heads).items()
        }

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """The global-batch value of per-rank losses from losses() (a collective: every rank calls it)."""
        if self.world == 1:
            return values
        stacked = torch.tensor(list(values.values()), dtype=torch.float64)
        torch.distributed.all_reduce(stacked)
        return dict(zip(values, (stacked / self.world).tolist(), strict=True))


class _LossOf(torch.nn.Module):
    # DDP syncs gradients only through its wrapped module's forward, so the loss must be that forward.
    def __init__(self, model: Simulator) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return self.model.loss(batch, heads)


def _loss_tokens(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Tokens each head's loss averages over; must mirror the masks in Simulator.loss (the DDP test checks)."""
    valid = batch["mask"]
    counts = dict.fromkeys(("value", "reward", "termination", "observation", "aux_targets"), int(valid.sum()))
    counts["action"] = int((valid & ~batch["interventions"]).sum())
    counts["action_value"] = int((valid & ~batch["return_known"].unsqueeze(1)).sum())
    return counts


@contextmanager
def data_parallel(cfg: TrainConfig) -> Iterator[DataParallel]:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DataParallel()
        return
    if cfg.batch_size % world:
        raise SimagentsError(
            f"--batch-size {cfg.batch_size} does not split over {world} processes; use a multiple of {world}"
        )
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")
    parallel = DataParallel(rank=dist.get_rank(), world=world)
    try:
        yield parallel
        dist.barrier()  # leave together: a rank that tears down while its peer still talks aborts
    finally:
        # DDP's reducer holds the group; freed after destroy_process_group (at interpreter exit) its gloo
        # threads abort the process ("terminate called without an active exception"), so free it first.
        parallel.losses_of = None
        gc.collect()
        if owned:
            dist.destroy_process_group()


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a simulator; returns the run folder. ``resume`` continues from its latest checkpoint.

    The run folder is locked while training: a second process writing to it is refused.
    Under ``torchrun`` every process trains its slice of each batch and rank 0 writes.

    Example (``data/cartpole`` as made by :func:`~simagents.data.collect.collect`'s example):

    >>> from pathlib import Path
    >>> from simagents import SimulatorConfig, TrainConfig, train
    >>> config = TrainConfig(
    ...     data=("data/cartpole",), out=Path("runs/cartpole"), steps=20,
    ...     model=SimulatorConfig(n_embd=32, n_layer=1),
    ... )
    >>> run = train(config, progress=False)
    >>> (run / "metrics.jsonl").is_file()
    True
    """
    cfg.check()
    check_run_folder(cfg.out)  # before any process of a parallel run can write there
    with data_parallel(cfg) as parallel:
        lock = hold_lock(cfg.out, "training run") if parallel.writer else nullcontext()
        with lock, threads(cfg.threads):
            return _train(cfg, resume, progress and parallel.writer, parallel)


RUN_FOLDER_ENTRIES = frozenset({"config.json", "command.txt", "metrics.jsonl", "checkpoints", CACHE_DIR})
"""What a training run writes in its folder (besides hidden lock and temporary files)."""


def check_run_folder(out: Path) -> None:
    """Refuse an ``out`` that holds anything a training run does not write itself (another
    command's results, a dataset): training would overwrite its config.json and command.txt."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SimagentsError(f"--out {out}: is a file, not a folder; choose another --out")
    foreign = sorted(
        p.name
        for p in (out.iterdir() if out.is_dir() else ())
        if p.name not in RUN_FOLDER_ENTRIES and not p.name.startswith(".")
    )
    if foreign:
        raise SimagentsError(
            f"--out {out}: holds {', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}, which "
            "no training run writes; training there would overwrite its config.json. Choose another --out"
        )


def _train(cfg: TrainConfig, resume: bool, progress: bool, parallel: DataParallel) -> Path:
    if not resume and (cfg.out / "checkpoints").exists():
        raise SimagentsError(
            f"{cfg.out}: already holds a training run; pass --resume to continue it or choose another --out"
        )
    dataset, flat = training_data(cfg, parallel)
    train_idx, val_idx = split_episodes(flat.n_episodes, cfg.validation_fraction, cfg.seed)
    model_cfg = cfg.model
    if model_cfg.max_timestep < 1:
        model_cfg = replace(model_cfg, max_timestep=int(flat.lengths.max()) + 1)
    aux_targets = flat.aux_targets.shape[1] if cfg.loss.aux_targets else 0
    if model_cfg.aux_targets not in (0, aux_targets):
        raise SimagentsError(
            f"{cfg.data[0]}: the model is set to {model_cfg.aux_targets} auxiliary targets but the data "
            f"carry {flat.aux_targets.shape[1]}; leave --model.aux-targets at 0 (fitted to the data)"
        )
    model_cfg = replace(model_cfg, aux_targets=aux_targets)
    cfg = replace(cfg, model=model_cfg)
    if resume:
        saved = from_dict(
            TrainConfig, read_json(cfg.out / "config.json", "run config"), str(cfg.out / "config.json")
        )
        if replace(saved, steps=cfg.steps) != cfg:
            raise SimagentsError(
                f"{cfg.out}/config.json: the run was made with other settings; resume with the same options "
                "(only --steps may grow) or start a new --out"
            )

    start_step = 0
    if resume and (cfg.out / "checkpoints" / LATEST_FILE).is_file():
        checkpoint = resolve_checkpoint(cfg.out)
        model = Simulator.load(checkpoint)
        optimizer = make_optimizer(model, cfg)
        load_optimizer_state(optimizer, checkpoint)
        trainer_file = checkpoint / TRAINER_FILE
        start_step = from_dict(TrainerState, read_json(trainer_file, "trainer state"), str(trainer_file)).step
    else:  # a fresh run, or one killed before its first checkpoint
        torch.manual_seed(cfg.seed)
        stats = fit_statistics(flat, train_idx, dataset.observation_space, dataset.action_space)
        try:
            model = Simulator(model_cfg, dataset.observation_space, dataset.action_space, stats)
        except ValueError as exc:  # an architecture that does not fit the data's spaces (obs_image)
            raise SimagentsError(f"{cfg.data[0]}: {exc}") from None
        optimizer = make_optimizer(model, cfg)
    log = None
    if parallel.writer:
        write_run_record(cfg.out, to_dict(cfg))
        log = RunLog(cfg.out / "metrics.jsonl", start_step)
    parallel.wrap(model)

    sampler = WindowSampler.from_arrays(flat, model_cfg.context_len, train_idx)
    # Each training episode's label index (0, unknown, for an unlabelled one); see Simulator.label_index.
    label_of = [model.label_index(p or None) if model_cfg.condition_on_label else 0 for p in flat.policies]
    episode_labels = np.array(label_of, dtype=np.int64)[flat.policy_ids[train_idx]]
    val_sampler = WindowSampler.from_arrays(flat, model_cfg.context_len, val_idx) if len(val_idx) else None
    weights = to_dict(cfg.loss)
    # A zero-weight head costs nothing; a simulator without auxiliary targets has no such head.
    heads = tuple(name for name, weight in weights.items() if weight and name in model.loss_heads)
    model.train()
    columns = [
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=start_step, loss=float("nan"), tps=0.0)
        tick = time.perf_counter()
        for step in range(start_step, cfg.steps):
            batch = training_batch(sampler, cfg, step)
            if model_cfg.condition_on_label:
                batch["label"] = window_labels(batch, episode_labels, cfg, step)
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks, replayable on resume
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            with step_arithmetic(cfg.precision):
                losses = parallel.losses(model, batch, heads)
            total = sum(weights[name] * value for name, value in losses.items())
            if not torch.isfinite(total):
                raise SimagentsError(
                    f"{cfg.out}: loss became {float(total)} at step {step}; lower --lr or check the data for "
                    "extreme values"
                )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            done = step + 1
            now = time.perf_counter()
            tps = 4 * int(batch["mask"].sum()) / max(now - tick, 1e-9)  # tokens of real steps
            tick = now
            bar.update(task, completed=done, loss=total.item(), tps=tps)
            evaluate_now = done % cfg.eval_every == 0 or done == cfg.steps
            if evaluate_now or done % cfg.log_every == 0:
                metrics = {f"train/loss_{k}": v.item() for k, v in losses.items()}
                metrics = parallel.average({**metrics, "train/loss": total.item()})
                metrics["train/lr"] = learning_rate(cfg, step)
                metrics["train/grad_norm"] = float(grad_norm)
                if evaluate_now and val_sampler is not None and parallel.writer:
                    metrics.update(evaluate_heldout(model, val_sampler))
                if log is not None:
                    log.write(done, metrics)
            if evaluate_now and parallel.writer:
                save_checkpoint(cfg.out, model, optimizer, done, cfg.keep_checkpoints)
    return cfg.out
