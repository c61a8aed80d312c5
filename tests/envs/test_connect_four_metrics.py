"""Connect Four metrics on hand-made positions and small games."""

import math

import numpy as np
import pytest

from simagents.envs import TESTBEDS
from simagents.envs.connect_four import POPULATION, ConnectFourEnv, EnginePlayerAgent
from simagents.envs.connect_four_engine import Player, Position
from simagents.envs.connect_four_metrics import (
    blunder,
    blunder_kinds,
    blunder_rate,
    elo_against_population,
    expected_score,
    fit_elo,
    losing_plies,
    move_statistics,
    moves_of_episodes,
    outcome_rates,
    play_games,
    player_metrics,
    policy_fidelity,
)

# First player to move; the second has three on row 1 (columns 1-3), open at both ends above
# empty cells: a stone in column 0 or 4 lets it win there at once.
UNDER_THREAT = "11336262"
# Second player to move; the first has 2 and 3 on the bottom row with 0, 1, 4 open: unless
# the mover plays 0, 1 or 4, the first plays 1 (or 4) and has two threats, a win in 3 plies.
OPEN_TWO = "6253"
# First player to move; the second has 1, 2, 3 on the bottom row, open at 0 and 4: lost.
LOST = "615263"
# Second player to move: column 0 lets the first force a win with its third stone from now
# (found by search over random games; no shorter loss, and every other column holds out).
SIX_PLIES = "2126125"


def test_missed_win_in_one() -> None:
    position = Position.from_moves("010101")
    assert blunder(position, 0) is None
    assert [blunder(position, c) for c in range(1, 7)] == ["missed_win"] * 6


def test_move_under_a_threat_is_a_losing_move() -> None:
    position = Position.from_moves(UNDER_THREAT)
    kinds = {c: blunder(position, c, depth=2) for c in position.legal_moves()}
    assert kinds == {0: "losing_move", 1: None, 2: None, 3: None, 4: "losing_move", 5: None, 6: None}


@pytest.mark.parametrize(("depth", "blunders"), [(2, set()), (4, {2, 3, 5, 6}), (6, {2, 3, 5, 6})])
def test_proof_depth_decides_what_counts(depth: int, blunders: set[int]) -> None:
    # Letting the opponent build a double threat loses in 3 plies: seen at depth 4, not at 2.
    position = Position.from_moves(OPEN_TWO)
    found = {c for c in position.legal_moves() if blunder(position, c, depth) == "losing_move"}
    assert found == blunders


def test_losing_moves_are_split_by_how_far_ahead_they_lose() -> None:
    cases = [(UNDER_THREAT, 0, 2), (OPEN_TWO, 2, 4), (SIX_PLIES, 0, 6)]
    for moves, column, plies in cases:
        position = Position.from_moves(moves)
        assert blunder(position, column) == "losing_move"
        assert losing_plies(position, column) == plies
        assert losing_plies(position, column, depth=plies - 2) is None  # too short a proof to see it
    assert losing_plies(Position(), 3) is None  # the opening move in the middle loses nothing
    moves = [(Position.from_moves(m), c) for m, c, _ in cases] + [(Position(), 3)]
    assert blunder_rate(moves)["losing_move_rate_by_plies"] == {"2": 0.25, "4": 0.25, "6": 0.25}
    # A shorter proof sees fewer losing moves, and none at the plies it does not reach.
    shallow = blunder_rate(moves, depth=4)
    assert shallow["losing_move_rate_by_plies"] == {"2": 0.25, "4": 0.25}
    assert shallow["losing_move_rate"] == 0.5


def test_policy_fidelity_splits_the_blunder_probability_by_kind() -> None:
    # Uniform over the legal columns: UNDER_THREAT's 0 and 4 lose in 2 plies, its 1 and 3 in 6;
    # OPEN_TWO's 2, 3, 5, 6 in 4; SIX_PLIES's 0 in 6; every column but 0 misses a win in "010101".
    positions = [Position.from_moves(m) for m in (UNDER_THREAT, OPEN_TWO, SIX_PLIES, "010101")]
    uniform = [p.action_mask() / len(p.legal_moves()) for p in positions]
    spread = policy_fidelity(Player(depth=1), positions, uniform)
    assert spread["missed_win_mass"] == pytest.approx(6 / 28)
    assert spread["losing_move_mass_by_plies"] == pytest.approx({"2": 2 / 28, "4": 4 / 28, "6": 3 / 28})
    assert spread["blunder_mass"] == pytest.approx(15 / 28)
    assert blunder_kinds(spread) == "0.214 / 0.071, 0.143, 0.107"
    # Sure of one column each: a six-ply loss, a four-ply one, a six-ply one, the win.
    on_the_loss = np.eye(7)[[1, 2, 0, 0]]
    sure = policy_fidelity(Player(depth=1), positions, list(on_the_loss))
    assert sure["losing_move_mass_by_plies"] == pytest.approx({"2": 0.0, "4": 0.25, "6": 0.5})
    assert sure["missed_win_mass"] == 0.0 and sure["blunder_mass"] == pytest.approx(0.75)
    shallow = policy_fidelity(Player(depth=1), positions, list(on_the_loss), depth=4)
    assert shallow["losing_move_mass_by_plies"] == pytest.approx({"2": 0.0, "4": 0.25})
    assert shallow["blunder_mass"] == pytest.approx(0.25)  # a shorter proof sees only the four-ply loss
    assert blunder_kinds({"blunder_mass": 0.1}) == "-"  # results written before the split


def test_no_blunder_in_a_lost_position() -> None:
    position = Position.from_moves(LOST)
    assert all(blunder(position, c) is None for c in position.legal_moves())
    moves = [(position, 4), (Position.from_moves(UNDER_THREAT), 4), (Position.from_moves("010101"), 3)]
    rates = blunder_rate(moves, depth=4)
    assert rates["blunder_rate"] == pytest.approx(2 / 3) and rates["missed_win_rate"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("blunder_share", [0.0, 0.5])
def test_policy_fidelity_against_a_players_exact_policy(blunder_share: float) -> None:
    position = Position.from_moves(UNDER_THREAT)  # columns 0 and 4 lose at once (depth 2)
    player = Player(depth=2, blunder=blunder_share)
    exact = player.policy(position)
    own = policy_fidelity(player, [position], [exact], depth=2)
    assert own["kl_from_player"] == pytest.approx(0.0, abs=1e-9)
    assert own["mass_on_player_moves"] == pytest.approx(1.0)
    assert own["blunder_mass"] == own["player_blunder_mass"] == pytest.approx(blunder_share * 2 / 7)
    uniform = position.action_mask() / 7
    spread = policy_fidelity(player, [position, position], [uniform, uniform], depth=2)
    entropy = -float((exact[exact > 0] * np.log(exact[exact > 0])).sum())
    assert spread["kl_from_player"] == pytest.approx(math.log(7) - entropy)
    assert spread["mass_on_player_moves"] == pytest.approx((exact > 0).sum() / 7)
    assert spread["blunder_mass"] == pytest.approx(2 / 7)
    assert spread["player_blunder_mass"] == pytest.approx(blunder_share * 2 / 7)
    assert spread["positions"] == 2
    with pytest.raises(ValueError, match="1 policies for 2 positions"):
        policy_fidelity(player, [position, position], [uniform])


def test_outcome_rates() -> None:
    assert outcome_rates([1.0, 1.0, 0.0, -1.0]) == {
        "win_rate": 0.5,
        "draw_rate": 0.25,
        "loss_rate": 0.25,
        "score": 0.625,
    }
    with pytest.raises(ValueError, match="no games"):
        outcome_rates([])


@pytest.mark.parametrize(
    ("agent_columns", "entropy", "kl"),
    [([3, 3, 3, 3], 0.0, math.log(3.0)), ([3, 2, 3, 2], math.log(2.0), math.log(1.5))],
)
def test_move_entropy_and_kl_in_shared_positions(agent_columns: list[int], entropy: float, kl: float) -> None:
    empty, elsewhere = Position(), Position.from_moves("0")
    data = [(empty, 3), (empty, 3), (empty, 2), (empty, 2), (elsewhere, 6)]
    # Smoothing 0.5 on the 7 legal columns: q(3) = q(2) = 2.5 / 7.5 = 1/3.
    agent = [(empty, c) for c in agent_columns] + [(elsewhere, 6)] * 3  # the data's one visit: ignored
    stats = move_statistics(agent, data, min_data_visits=2, smoothing=0.5)
    assert stats["move_entropy"] == pytest.approx(entropy)
    assert stats["kl_to_data"] == pytest.approx(kl)
    assert stats["shared_positions"] == 1 and stats["shared_moves"] == 4
    # With one visit enough, the position after "0" counts too: p(6) = 1, q(6) = 1.5 / 4.5.
    both = move_statistics(agent, data, min_data_visits=1, smoothing=0.5)
    assert both["kl_to_data"] == pytest.approx((4 * kl + 3 * math.log(3.0)) / 7)
    assert math.isnan(move_statistics([(Position.from_moves("1"), 1)], data)["kl_to_data"])


@pytest.mark.parametrize("p_centre", [1.0, 0.5])
def test_an_agents_policies_replace_its_move_counts(p_centre: float) -> None:
    # Two visits that both drew column 3 from p: the counts say p(3) = 1, the policies say p_centre.
    empty = Position()
    data = [(empty, 3)] * 3 + [(empty, 2)] * 3
    policy = np.zeros(7)
    policy[3], policy[2] = p_centre, 1 - p_centre
    stats = move_statistics([(empty, 3)] * 2, data, [policy, policy], min_data_visits=1)
    played = policy > 0
    q = (np.array([0, 0, 3, 3, 0, 0, 0]) + 0.5) / 9.5
    assert stats["move_entropy"] == pytest.approx(-(policy[played] * np.log(policy[played])).sum())
    assert stats["kl_to_data"] == pytest.approx((policy[played] * np.log(policy[played] / q[played])).sum())
    with pytest.raises(ValueError, match="1 policies for 2 moves"):
        move_statistics([(empty, 3)] * 2, data, [policy])


@pytest.mark.parametrize("score", [0.75, 0.25])
def test_fit_elo_recovers_the_logistic_rating(score: float) -> None:
    wins = int(400 * score)
    results = [("b", "a", 1.0)] * wins + [("b", "a", 0.0)] * (400 - wins)
    ratings = fit_elo(results, {"a": 100.0})
    expected = 100.0 + 400.0 * math.log10(score / (1 - score))
    assert ratings["a"] == 100.0
    assert ratings["b"] == pytest.approx(expected, abs=3.0)  # the weak prior pulls a little
    assert expected_score(ratings["b"], 100.0) == pytest.approx(score, abs=0.01)
    # Winning every game still gives a finite rating, above the anchor.
    assert 100.0 < fit_elo([("b", "a", 1.0)] * 10, {"a": 100.0})["b"] < 5000.0


def test_agents_are_measured_through_their_games() -> None:
    # A population player as an agent: deterministic games, legal moves, graded strength.
    strong, weak = EnginePlayerAgent(Player(depth=3)), EnginePlayerAgent(POPULATION["random"])
    kwargs = {"opponent_depth": 1, "opponent_blunder": 0.5}
    games = play_games(strong, 6, seed=0, **kwargs)
    again = play_games(strong, 6, seed=0, **kwargs)
    assert games.outcomes == again.outcomes and [m[1] for m in games.moves] == [m[1] for m in again.moves]
    assert all(column in position.legal_moves() for position, column in games.moves)
    assert games.policies == [None] * len(games.moves)  # an engine player reports no policy
    # The games are episodes as the data's are: the same moves read back, the outcome the return.
    assert len(games.episodes) == 6 and moves_of_episodes(games.episodes) == games.moves
    assert [e.episode_return for e in games.episodes] == games.outcomes
    env = ConnectFourEnv(**kwargs)
    for episode in games.episodes:
        episode.validate(env.observation_space, env.action_space)
        assert episode.terminations[-1] and not episode.terminations[:-1].any()
    weak_games = play_games(weak, 6, seed=0, **kwargs)
    assert outcome_rates(games.outcomes)["score"] > outcome_rates(weak_games.outcomes)["score"]
    assert blunder_rate(weak_games.moves)["blunder_rate"] > blunder_rate(games.moves)["blunder_rate"]
    ratings = {"random": 0.0, "novice": 150.0}
    elo_strong = elo_against_population(strong, ratings, games_per_player=4, seed=1)
    elo_weak = elo_against_population(weak, ratings, games_per_player=4, seed=1)
    assert elo_strong["elo"] > 150.0 > elo_weak["elo"]
    assert set(elo_strong) == {"elo", "score_vs_random", "score_vs_novice"}


def test_data_moves_are_the_players_moves() -> None:
    episodes = TESTBEDS["connect_four"].demonstrations({}, 5, np.random.default_rng(0))
    moves = moves_of_episodes(episodes)
    assert len(moves) == sum(len(e) for e in episodes)
    assert all(column in position.legal_moves() for position, column in moves)


def test_player_metrics_grade_the_population() -> None:
    episodes = TESTBEDS["connect_four"].demonstrations({}, 40, np.random.default_rng(0))
    metrics = player_metrics(episodes, depth=4)
    assert list(metrics) == list(POPULATION) and all(m["games"] == 8 for m in metrics.values())
    # The weakest player blunders most and scores least against the reference; the strongest never
    # makes a blunder its own search would see.
    assert (
        metrics["random"]["blunder_rate"]
        > metrics["casual"]["blunder_rate"]
        > metrics["expert"]["blunder_rate"]
    )
    assert metrics["expert"]["blunder_rate"] == 0.0
    assert metrics["random"]["score"] < metrics["expert"]["score"]
