"""The Connect Four engine: move generation, wins, search and proofs on known positions."""

import numpy as np
import pytest

from simagents.envs.connect_four_engine import (
    WIN,
    Player,
    Position,
    best_moves,
    forced_win,
    has_four,
    is_proven,
    move_scores,
    negamax,
    perft,
    win_score,
)


@pytest.mark.parametrize(("depth", "leaves"), [(1, 7), (2, 49), (3, 343), (4, 2401), (5, 16807), (6, 117649)])
def test_perft_counts_from_the_empty_board(depth: int, leaves: int) -> None:
    # No game ends before ply 7, so every sequence of columns is a distinct leaf: 7^depth.
    assert perft(Position(), depth) == (leaves, 0)


def test_a_game_can_end_at_ply_seven() -> None:
    position = Position.from_moves("010101")
    assert not position.is_over()
    assert position.play(0).last_mover_won() and position.play(0).is_over()
    assert perft(position, 1) == (6, 1)  # the win stops there; the six other columns go on


@pytest.mark.parametrize(
    ("moves", "winning"),
    [
        ("010101", [0]),  # vertical: three in column 0
        ("061626", [3]),  # horizontal: 0, 1, 2 on the bottom row
        ("0112232336", [3]),  # rising diagonal 0-1-2 ready at (3, row 3)
        ("3030", []),
    ],
)
def test_win_in_one_is_found(moves: str, winning: list[int]) -> None:
    position = Position.from_moves(moves)
    assert position.winning_moves() == winning
    for column in position.legal_moves():
        assert position.wins(column) == (column in winning)
        assert position.play(column).last_mover_won() == (column in winning)
    if winning:
        assert best_moves(position, 1) == winning == best_moves(position, 4)
        assert forced_win(position, 1)
    else:
        assert not forced_win(position, 1)


def test_search_blocks_the_only_threat_and_sees_a_double_threat() -> None:
    # Second player to move; the first has 0, 1, 2 on the bottom row: only column 3 saves it.
    position = Position.from_moves("05152")
    assert best_moves(position, 1) == [3] == best_moves(position, 3)
    # First player to move with 1, 2 on the bottom row: playing 3 makes two threats at once
    # (0 and 4), a win in three plies the opponent cannot stop; no other column does.
    open_two = Position.from_moves("1626")
    assert forced_win(open_two, 3) and not forced_win(open_two, 1)
    scores = move_scores(open_two, 3)
    assert is_proven(scores[3]) and scores[3] > 0
    assert best_moves(open_two, 3) == [3]
    assert not any(is_proven(s) for c, s in scores.items() if c != 3)


def test_forced_win_counts_plies() -> None:
    open_two = Position.from_moves("1626")
    assert not forced_win(open_two, 2)  # even plies add nothing over the odd one below
    assert forced_win(open_two, 3) and forced_win(open_two, 5)
    assert not forced_win(Position(), 5)


def test_board_round_trip_and_bad_boards() -> None:
    position = Position.from_moves("3342105")
    board = position.board()
    assert board.sum() == -1  # the side to move (second player) has one stone fewer
    assert Position.from_board(board) == position
    with pytest.raises(ValueError, match="floating stone"):
        bad = np.zeros((6, 7), dtype=np.int8)
        bad[1, 0] = 1
        Position.from_board(bad)
    with pytest.raises(ValueError, match="not a legal move"):
        Position.from_moves("0000000")
    assert has_four(Position.from_moves("0101010").opponent)


def test_players_are_deterministic_under_a_seed_and_differ_in_strength() -> None:
    def game(first: Player, second: Player, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        position, moves = Position(), []
        while not position.is_over():
            player = first if position.moves % 2 == 0 else second
            moves.append(player.move(position, rng))
            position = position.play(moves[-1])
        return moves

    strong, weak = Player(depth=3), Player(depth=1, blunder=1.0)
    assert game(strong, weak, 5) == game(strong, weak, 5)
    assert game(strong, weak, 5) != game(strong, weak, 6)
    wins = sum(len(game(strong, weak, s)) % 2 == 1 for s in range(10))  # odd length: first won
    assert wins >= 9
    with pytest.raises(ValueError, match="blunder"):
        Player(depth=2, blunder=1.5)


@pytest.mark.parametrize(
    ("player", "moves", "expected"),
    [
        # a win in one in column 0: the searcher takes it; the rest is the blunder share, spread
        (Player(depth=2, blunder=0.0), "010102", [1, 0, 0, 0, 0, 0, 0]),
        (Player(depth=2, blunder=0.35), "010102", [0.7, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]),
        # a full column 0 is not legal, even for the random player
        (Player(depth=1, blunder=1.0), "000000", [0, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6]),
    ],
)
def test_a_players_policy_is_what_its_moves_are_drawn_from(
    player: Player, moves: str, expected: list[float]
) -> None:
    position = Position.from_moves(moves)
    policy = player.policy(position)
    np.testing.assert_allclose(policy, expected, atol=1e-12)
    rng = np.random.default_rng(0)
    draws = np.bincount([player.move(position, rng) for _ in range(4000)], minlength=7) / 4000
    np.testing.assert_allclose(draws, policy, atol=0.03)


def test_alpha_beta_agrees_with_a_full_window_search_and_with_proofs() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(6):
        position = Position()
        while not position.is_over():
            for depth in (1, 2, 3):
                # Each column scored alone with an unbounded window: no cut-offs at the root.
                full = {
                    c: win_score(position.moves + 1)
                    if position.wins(c)
                    else -negamax(
                        position.opponent,
                        position.play(c).mask,
                        position.moves + 1,
                        depth - 1,
                        -(10**9),
                        10**9,
                    )
                    for c in position.legal_moves()
                }
                top = max(full.values())
                assert best_moves(position, depth) == [c for c, s in full.items() if s == top]
                assert max(move_scores(position, depth).values()) == top
                # A forced win within `depth` plies is one the search proves (it sees a bit further).
                if forced_win(position, depth):
                    assert top > WIN
                checked += 1
            position = position.play(int(rng.choice(position.legal_moves())))
    assert checked > 150
