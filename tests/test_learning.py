"""Slow "does it learn" tests (run with --runslow): the foundation's CartPole promises."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from simagents.agents import evaluate, make_agent
from simagents.data.collect import CollectConfig, collect
from simagents.data.minari_io import load_dataset
from simagents.model import Simulator
from simagents.train import TrainConfig, train


@pytest.mark.slow
def test_cartpole_simulator_learns_and_its_agents_beat_or_match_the_data(tmp_path: Path):
    data = collect(CollectConfig(env="CartPole-v1", out=tmp_path / "data", episodes=300, seed=0))
    dataset = load_dataset(data)
    run = train(TrainConfig(data=(str(data),), out=tmp_path / "run"), progress=False)
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # Held-out actions are predicted better than by their marginal frequency.
    assert final["eval/action_nll"] < final["eval/marginal_action_nll"] - 0.1
    # The value head is calibrated to within a fifth of the return range.
    assert final["eval/value_mae"] < 0.2 * (dataset.returns.max() - dataset.returns.min())

    simulator = Simulator.load(run)
    env = gym.make("CartPole-v1")
    scores = {
        name: evaluate(make_agent(name, simulator), env, episodes=20, seed=100).summary()["mean_return"]
        for name in ("imitation", "dt", "edt")
    }
    best = max(
        np.mean([e.episode_return for e in dataset.episodes if e.policy == p]) for p in dataset.policies
    )
    data_mean = dataset.returns.mean()
    assert abs(scores["imitation"] - data_mean) < 0.35 * data_mean  # a copy of the population
    assert scores["dt"] >= 0.9 * best and scores["edt"] >= 0.9 * best  # agents at the best player's level
