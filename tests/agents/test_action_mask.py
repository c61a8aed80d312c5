"""Every registered agent chooses only actions the env's ``action_mask`` allows."""

import gymnasium as gym
import numpy as np
import pytest

from helpers import BOX_ACT, BOX_OBS, tiny_model
from simagents.agents import AGENTS, evaluate, make_agent
from simagents.envs.connect_four import ConnectFourEnv
from simagents.errors import SimagentsError

SEVEN = gym.spaces.Discrete(7)


def accepts_discrete_actions(name: str) -> bool:
    """Masks are for Discrete actions; an agent made for other spaces (myopic: Box forecasts) refuses."""
    try:
        make_agent(name, tiny_model(BOX_OBS, SEVEN))
    except SimagentsError:
        return False
    return True


# Each agent that takes Discrete actions, with its defaults, plus the planners' world-model rollout.
VARIANTS = [(name, {}) for name in sorted(AGENTS) if accepts_discrete_actions(name)] + [
    ("edt", {"horizon": 2, "beam": 2})
]


def mask_of(legal: list[int]) -> np.ndarray:
    mask = np.zeros(7, dtype=np.int8)
    mask[legal] = 1
    return mask


@pytest.mark.parametrize(("name", "options"), VARIANTS)
@pytest.mark.parametrize("legal", [[2], [5], [0, 6], [1, 3, 4]])
def test_agent_respects_the_mask(name: str, options: dict, legal: list[int]) -> None:
    agent = make_agent(name, tiny_model(BOX_OBS, SEVEN, seed=1), **options)
    rng = np.random.default_rng(0)
    for seed in range(2):
        agent.reset(seed=seed)
        for _ in range(6):
            observation = rng.uniform(-1, 1, 3).astype(np.float32)
            assert agent.act(observation, 0.0, action_mask=mask_of(legal)) in legal


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_agent_plays_whole_games_through_evaluate(name: str, options: dict) -> None:
    # A random tiny simulator drops stones in full columns unless evaluate hands it the mask.
    model = tiny_model(ConnectFourEnv().observation_space, SEVEN, seed=2)
    env = ConnectFourEnv(opponent_depth=1, opponent_blunder=1.0)
    result = evaluate(make_agent(name, model, **options), env, episodes=3, seed=0)
    assert len(result.returns) == 3 and set(result.returns) <= {-1.0, 0.0, 1.0}


def test_bad_masks_are_simagents_errors() -> None:
    agent = make_agent("imitation", tiny_model(BOX_OBS, SEVEN))
    observation = np.zeros(3, dtype=np.float32)
    with pytest.raises(SimagentsError, match="allows no action"):
        agent.act(observation, action_mask=np.zeros(7))
    with pytest.raises(SimagentsError, match="mask has 3 entries but the simulator has 7"):
        agent.act(observation, action_mask=np.ones(3))
    box_agent = make_agent("imitation", tiny_model(BOX_OBS, BOX_ACT))
    with pytest.raises(SimagentsError, match="Discrete actions only"):
        box_agent.act(observation, action_mask=np.ones(2))


@pytest.mark.parametrize("legal", [[2], [0, 6], [1, 3, 4]])
def test_a_sampling_agent_reports_the_masked_policy_it_drew_from(legal: list[int]) -> None:
    agent = make_agent("imitation", tiny_model(BOX_OBS, SEVEN, seed=1))
    agent.reset(seed=0)
    action = agent.act(np.zeros(3, dtype=np.float32), 0.0, action_mask=mask_of(legal))
    policy = agent.action_probabilities
    assert policy.shape == (7,) and policy.sum() == pytest.approx(1.0)
    # a random tiny simulator spreads its probability over every legal column, and no other
    assert set(np.flatnonzero(policy)) == set(legal) and policy[action] > 0


@pytest.mark.parametrize(("name", "options"), [("edt", {}), ("imitation", {"temperature": 0.0}), ("dt", {})])
def test_a_deterministic_choice_reports_no_policy(name: str, options: dict) -> None:
    agent = make_agent(name, tiny_model(BOX_OBS, SEVEN, seed=1), **options)
    agent.act(np.zeros(3, dtype=np.float32), 0.0, action_mask=mask_of([1, 3]))
    assert agent.action_probabilities is None
