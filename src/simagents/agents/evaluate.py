"""Run any agent in any gymnasium env for some episodes, deterministically under a seed."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from rich.progress import Progress, TaskID

from simagents.agents.base import Agent
from simagents.errors import SimagentsError, check_seed
from simagents.threads import set_threads


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


def evaluate(
    agent: Agent, env: gym.Env, episodes: int, seed: int = 0, progress: bool = False, workers: int = 1
) -> Evaluation:
    """Play ``episodes`` episodes; episode i resets env and agent with seed + i.

    An env that puts ``action_mask`` in its infos has it passed to ``agent.act``. With
    ``workers`` > 1 the episodes are played in that many worker processes (each with a copy of the
    agent and the env, and one torch thread) and gathered in order: since every episode is seeded
    by its index alone, the result equals a serial run's with one torch thread (more threads may
    sum a large model's matmuls in another order, changing last bits).

    Example (``runs/cartpole`` as trained by :func:`~simagents.train.train`'s example):

    >>> import gymnasium
    >>> from simagents import Simulator, evaluate, make_agent
    >>> agent = make_agent("edt", Simulator.load("runs/cartpole"))
    >>> result = evaluate(agent, gymnasium.make("CartPole-v1"), episodes=2, seed=0)
    >>> sorted(result.summary())[:4]
    ['episodes', 'mean_length', 'mean_return', 'predicted_return']
    """
    if workers < 1:
        raise SimagentsError(f"--workers {workers}: must be at least 1")
    if episodes < 1:
        raise SimagentsError(f"--episodes {episodes}: must be at least 1 (episodes to play)")
    check_seed(seed, "evaluate")
    result = Evaluation([], [])
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluate", total=episodes)
        if workers == 1 or episodes < 2:
            played: Iterator[_Played] = (_play(agent, env, seed + i) for i in range(episodes))
            _gather(result, played, bar, task)
        else:
            try:
                state = pickle.dumps((agent, env))  # once, not per episode; never written to disk
            except Exception as e:
                raise SimagentsError(
                    f"--workers {workers}: the agent or the env cannot be copied to a worker process "
                    f"({type(e).__name__}: {e}); evaluate with --workers 1"
                ) from None
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                min(workers, episodes), mp_context=context, initializer=_start_worker, initargs=(state,)
            ) as pool:
                _gather(result, pool.map(_play_in_worker, [seed + i for i in range(episodes)]), bar, task)
    return result


_Played = tuple[float, int, dict[str, float]]


def _play(agent: Agent, env: gym.Env, seed: int) -> _Played:
    """One episode seeded by ``seed``: (return, length, the agent's episode metrics)."""
    obs, info = env.reset(seed=seed)
    agent.reset(seed=seed)
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
    metrics = getattr(agent, "episode_metrics", None)
    return total, steps, metrics() if metrics else {}


def _gather(result: Evaluation, played: Iterator[_Played], bar: Progress, task: TaskID) -> None:
    for total, steps, metrics in played:
        result.returns.append(total)
        result.lengths.append(steps)
        result.agent_metrics.append(metrics)
        bar.advance(task)


_worker: tuple[Agent, gym.Env] | None = None  # this worker process's copy of the agent and the env


def _start_worker(state: bytes) -> None:
    global _worker
    set_threads(1)  # workers share the cores: one thread each
    _worker = pickle.loads(state)  # bytes from our own parent process, not a file


def _play_in_worker(seed: int) -> _Played:
    assert _worker is not None
    return _play(*_worker, seed)
