"""Connect Four as a gymnasium env, and the population's data."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simagents.data.minari_io import load_dataset, save_dataset
from simagents.envs import TESTBEDS, get_testbed
from simagents.envs.connect_four import PLANES, POPULATION, ConnectFourEnv, observe, position_from_observation
from simagents.envs.connect_four_engine import Position
from simagents.errors import SimagentsError

ENV_ID = "simagents/ConnectFour-v0"


@pytest.mark.parametrize("params", [{}, {"opponent_depth": 1, "opponent_blunder": 1.0, "agent_first": 0.0}])
def test_env_checker(params: dict) -> None:
    env = gym.make(ENV_ID, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    assert get_testbed("connect_four").env_id == ENV_ID
    env.close()


def test_mask_in_every_info_and_a_full_column_is_an_error() -> None:
    env = ConnectFourEnv(agent_first=1.0, opponent_depth=1, opponent_blunder=0.0)
    observation, info = env.reset(seed=0)
    assert not observation[:84].any() and info["action_mask"].dtype == np.int8
    assert info["action_mask"].tolist() == [1] * 7
    observation, _, _, _, info = env.step(0)
    assert info["action_mask"].tolist() == [1] * 7 and np.count_nonzero(observation[:84]) == 2
    env.position = Position.from_moves("000000")  # column 0 full, no four: the agent to move
    info = env.step(1)[-1]
    assert info["action_mask"].tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert info["action_mask"][0] == 0
    with pytest.raises(gym.error.InvalidAction, match="column 0 is full"):
        env.step(0)


def stone_balance(observation: np.ndarray) -> float:
    """The agent's stones minus the opponent's, from the observation's two planes."""
    return float(observation[:42].sum() - observation[42:84].sum())


@pytest.mark.parametrize(("agent_first", "stones"), [(1.0, 0), (0.0, 1)])
def test_sides_rewards_and_observation(agent_first: float, stones: int) -> None:
    env = ConnectFourEnv(agent_first=agent_first, opponent_depth=2, opponent_blunder=0.0)
    observation, _ = env.reset(seed=3)
    assert np.count_nonzero(observation[:84]) == stones and stone_balance(observation) == -stones
    # A random agent loses to a blunder-free searcher; the loss pays −1 and ends the game.
    rng = np.random.default_rng(0)
    total, terminated = 0.0, False
    while not terminated:
        position = position_from_observation(observation)
        assert position == env.position  # the agent is the side to move in what it sees
        observation, reward, terminated, _, info = env.step(int(rng.choice(position.legal_moves())))
        total += reward
    assert total == -1.0 and info["outcome"] == "loss" and not info["action_mask"].any()
    assert (
        stone_balance(observation) == -stones
    )  # the opponent moved last: as many stones as at the start, relatively
    with pytest.raises(gym.error.ResetNeeded):
        env.step(3)


def test_agent_win_pays_plus_one() -> None:
    env = ConnectFourEnv(agent_first=1.0, opponent_depth=1, opponent_blunder=1.0)
    env.reset(seed=0)
    env.position = Position.from_moves("061626")  # the agent (first) has 0, 1, 2 on the bottom row
    observation, reward, terminated, _, info = env.step(3)
    assert (reward, terminated, info["outcome"]) == (1.0, True, "win")
    assert stone_balance(observation) == 1  # the agent made the last move


def planes_of(position: Position, agent_to_move: bool = True) -> dict[str, np.ndarray]:
    planes = observe(position, agent_to_move).reshape(len(PLANES), 6, 7)
    return dict(zip(PLANES, planes, strict=True))


def test_tactic_planes_mark_playable_cells_and_fours_in_one() -> None:
    # The agent (first) has columns 0-2 of the bottom row, the opponent three up column 6.
    planes = planes_of(Position.from_moves("061626"))
    counts = {name: int(plane.sum()) for name, plane in planes.items()}
    assert counts == {
        "agent": 3,
        "opponent": 3,
        "playable": 7,
        "agent_wins": 1,
        "opponent_wins": 1,
        "under_opponent_fours": 0,
        "agent_fours": 1,
        "opponent_fours": 1,
        "agent_forks": 0,
        "opponent_forks": 0,
    }
    assert planes["agent_wins"][0, 3] == 1  # (row 0, column 3) completes the row and is playable
    assert planes["opponent_wins"][3, 6] == 1  # on top of the opponent's three: the agent must block
    assert planes["playable"].argmax(axis=0).tolist() == [1, 1, 1, 0, 0, 0, 3]
    # Seen by the other side, the same board swaps the sides' planes.
    swapped = planes_of(Position.from_moves("061626"), agent_to_move=False)
    for mine, theirs in (
        ("agent", "opponent"),
        ("agent_wins", "opponent_wins"),
        ("agent_fours", "opponent_fours"),
        ("agent_forks", "opponent_forks"),
    ):
        np.testing.assert_array_equal(swapped[mine], planes[theirs])


def test_a_cell_under_the_opponents_four_is_marked() -> None:
    # The agent has three on the bottom row (columns 1-3), the opponent three on top of them:
    # columns 0 and 4 win for the agent at once, and a stone there gives the opponent row 1.
    board = np.zeros((6, 7), dtype=np.int8)
    board[0, 1:4], board[1, 1:4] = 1, -1
    planes = planes_of(Position.from_board(board))
    for name in ("agent_wins", "under_opponent_fours"):
        assert planes[name][0].tolist() == [1, 0, 0, 0, 1, 0, 0] and planes[name][1:].sum() == 0
    assert not planes["opponent_wins"].any()
    assert planes["opponent_fours"][1].tolist() == [1, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize(
    ("moves", "agent_forks", "opponent_forks"),
    [
        # The agent (first) has columns 3-4 of the bottom row: a stone in 2 or 5 makes three
        # with both ends open; the opponent's two stones above make no fork yet.
        ("3344", [(0, 2), (0, 5)], []),
        # The opponent has columns 3-4 and the agent column 6: only a stone in column 2 leaves
        # the opponent both ends open, so that is the one fork cell the agent must take.
        ("0364", [], [(0, 2)]),
        # A stacked fork: a stone at (row 2, column 3) makes the agent's row 2 three (ready at
        # (2, 2)) and its diagonal (0, 5)-(1, 4)-(2, 3), whose fourth cell (3, 2) is right above:
        # the opponent's block at (2, 2) lets the agent win on top of it.
        ("2455534342", [(2, 3)], []),
        # Two stones each, none aligned to three: no fork for either side.
        ("0616", [], []),
    ],
)
def test_fork_planes_mark_cells_that_leave_two_wins(moves, agent_forks, opponent_forks) -> None:
    planes = planes_of(Position.from_moves(moves))
    assert [tuple(cell) for cell in np.argwhere(planes["agent_forks"])] == agent_forks
    assert [tuple(cell) for cell in np.argwhere(planes["opponent_forks"])] == opponent_forks


def test_bad_params_are_simagents_errors() -> None:
    with pytest.raises(SimagentsError, match="opponent_blunder must be a probability"):
        gym.make(ENV_ID, opponent_blunder=2.0)
    with pytest.raises(SimagentsError, match="opponent_depth must be between 1 and 8"):
        gym.make(ENV_ID, opponent_depth=0)
    with pytest.raises(SimagentsError, match="420 values"):
        position_from_observation(np.zeros(5))
    with pytest.raises(SimagentsError, match="a stone of each side"):
        position_from_observation(np.ones(420))


def test_demonstrations_label_players_and_are_deterministic(tmp_path, monkeypatch) -> None:
    testbed = TESTBEDS["connect_four"]
    params = {"opponent_depth": 1, "opponent_blunder": 0.3}
    a, b, c = (testbed.demonstrations(params, 10, np.random.default_rng(s)) for s in (7, 7, 8))
    env = testbed.make(**params)
    assert [e.policy for e in a] == list(POPULATION) * 2
    for x, y in zip(a, b, strict=True):
        x.validate(env.observation_space, env.action_space)
        for field in ("observations", "actions", "rewards", "terminations", "interventions"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        assert x.terminations[-1] and x.episode_return in (-1.0, 0.0, 1.0)
        # Each observation is a game position with the player to move, and the move is legal.
        for t in range(len(x)):
            assert int(x.actions[t]) in position_from_observation(x.observations[t]).legal_moves()
    assert [e.actions.tolist() for e in a] != [e.actions.tolist() for e in c]
    random_data = testbed.demonstrations(params, 4, np.random.default_rng(0), intervene=True)
    assert {e.policy for e in random_data} == {"random"} and all(e.interventions.all() for e in random_data)

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    path = save_dataset(
        a,
        tmp_path / "c4",
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id=testbed.env_id,
        env_kwargs=params,
    )
    loaded = load_dataset(path)
    assert loaded.policies == sorted(POPULATION) and loaded.env_kwargs == params
    assert [e.policy for e in loaded.episodes] == [e.policy for e in a]
    np.testing.assert_array_equal(loaded.episodes[3].observations, a[3].observations)


def test_theory_describes_reference_and_population() -> None:
    theory = TESTBEDS["connect_four"].theory(opponent_depth=3)
    assert theory["reference"] == {"depth": 3, "blunder": 0.2}
    assert list(theory["population"]) == list(POPULATION)
