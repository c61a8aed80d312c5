"""Route 4, RL fine-tuning: adjust the simulator's policy head to maximise reward in an env.

The fine-tuned simulator acts like ``imitation`` (return token *unknown*, the next action
sampled from the policy head, one KV-cache :class:`~simagents.model.Context` per episode),
but its policy head has been trained by policy gradient on its own episodes, with a penalty
on the KL divergence from the frozen pre-trained policy. The simulated distribution of
players collapses towards one player: the one the reward favours.

By default only the policy head learns; the transformer stays frozen. Its hidden state at each
return token is then a fixed function of the trajectory, so an episode's features are computed
once, while acting, and every update re-reads them. With ``body_lr`` > 0 the transformer learns
too (at its own, smaller rate): each update then runs the batch's episodes through it again, as
one batch of whole-episode windows, so an episode must fit in the simulator's context. Either
way a PPO-style clipped objective rather than plain REINFORCE: with episodes the expensive part,
several epochs per batch of episodes pay off, and the ratio clip keeps those repeated steps from
overshooting the policy that collected the batch. The baseline is learned: a linear regression of the
discounted return on the same features, fitted on the *previous* batches (fitting it on the
batch it scores would bias the gradient). With ``gae_lambda`` < 1 each action's advantage also
reads the baseline's values of the steps after it (generalised advantage estimation).

Result: a normal simulator folder (``Simulator.save``: safetensors + JSON), plus
``finetune.json`` (the settings), ``metrics.jsonl`` (``rl/return``, ``rl/entropy``,
``rl/kl`` ... per iteration) and ``command.txt``. ``make_agent("rl", Simulator.load(out))``
plays it.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from simagents.agents.base import SimulatorAgent, check_temperature, register_agent
from simagents.errors import SimagentsError, check_seed
from simagents.io import fresh_folder, to_dict, write_run_record
from simagents.model import Simulator, as_model_input
from simagents.threads import threads

FINETUNE_FILE = "finetune.json"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class FinetuneConfig:
    """How the policy head is fine-tuned. Saved in OUT/finetune.json."""

    iterations: int = 30
    """Policy updates; each collects a fresh batch of episodes first."""
    episodes: int = 16
    """Episodes collected per iteration."""
    epochs: int = 4
    """Passes of gradient steps over each batch (PPO-style reuse of the collected episodes)."""
    lr: float = 3e-3
    """Adam learning rate of the policy head."""
    body_lr: float = 0.0
    """Adam learning rate of the rest of the simulator (embeddings, observation encoder, blocks);
    0 keeps it frozen, so that only the policy head learns, reading fixed features. Measured on
    the Connect Four study's default-budget simulators (150 iterations of 64 games, 2026-12-05),
    1e-4 against 0: wins 0.80 / 0.66 against 0.79 / 0.81 (seeds 0 / 1, 300 games), KL from the
    pre-trained policy 0.83 / 1.22 against 0.33 / 0.29, in 218 s against about 100 s; 3e-5 won
    0.86 / 0.83 against 0.79 / 0.80 (the study's Connect Four budget uses it)."""
    clip: float = 0.2
    """PPO ratio clip: an update gains nothing from moving an action's probability beyond 1 +/- clip
    times what it was when the batch was collected."""
    kl_coef: float = 0.05
    """Weight of the penalty KL(fine-tuned || pre-trained policy), averaged over visited states."""
    gamma: float = 0.99
    """Discount of later rewards in each action's return (0: only its own step's reward counts)."""
    gae_lambda: float = 1.0
    """Generalised advantage estimation's lambda (Schulman et al. 2016): 1 scores each action by its
    discounted return minus the baseline's value; below 1, by the baseline's value of the steps
    that follow it as well, each step's surprise weighted by (gamma * lambda) per step away:
    less variance where the reward comes only at the end, some bias from the baseline's errors.
    On the Connect Four study's default-budget simulators (body_lr 3e-5, 300 games, 2026-12-05),
    0.95 won 0.86 / 0.81 (seeds 0 / 1) and 0.8 won 0.80 / 0.84, against 0.83 / 0.84 with 1: no
    gain beyond a seed's noise, so 1 stays the default."""
    max_steps: int = 0
    """Cut episodes after this many steps (0: play them to the env's own end)."""
    baseline_ridge: float = 1e-2
    """Ridge penalty of the linear baseline's least-squares fit."""
    seed: int = 0
    """Seeds the env resets, the action sampling and the updates."""
    threads: int = 1
    """torch and numpy BLAS threads while fine-tuning (restored afterwards); 0 leaves both as they
    are. One is fastest for acting, which is a pass over four tokens per step."""

    def check(self) -> None:
        """Raise :class:`SimagentsError` naming the first bad field."""
        check_seed(self.seed, "finetune")
        positive = {"iterations": self.iterations, "episodes": self.episodes, "epochs": self.epochs}
        for name, value in positive.items():
            if value < 1:
                raise SimagentsError(f"finetune: {name} must be at least 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SimagentsError(f"finetune: lr must be a positive number, got {self.lr}")
        if not (self.body_lr >= 0 and math.isfinite(self.body_lr)):
            raise SimagentsError(
                f"finetune: body_lr must be 0 (frozen) or a positive number, got {self.body_lr}"
            )
        if not 0 <= self.gae_lambda <= 1:
            raise SimagentsError(f"finetune: gae_lambda must lie in [0, 1], got {self.gae_lambda}")
        if not 0 <= self.gamma <= 1:
            raise SimagentsError(f"finetune: gamma must lie in [0, 1], got {self.gamma}")
        if self.kl_coef < 0 or self.clip <= 0 or self.baseline_ridge < 0 or self.max_steps < 0:
            raise SimagentsError(
                "finetune: kl_coef, baseline_ridge and max_steps must be >= 0 and clip > 0, got "
                f"{self.kl_coef}, {self.baseline_ridge}, {self.max_steps}, {self.clip}"
            )


@register_agent("rl")
class RLAgent(SimulatorAgent):
    """Acts with the (fine-tuned) policy head, the return token unknown: imitation's token protocol.

    ``temperature`` scales the sampling (0: the policy's mode). While fine-tuning, ``record``
    keeps each step's hidden state at the return token and the action drawn, before Box
    actions are clipped to the space (the Gaussian's own sample, whose log-probability the
    update needs); the env and the context get the clipped action.
    """

    def __init__(
        self, simulator: Simulator, temperature: float = 1.0, min_history: int | None = None
    ) -> None:
        self.temperature = check_temperature(temperature)
        self.record = False
        self.features: list[Tensor] = []
        self.drawn: list[Tensor] = []
        super().__init__(simulator, min_history=min_history)

    def choose(self) -> Tensor:
        model = self.simulator
        h = self.context.push_return(None)  # (1,d)
        if model.act_discrete:
            action = self.sample_action(self.temperature)  # illegal actions (env's mask) excluded
            drawn = action
        else:
            mean, log_std = model._gaussian(model.action_params(h).reshape(-1))  # normalised units
            noise = torch.randn(mean.shape, generator=self.generator)
            raw = mean + self.temperature * log_std.exp() * noise
            drawn = model.act_low + (raw + 1) * 0.5 * (model.act_high - model.act_low)  # env units, unclipped
            action = model.denormalize_action(raw)
        if self.record:
            self.features.append(h[0])
            self.drawn.append(drawn)
        return action


# --------------------------------------------------------------------------- distributions


def policy_stats(model: Simulator, params: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Per state (N,): the entropy of the policy head's distribution ``params`` (N,out) and its KL
    divergence from the reference policy's ``ref`` (N,out)."""
    if model.act_discrete:
        log_p, log_q = F.log_softmax(params, -1), F.log_softmax(ref, -1)
        return -(log_p.exp() * log_p).sum(-1), (log_p.exp() * (log_p - log_q)).sum(-1)
    mean, log_std = model._gaussian(params)
    ref_mean, ref_log_std = model._gaussian(ref)
    entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
    var, ref_var = (2 * log_std).exp(), (2 * ref_log_std).exp()
    kl = (ref_log_std - log_std + (var + (mean - ref_mean) ** 2) / (2 * ref_var) - 0.5).sum(-1)
    return entropy, kl


def discounted_returns(rewards: list[float], gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} per step of one episode (an episode cut short counts as ended)."""
    out = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def gae_advantages(values: Tensor, rewards: Tensor, lengths: list[int], gamma: float, lam: float) -> Tensor:
    """Generalised advantage per step (N,) from the baseline's values and the rewards (N,), the
    steps episode by episode (``lengths``); after an episode's last step (ended or cut) the value is 0.
    A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t; lam = 1 gives G_t - V_t."""
    value, reward = values.tolist(), rewards.tolist()
    out = [0.0] * len(value)
    start = 0
    for length in lengths:
        running, next_value = 0.0, 0.0
        for t in reversed(range(start, start + length)):
            running = reward[t] + gamma * next_value - value[t] + gamma * lam * running
            out[t] = running
            next_value = value[t]
        start += length
    return torch.tensor(out, dtype=values.dtype)


class LinearBaseline:
    """V(h) = w . [h, 1], fitted by ridge regression on earlier batches' features and returns."""

    def __init__(self, ridge: float) -> None:
        self.ridge = ridge
        self.weights: Tensor | None = None
        self.mean_return = 0.0

    def __call__(self, h: Tensor) -> Tensor:
        if self.weights is None:
            return torch.full((h.shape[0],), self.mean_return)
        return torch.cat([h, torch.ones(h.shape[0], 1)], 1) @ self.weights

    def fit(self, h: Tensor, returns: Tensor) -> None:
        x = torch.cat([h, torch.ones(h.shape[0], 1)], 1).double()
        gram = x.T @ x + self.ridge * h.shape[0] * torch.eye(x.shape[1], dtype=torch.float64)
        self.weights = torch.linalg.solve(gram, x.T @ returns.double()).float()
        self.mean_return = float(returns.mean())


# --------------------------------------------------------------------------- the loop


@dataclass
class Batch:
    """One iteration's episodes, flattened over steps (episode by episode, in step order)."""

    features: Tensor  # (N,d) hidden at each return token
    drawn: Tensor  # (N,) long or (N,act_dim) env units, unclipped
    returns: Tensor  # (N,) discounted return from each step
    episode_returns: list[float]
    episode_lengths: list[int]
    # What the context read, per step, for re-running the episodes (body_lr > 0): as the model embeds
    observations: list[Tensor]  # N of () long or (obs_dim,)
    actions: list[Tensor]  # N of () long or (act_dim,): the action the env got (Box: clipped)
    rewards: Tensor  # (N,)


def collect_batch(agent: RLAgent, env: gym.Env, cfg: FinetuneConfig, seed: int) -> Batch:
    """Play ``cfg.episodes`` episodes with the agent's current policy; episode i is seeded seed + i."""
    model = agent.simulator
    agent.record = True
    agent.features, agent.drawn = [], []
    returns, totals, lengths = [], [], []
    observations, actions, all_rewards = [], [], []
    try:
        for i in range(cfg.episodes):
            obs, info = env.reset(seed=seed + i)
            agent.reset(seed=seed + i)
            rewards: list[float] = []
            reward, done = 0.0, False
            while not done:
                observations.append(as_model_input(obs, model.observation_space))
                action = agent.act(obs, reward, action_mask=info.get("action_mask"))
                actions.append(as_model_input(action, model.action_space))
                obs, step_reward, terminated, truncated, info = env.step(action)
                reward = float(step_reward)
                rewards.append(reward)
                done = terminated or truncated or (cfg.max_steps > 0 and len(rewards) >= cfg.max_steps)
            returns.append(discounted_returns(rewards, cfg.gamma))
            totals.append(float(np.sum(rewards)))
            lengths.append(len(rewards))
            all_rewards += rewards
    finally:
        agent.record = False
    return Batch(
        features=torch.stack(agent.features),
        drawn=torch.stack(agent.drawn),
        returns=torch.as_tensor(np.concatenate(returns), dtype=torch.float32),
        episode_returns=totals,
        episode_lengths=lengths,
        observations=observations,
        actions=actions,
        rewards=torch.tensor(all_rewards, dtype=torch.float32),
    )


def episode_windows(model: Simulator, batch: Batch) -> dict[str, Tensor]:
    """The batch's episodes as training windows (B episodes, K their longest length), the return
    and the label unknown, as the agent played them: :meth:`Simulator.forward`'s input."""
    lengths = batch.episode_lengths
    longest = max(lengths)
    if longest > model.cfg.context_len:
        raise SimagentsError(
            f"finetune: body_lr > 0 re-reads whole episodes, but one ran {longest} steps, more than the "
            f"simulator's context_len {model.cfg.context_len}; set max_steps to at most "
            f"{model.cfg.context_len}, or body_lr to 0 (the policy head alone)"
        )
    mask = torch.arange(longest).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B,K)

    def padded(values: Tensor) -> Tensor:  # (N,...) -> (B,K,...), zeros after each episode's end
        out = values.new_zeros(len(lengths), longest, *values.shape[1:])
        out[mask] = values
        return out

    return {
        "observations": padded(torch.stack(batch.observations)),
        "actions": padded(torch.stack(batch.actions)),
        "rewards": padded(batch.rewards),
        "returns_to_go": torch.zeros(mask.shape),
        "return_known": torch.zeros(len(lengths), dtype=torch.bool),
        "interventions": torch.zeros(mask.shape, dtype=torch.bool),
        "timesteps": torch.arange(longest).expand(mask.shape),
        "mask": mask,
    }


def episode_features(model: Simulator, windows: dict[str, Tensor]) -> Tensor:
    """Hidden state at each step's return token (N,d), in the batch's order, by one forward pass."""
    hidden: Tensor = model(windows, kinds=("return",))["return"]  # (B,K,d)
    return hidden[windows["mask"]]


def finetune(
    simulator: Simulator,
    env: gym.Env,
    out: Path | str,
    config: FinetuneConfig | None = None,
    source: dict[str, Any] | None = None,
    progress: bool = False,
) -> Simulator:
    """Fine-tune a copy of ``simulator``'s policy head in ``env``; save it to ``out`` and return it.

    ``source`` (e.g. the pre-trained run's path and the env id) is recorded in finetune.json.
    ``out`` must be absent or empty; on any error it is removed again, nothing half-written.
    """
    cfg = config or FinetuneConfig()
    cfg.check()
    with fresh_folder(out, "fine-tuning run") as folder, threads(cfg.threads):
        return _finetune(simulator, env, folder, cfg, source or {}, progress)


def _finetune(
    simulator: Simulator,
    env: gym.Env,
    folder: Path,
    cfg: FinetuneConfig,
    source: dict[str, Any],
    progress: bool,
) -> Simulator:
    write_run_record(folder, {**source, "config": to_dict(cfg)}, FINETUNE_FILE)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(simulator).eval()
    reference = copy.deepcopy(simulator).eval()  # the frozen pre-trained policy
    for p in reference.parameters():
        p.requires_grad_(False)
    head = model.action_head
    body = [p for name, p in model.named_parameters() if not name.startswith("action_head.")]
    train_body = cfg.body_lr > 0
    for p in body:
        p.requires_grad_(train_body)
    groups = [{"params": list(head.parameters()), "lr": cfg.lr}]
    if train_body:
        groups.append({"params": body, "lr": cfg.body_lr})
    optimizer = torch.optim.Adam(groups)
    agent = RLAgent(model)
    baseline = LinearBaseline(cfg.baseline_ridge)
    metrics_path = folder / METRICS_FILE
    columns = [TextColumn("[bold]finetune"), BarColumn(), TextColumn("return {task.fields[ret]:.3g}")]
    with Progress(*columns, TimeRemainingColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("finetune", total=cfg.iterations, ret=float("nan"))
        for iteration in range(cfg.iterations):
            with torch.no_grad():
                batch = collect_batch(agent, env, cfg, seed=cfg.seed * 1_000_003 + iteration * cfg.episodes)
                windows = episode_windows(model, batch) if train_body else {}
                # With the body learning, the old and the reference policy read the forward pass the
                # update reads, not the features recorded while acting (equal up to rounding).
                features = episode_features(model, windows) if train_body else batch.features
                ref_params = reference.action_params(
                    episode_features(reference, windows) if train_body else features
                )
                old_log_prob = model.action_log_prob(features, batch.drawn)
                values = baseline(features)
                if cfg.gae_lambda < 1:
                    advantage = gae_advantages(
                        values, batch.rewards, batch.episode_lengths, cfg.gamma, cfg.gae_lambda
                    )
                else:
                    advantage = batch.returns - values
                advantage = (advantage - advantage.mean()) / (advantage.std(unbiased=False) + 1e-8)
                entropy_before, kl_before = policy_stats(model, model.action_params(features), ref_params)
            for _ in range(cfg.epochs):
                h = episode_features(model, windows) if train_body else features
                ratio = (model.action_log_prob(h, batch.drawn) - old_log_prob).exp()
                surrogate = torch.min(ratio * advantage, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantage)
                _, kl = policy_stats(model, model.action_params(h), ref_params)
                loss = -surrogate.mean() + cfg.kl_coef * kl.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                optimizer.step()
            baseline.fit(features, batch.returns)
            record = {
                "step": iteration + 1,
                "rl/return": float(np.mean(batch.episode_returns)),
                "rl/entropy": float(entropy_before.mean()),
                "rl/kl": float(kl_before.mean()),
                "rl/episode_length": float(np.mean(batch.episode_lengths)),
                "rl/loss": float(loss.detach()),
            }
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(task, advance=1, ret=record["rl/return"])
    for p in model.parameters():
        p.requires_grad_(False)
    model.save(folder)
    return model
