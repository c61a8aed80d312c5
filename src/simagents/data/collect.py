"""Collect episodes from an env with behaviour policies and save them as a Minari dataset.

Determinism: one ``numpy`` Generator seeded with ``seed`` draws, per episode, the
behaviour policy and the episode's reset seed; the policy's own randomness comes from
a generator seeded with ``[episode_seed, 1]`` (a stream distinct from the env's, which
gymnasium seeds with ``episode_seed`` alone). So the same config gives identical arrays,
and any single episode can be replayed from its stored seed and policy label.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from simagents.data.episodes import Episode, episode_from_arrays, space_shape
from simagents.data.minari_io import dataset_lock, register_simagents_envs, save_dataset
from simagents.data.policies import make_policy, parse_population
from simagents.errors import SimagentsError, check_seed
from simagents.io import check_can_write


@dataclass
class CollectConfig:
    """Collect offline data from behaviour policies into a Minari dataset.

    Example (``simagents collect --env CartPole-v1 --episodes 20 --out data/cartpole``):

    >>> from pathlib import Path
    >>> from simagents import CollectConfig
    >>> config = CollectConfig(env="CartPole-v1", out=Path("data/cartpole"), policy="mixed", episodes=20)
    """

    env: str
    """Gymnasium env id, e.g. CartPole-v1 or simagents/Newcomb-v0."""
    out: Path
    """Dataset folder to create (it will contain data/); must not exist or be empty."""
    policy: str = "mixed"
    """Behaviour policy: a name (random, cartpole-eps0.1, ...), 'mixed' for the env's graded
    population, or a weighted list like 'cartpole-eps0.0:0.5,random:0.5'."""
    episodes: int = 300
    """Number of episodes to collect."""
    seed: int = 0
    """Seed for policy choice, env resets and policy noise; same seed, same data."""
    intervene: bool = False
    """Flag every action as an intervention (the agent's own choice, not evidence about hidden
    state). Only valid when actions are chosen without seeing hidden state; built-in policies
    see only the observation, so they qualify. Used for counterfactual teaching."""
    max_steps: int | None = None
    """Truncate episodes after this many steps (None: the env's own time limit)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gymnasium.make (testbed parameters)."""


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gymnasium.make`` with user-facing errors for unknown ids and bad keyword arguments."""
    register_simagents_envs()
    env_kwargs = dict(env_kwargs or {})
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise SimagentsError(
            f"unknown env {env_id!r} ({e}); list registered ids with "
            "`python -c 'import gymnasium; gymnasium.pprint_registry()'`"
        ) from None
    try:
        return gym.make(env_id, **env_kwargs)
    except TypeError as e:
        raise SimagentsError(f"env {env_id!r} rejected env kwargs {env_kwargs!r}: {e}") from None
    except gym.error.Error as e:
        raise SimagentsError(f"cannot make env {env_id!r} with kwargs {env_kwargs!r}: {e}") from None


def _check_config(cfg: CollectConfig) -> None:
    if cfg.episodes < 1:
        raise SimagentsError(f"episodes must be at least 1, got {cfg.episodes}")
    check_seed(cfg.seed, "collect")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise SimagentsError(f"max_steps must be at least 1 (or None), got {cfg.max_steps}")


def _progress() -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (console.is_terminal and sys.stderr.isatty()),
    )


def _run_episode(
    env: gym.Env, policy: Any, episode_seed: int, max_steps: int | None
) -> tuple[list[Any], list[Any], list[float], list[bool], list[bool]]:
    obs, _ = env.reset(seed=episode_seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        action = policy(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        # Our own cap counts as a truncation, like gymnasium's TimeLimit.
        truncated = bool(truncated) or (
            max_steps is not None and len(actions) >= max_steps and not terminated
        )
        terminations.append(bool(terminated))
        truncations.append(truncated)
        if terminated or truncated:
            return observations, actions, rewards, terminations, truncations


def collect_episodes(cfg: CollectConfig) -> list[Episode]:
    """Run the behaviour policies in the env and return the episodes, labelled by policy."""
    _check_config(cfg)
    env = make_env(cfg.env, cfg.env_kwargs)
    try:
        for what, space in (("observation", env.observation_space), ("action", env.action_space)):
            try:
                space_shape(space)
            except SimagentsError as e:
                raise SimagentsError(f"env {cfg.env}: {what} {e}") from None
        population = parse_population(cfg.policy, env)
        names = [name for name, _ in population]
        probs = np.array([p for _, p in population], dtype=np.float64)
        rng = np.random.default_rng(cfg.seed)
        episodes: list[Episode] = []
        with _progress() as progress:
            task = progress.add_task(f"collecting {cfg.env}", total=cfg.episodes)
            for i in range(cfg.episodes):
                name = names[int(rng.choice(len(names), p=probs))]
                episode_seed = int(rng.integers(2**31 - 1))
                policy = make_policy(name, env, np.random.default_rng([episode_seed, 1]))
                observations, actions, rewards, terminations, truncations = _run_episode(
                    env, policy, episode_seed, cfg.max_steps
                )
                episode = episode_from_arrays(
                    np.asarray(observations),
                    np.asarray(actions),
                    np.asarray(rewards),
                    np.asarray(terminations),
                    np.asarray(truncations),
                    observation_space=env.observation_space,
                    action_space=env.action_space,
                    interventions=np.full(len(actions), cfg.intervene, dtype=bool),
                    policy=name,
                    seed=episode_seed,
                )
                episode.validate(env.observation_space, env.action_space, where=f"{cfg.env} episode {i}")
                episodes.append(episode)
                progress.advance(task)
        return episodes
    finally:
        env.close()


def collect(cfg: CollectConfig) -> Path:
    """Collect episodes per ``cfg`` and save them as a Minari dataset at ``cfg.out``; return its folder.

    Example:

    >>> from pathlib import Path
    >>> from simagents import CollectConfig, collect
    >>> collect(CollectConfig(env="CartPole-v1", out=Path("data/cartpole"), episodes=20)).name
    'cartpole'
    """
    # Locked from the start: a second collection to the same --out is refused before it runs.
    with dataset_lock(cfg.out):
        out = check_can_write(cfg.out)  # fail before spending time on collection
        episodes = collect_episodes(cfg)
        env = make_env(cfg.env, cfg.env_kwargs)
        try:
            observation_space, action_space = env.observation_space, env.action_space
        finally:
            env.close()
        return save_dataset(
            episodes,
            out,
            observation_space=observation_space,
            action_space=action_space,
            env_id=cfg.env,
            env_kwargs=cfg.env_kwargs,
            algorithm_name=f"simagents collect --policy {cfg.policy} --seed {cfg.seed}",
        )
