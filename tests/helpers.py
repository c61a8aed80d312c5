"""Tiny models and synthetic episodes shared by the tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from simagents.data.episodes import Episode, episode_from_arrays
from simagents.model import Simulator, SimulatorConfig, Statistics

BOX_OBS = gym.spaces.Box(-5.0, 5.0, (3,), np.float32)
BOX_ACT = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
DISCRETE_OBS = gym.spaces.Discrete(6)
DISCRETE_ACT = gym.spaces.Discrete(3)


def random_episode(
    rng: np.random.Generator, length: int, obs_space: gym.Space, act_space: gym.Space
) -> Episode:
    def draw(space: gym.Space, n: int) -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            return rng.integers(0, space.n, size=n)
        return rng.uniform(-1, 1, size=(n, *space.shape)).astype(np.float32)

    terminations = np.zeros(length, dtype=bool)
    terminations[-1] = True
    return episode_from_arrays(
        observations=draw(obs_space, length + 1),
        actions=draw(act_space, length),
        rewards=rng.normal(size=length).astype(np.float32),
        terminations=terminations,
        truncations=np.zeros(length, dtype=bool),
        observation_space=obs_space,
        action_space=act_space,
        interventions=rng.random(length) < 0.3,
    )


def tiny_stats(obs_space: gym.Space, act_space: gym.Space, labels: tuple[str, ...] = ()) -> Statistics:
    """Fixed data statistics for a model built without data (returns in [-5, 5])."""
    obs_dim = 0 if isinstance(obs_space, gym.spaces.Discrete) else int(np.prod(obs_space.shape))
    act_dim = 0 if isinstance(act_space, gym.spaces.Discrete) else int(np.prod(act_space.shape))
    return Statistics(
        obs_mean=[0.1] * obs_dim,
        obs_std=[0.9] * obs_dim,
        act_low=[-2.0] * act_dim,
        act_high=[2.0] * act_dim,
        return_low=-5.0,
        return_high=5.0,
        reward_scale=2.0,
        episode_return_percentiles=np.linspace(-3, 3, 21).tolist(),
        labels=list(labels),
    )


def tiny_model(
    obs_space: gym.Space = BOX_OBS, act_space: gym.Space = DISCRETE_ACT, context_len: int = 4, seed: int = 0
) -> Simulator:
    torch.manual_seed(seed)
    cfg = SimulatorConfig(
        context_len=context_len, n_embd=32, n_layer=2, n_head=2, dropout=0.0, max_timestep=64
    )
    return Simulator(cfg, obs_space, act_space, tiny_stats(obs_space, act_space)).eval()
