"""Training a simulator on one or more datasets: AdamW, warmup + cosine, clipping, exact resume.

Every step draws its batch and its dropout from generators seeded by
``(seed, step)``, so a run resumed from a checkpoint replays the same batches
and ends with weights bit-identical to an uninterrupted run.

Run folder::

    RUN/config.json          resolved TrainConfig
    RUN/command.txt          the command that made it
    RUN/metrics.jsonl        one JSON object per logged step: train/..., eval/...
    RUN/checkpoints/latest.json
    RUN/checkpoints/step_00001000/{model.safetensors, config.json, statistics.json,
                                   optimizer.safetensors, trainer.json}
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import safetensors.torch
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from simagents.data.episodes import Episode
from simagents.data.minari_io import Dataset, load_dataset
from simagents.data.windows import WindowSampler
from simagents.errors import SimagentsError
from simagents.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    from_dict,
    read_json,
    to_dict,
)
from simagents.model import (
    LATEST_FILE,
    Simulator,
    SimulatorConfig,
    Statistics,
    resolve_checkpoint,
)

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"


@dataclass(frozen=True)
class LossWeights:
    """How much each prediction counts in the training loss."""

    action: float = 1.0
    """Policy: the next action (evidence tokens only)."""
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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Saved as RUN/config.json."""

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
    lr: float = 6e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, norms or embeddings)."""
    warmup_steps: int = 100
    """Linear warmup before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to this fraction of lr."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    return_dropout: float = 0.5
    """Probability that a window's return tokens are all replaced by the unknown token. Such windows
    train the value and action-value heads and the unconditioned (imitation) policy."""
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
    """torch threads; 0 leaves torch's default."""


def fit_statistics(episodes: list[Episode], dataset: Dataset) -> Statistics:
    """Normalisation from the training episodes; degenerate features get safe scales."""
    obs_mean: list[float] = []
    obs_std: list[float] = []
    act_low: list[float] = []
    act_high: list[float] = []
    if not isinstance(dataset.observation_space, gym.spaces.Discrete):
        obs = np.concatenate([e.observations.reshape(len(e.observations), -1) for e in episodes]).astype(
            np.float64
        )
        obs_mean = obs.mean(0).tolist()
        obs_std = np.maximum(obs.std(0), 1e-3).tolist()
    if not isinstance(dataset.action_space, gym.spaces.Discrete):
        acts = np.concatenate([e.actions.reshape(len(e.actions), -1) for e in episodes])
        low = np.asarray(dataset.action_space.low, dtype=np.float64).reshape(-1)  # type: ignore[attr-defined]
        high = np.asarray(dataset.action_space.high, dtype=np.float64).reshape(-1)  # type: ignore[attr-defined]
        # Unbounded action spaces take their range from the data.
        low = np.where(np.isfinite(low), low, acts.min(0))
        high = np.where(np.isfinite(high), high, acts.max(0))
        high = np.where(high > low, high, low + 1.0)
        act_low, act_high = low.tolist(), high.tolist()
    returns = np.concatenate([e.returns_to_go() for e in episodes])
    lo, hi = float(returns.min()), float(returns.max())
    margin = max(0.05 * (hi - lo), 1e-3)
    rewards = np.concatenate([e.rewards for e in episodes])
    scale = float(np.abs(rewards).max())
    return Statistics(
        obs_mean=obs_mean,
        obs_std=obs_std,
        act_low=act_low,
        act_high=act_high,
        return_low=lo - margin,
        return_high=hi + margin,
        reward_scale=scale if scale > 0 else 1.0,
        episode_return_percentiles=np.percentile(
            [e.episode_return for e in episodes], np.arange(0, 101, 5)
        ).tolist(),
    )


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
    episodes = [e for d in datasets for e in d.episodes]
    return replace(first, episodes=episodes)


def split_episodes(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episode indices into (train, validation); validation may be empty."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = round(n * fraction) if n >= 5 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Warmup then cosine to min_lr_ratio * lr; a pure function of the step (nothing to resume)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
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
    rng = np.random.default_rng([cfg.seed, step])
    windows = sampler.sample(rng, cfg.batch_size)
    return to_batch(windows, rng.random(cfg.batch_size) >= cfg.return_dropout)


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
        counts = np.bincount(
            sampler.actions[sampler.interventions == 0] - model.act_start, minlength=model.act_dim
        )
        freq = (counts + 1) / (counts.sum() + model.act_dim)
        chosen = batch["actions"][mask].numpy() - model.act_start
        metrics["eval/marginal_action_nll"] = float(-np.log(freq[chosen]).mean())
    losses = model.loss(replace_known(batch, False))
    metrics.update({f"eval/loss_{k}": float(v) for k, v in losses.items()})
    model.train()
    return metrics


def replace_known(batch: dict[str, torch.Tensor], known: bool) -> dict[str, torch.Tensor]:
    return {**batch, "return_known": torch.full_like(batch["return_known"], known)}


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a crash counts as past any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class RunLog:
    """metrics.jsonl, appended line by line; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= resume_step]
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
    state = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    state["state"] = per_param
    optimizer.load_state_dict(state)


def write_run_header(cfg: TrainConfig) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.out / "config.json", to_dict(cfg))
    atomic_write_text(cfg.out / "command.txt", shlex.join(sys.argv) + "\n")


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a simulator; returns the run folder. ``resume`` continues from its latest checkpoint."""
    if not resume and (cfg.out / "checkpoints").exists():
        raise SimagentsError(
            f"{cfg.out}: already holds a training run; pass --resume to continue it or choose another --out"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dataset = load_training_data(cfg.data)
    train_idx, val_idx = split_episodes(len(dataset.episodes), cfg.validation_fraction, cfg.seed)
    train_eps = [dataset.episodes[i] for i in train_idx]
    val_eps = [dataset.episodes[i] for i in val_idx]
    model_cfg = cfg.model
    if model_cfg.max_timestep < 1:
        model_cfg = replace(model_cfg, max_timestep=max(len(e) for e in dataset.episodes) + 1)
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
        start_step = int(read_json(checkpoint / TRAINER_FILE, "trainer state")["step"])
    else:  # a fresh run, or one killed before its first checkpoint
        torch.manual_seed(cfg.seed)
        stats = fit_statistics(train_eps, dataset)
        model = Simulator(model_cfg, dataset.observation_space, dataset.action_space, stats)
        optimizer = make_optimizer(model, cfg)
    write_run_header(cfg)
    log = RunLog(cfg.out / "metrics.jsonl", start_step)

    sampler = WindowSampler(train_eps, model_cfg.context_len)
    val_sampler = WindowSampler(val_eps, model_cfg.context_len) if val_eps else None
    weights = to_dict(cfg.loss)
    tokens_per_step = cfg.batch_size * model_cfg.context_len * 4
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
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks, replayable on resume
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            losses = model.loss(batch)
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
            tps = tokens_per_step / max(now - tick, 1e-9)
            tick = now
            bar.update(task, completed=done, loss=total.item(), tps=tps)
            evaluate_now = done % cfg.eval_every == 0 or done == cfg.steps
            if evaluate_now or done % cfg.log_every == 0:
                metrics = {f"train/loss_{k}": v.item() for k, v in losses.items()}
                metrics.update({"train/loss": total.item(), "train/lr": learning_rate(cfg, step)})
                metrics["train/grad_norm"] = float(grad_norm)
                if evaluate_now and val_sampler is not None:
                    metrics.update(evaluate_heldout(model, val_sampler))
                log.write(done, metrics)
            if evaluate_now:
                save_checkpoint(cfg.out, model, optimizer, done, cfg.keep_checkpoints)
    return cfg.out
