"""Run any agent in any gymnasium env for some episodes, deterministically under a seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from rich.progress import Progress

from simagents.agents.base import Agent


@dataclass
class Evaluation:
    """Per-episode returns and lengths, and the agent's own per-episode metrics."""

    returns: list[float]
    lengths: list[int]
    agent_metrics: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        out = {
            "mean_return": float(np.mean(self.returns)),
            "std_return": float(np.std(self.returns)),
            "mean_length": float(np.mean(self.lengths)),
            "episodes": len(self.returns),
        }
        keys = sorted({k for m in self.agent_metrics for k in m})
        for k in keys:
            out[k] = float(np.mean([m[k] for m in self.agent_metrics if k in m]))
        return out


def evaluate(agent: Agent, env: gym.Env, episodes: int, seed: int = 0, progress: bool = False) -> Evaluation:
    """Play ``episodes`` episodes; episode i resets env and agent with seed + i.

    An env that puts ``action_mask`` in its infos has it passed to ``agent.act``.

    Example (``runs/cartpole`` as trained by :func:`~simagents.train.train`'s example):

    >>> import gymnasium
    >>> from simagents import Simulator, evaluate, make_agent
    >>> agent = make_agent("edt", Simulator.load("runs/cartpole"))
    >>> result = evaluate(agent, gymnasium.make("CartPole-v1"), episodes=2, seed=0)
    >>> sorted(result.summary())[:4]
    ['episodes', 'mean_length', 'mean_return', 'predicted_return']
    """
    result = Evaluation([], [])
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluate", total=episodes)
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            agent.reset(seed=seed + i)
            reward, total, steps, done = 0.0, 0.0, 0, False
            while not done:
                # Only envs with masks pass one, so agents written before masks still run elsewhere.
                mask = info.get("action_mask")
                action = agent.act(obs, reward) if mask is None else agent.act(obs, reward, action_mask=mask)
                obs, step_reward, terminated, truncated, info = env.step(action)
                reward = float(step_reward)
                total += reward
                steps += 1
                done = terminated or truncated
            result.returns.append(total)
            result.lengths.append(steps)
            metrics = getattr(agent, "episode_metrics", None)
            result.agent_metrics.append(metrics() if metrics else {})
            bar.advance(task)
    return result
