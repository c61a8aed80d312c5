"""Evaluation in worker processes gives a serial run's result, episode for episode."""

import gymnasium as gym
import pytest

from helpers import tiny_model
from simagents.agents import evaluate, make_agent
from simagents.errors import SimagentsError

CARTPOLE_OBS = gym.spaces.Box(-5.0, 5.0, (4,))


@pytest.mark.parametrize("name", ["edt"])
def test_evaluate_with_two_workers_equals_one(name, one_torch_thread):
    # A planning agent that samples: its generator is seeded per episode by reset. The serial run
    # on one torch thread, as each worker runs (the README's promise: equal to such a run).
    agent = make_agent(name, tiny_model(CARTPOLE_OBS, gym.spaces.Discrete(2)))
    env = gym.make("CartPole-v1")
    serial = evaluate(agent, env, episodes=5, seed=3)
    parallel = evaluate(agent, env, episodes=5, seed=3, workers=2)
    assert parallel.returns == serial.returns and parallel.lengths == serial.lengths
    assert parallel.agent_metrics == serial.agent_metrics
    assert len(set(serial.lengths)) > 1  # the episodes differ, so their order is checked too


def test_workers_must_be_positive():
    with pytest.raises(SimagentsError, match="--workers 0"):
        evaluate(
            make_agent("imitation", tiny_model(CARTPOLE_OBS, gym.spaces.Discrete(2))),
            gym.make("CartPole-v1"),
            2,
            workers=0,
        )
