"""Connect Four on bitboards: positions, legal moves, wins, depth-limited alpha-beta, proofs.

The board has 6 rows and 7 columns. A position is two Python ints (the classic layout of
John Tromp's and Pascal Pons' solvers): column ``c`` owns bits ``7c .. 7c+6``, bit
``7c + r`` is row ``r`` counted from the bottom, and bit ``7c + 6`` is an always-empty
sentinel that keeps the shifts of different columns apart. ``current`` holds the stones of
the side to move, ``mask`` every stone. Playing column ``c`` adds the lowest empty bit of
that column: ``mask + bottom(c)`` carries into it.

Search is negamax with alpha-beta, moves ordered centre first. Scores are from the side to
move: a win whose last stone is the ``n``-th of the game scores ``WIN + (43 - n)`` (sooner
is better), a loss the negative, a full board 0; anything with ``|score| > WIN`` is
*proven*. At the horizon (depth 0) a position is scored as a win for the side to move if
it can win at once, as a loss if the opponent has a threat it cannot stop (so a proof may
reach two plies past the depth), and otherwise by a heuristic: threats (empty cells that
would complete four) and centre stones of each side. :func:`forced_win` proves wins
within an exact number of plies, with no heuristic.

Everything here is pure and deterministic; randomness (tie-breaks, blunders) comes from a
``numpy.random.Generator`` the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROWS, COLUMNS = 6, 7
CELLS = ROWS * COLUMNS
_STRIDE = ROWS + 1  # bits per column: the rows and one sentinel
BOTTOM = sum(1 << (c * _STRIDE) for c in range(COLUMNS))
BOARD = BOTTOM * ((1 << ROWS) - 1)
_COLUMN = [((1 << ROWS) - 1) << (c * _STRIDE) for c in range(COLUMNS)]
_TOP = [1 << (ROWS - 1 + c * _STRIDE) for c in range(COLUMNS)]
ORDER = (3, 2, 4, 1, 5, 0, 6)
"""Columns in search order: the centre first, where most fours pass."""

WIN = 10_000
"""Scores above ``WIN`` (below ``-WIN``) are proven wins (losses) within the searched depth."""
_INF = 1_000_000
# Centre weights per column: how many horizontal fours pass through a cell of that column.
_CENTRE_WEIGHT = (1, 2, 3, 4, 3, 2, 1)
_CENTRE_MASKS = [sum(_COLUMN[c] for c in range(COLUMNS) if _CENTRE_WEIGHT[c] > w) for w in range(4)]
_THREAT_WEIGHT = 8  # one open threat outweighs a full column of centre preference


def win_score(stones: int) -> int:
    """Score of a win whose last stone is the ``stones``-th of the game (for the winner)."""
    return WIN + CELLS + 1 - stones


def is_proven(score: int) -> bool:
    """True if ``score`` is a win or loss proven by search, not a heuristic guess."""
    return abs(score) > WIN


# --------------------------------------------------------------------------- bit tricks


def has_four(stones: int) -> bool:
    """True if ``stones`` (one side's bitboard) contain four in a row in any direction."""
    for shift in (1, _STRIDE, _STRIDE - 1, _STRIDE + 1):  # vertical, horizontal, both diagonals
        pairs = stones & (stones >> shift)
        if pairs & (pairs >> (2 * shift)):
            return True
    return False


def threats(stones: int, mask: int) -> int:
    """Empty cells (anywhere on the board, playable or not) where ``stones`` would complete four."""
    found = (stones << 1) & (stones << 2) & (stones << 3)  # vertical: only upwards
    for shift in (_STRIDE, _STRIDE - 1, _STRIDE + 1):
        pair = (stones << shift) & (stones << 2 * shift)
        found |= pair & (stones << 3 * shift)
        found |= pair & (stones >> shift)
        pair = (stones >> shift) & (stones >> 2 * shift)
        found |= pair & (stones << shift)
        found |= pair & (stones >> 3 * shift)
    return found & (BOARD ^ mask)


def playable(mask: int) -> int:
    """One bit per non-full column: the cell a stone dropped there lands on."""
    return (mask + BOTTOM) & BOARD


def forks(stones: int, mask: int) -> int:
    """Playable cells where a stone of ``stones`` would leave it two wins in one at once.

    After the stone, either two playable cells complete its four, or one does with another of
    its four-cells right above it: one answer cannot block both (unless the answer wins)."""
    found = 0
    landing = playable(mask)
    while landing:
        cell = landing & -landing
        landing ^= cell
        after = mask | cell
        fours = threats(stones | cell, after)
        ready = fours & playable(after)
        if ready & (ready - 1) or ready & (fours >> 1):
            found |= cell
    return found


# Bit index of each cell, in cell order; a bitboard's 49 bits fit in one uint64.
_CELL_SHIFTS = np.array([c * _STRIDE + r for r in range(ROWS) for c in range(COLUMNS)], dtype=np.uint64)


def cells(bits: int) -> np.ndarray:
    """(42,) bool, one per cell of a bitboard: cell ``(row, column)`` at ``7 * row + column``."""
    return ((np.uint64(bits) >> _CELL_SHIFTS) & np.uint64(1)).astype(bool)


def column_of(bit: int) -> int:
    """The column of a single-bit move."""
    return (bit.bit_length() - 1) // _STRIDE


# --------------------------------------------------------------------------- positions


@dataclass(frozen=True)
class Position:
    """A Connect Four position: ``current`` = stones of the side to move, ``mask`` = all stones."""

    current: int = 0
    mask: int = 0
    moves: int = 0
    """Stones on the board; the first player is to move when it is even."""

    @classmethod
    def from_moves(cls, columns: str | list[int]) -> Position:
        """Play a sequence of columns (``"3342"`` or ``[3, 3, 4, 2]``, 0-based) from the empty board.

        Raises ``ValueError`` on a full column or a move after the game is won."""
        position = cls()
        for column in columns:
            position = position.play(int(column))
        return position

    @property
    def opponent(self) -> int:
        """Stones of the side that just moved."""
        return self.current ^ self.mask

    def legal_moves(self) -> list[int]:
        """Columns that are not full, in increasing order (empty once the game is over)."""
        if self.is_over():
            return []
        return [c for c in range(COLUMNS) if not self.mask & _TOP[c]]

    def action_mask(self) -> np.ndarray:
        """(7,) int8: 1 where the column is a legal move."""
        mask = np.zeros(COLUMNS, dtype=np.int8)
        mask[self.legal_moves()] = 1
        return mask

    def play(self, column: int) -> Position:
        """The position after the side to move drops a stone in ``column``."""
        if not 0 <= column < COLUMNS or self.mask & _TOP[column]:
            raise ValueError(f"column {column} is not a legal move (full or off the board)")
        if self.is_over():
            raise ValueError("the game is over")
        mask = self.mask | (self.mask + (1 << (column * _STRIDE)))
        return Position(self.current ^ self.mask, mask, self.moves + 1)

    def wins(self, column: int) -> bool:
        """True if playing ``column`` (legal) completes four for the side to move."""
        bit = playable(self.mask) & _COLUMN[column]
        return bool(bit & threats(self.current, self.mask))

    def winning_moves(self) -> list[int]:
        """Columns where the side to move wins at once."""
        if self.is_over():
            return []
        bits = playable(self.mask) & threats(self.current, self.mask)
        return [c for c in range(COLUMNS) if bits & _COLUMN[c]]

    def last_mover_won(self) -> bool:
        """True if the side that just moved has four in a row."""
        return has_four(self.opponent)

    def is_over(self) -> bool:
        """A win for the last mover, or a full board."""
        return self.moves >= CELLS or self.last_mover_won()

    def board(self) -> np.ndarray:
        """(6, 7) int8, row 0 at the bottom: +1 stones of the side to move, −1 the other side's."""
        board: np.ndarray = cells(self.current).astype(np.int8) - cells(self.opponent)
        return board.reshape(ROWS, COLUMNS)

    @classmethod
    def from_board(cls, board: np.ndarray) -> Position:
        """Inverse of :meth:`board`: (6, 7) with +1 for the side to move, −1 the other, 0 empty.

        Raises ``ValueError`` if a stone floats or the counts cannot be a game's."""
        board = np.asarray(board).reshape(ROWS, COLUMNS)
        current = mask = 0
        for c in range(COLUMNS):
            column = board[:, c]
            height = int(np.count_nonzero(column))
            if np.any(column[:height] == 0) or np.any(column[height:] != 0):
                raise ValueError(f"column {c} has a floating stone: {column.tolist()} (row 0 is the bottom)")
            for r in range(height):
                bit = 1 << (c * _STRIDE + r)
                mask |= bit
                if column[r] > 0:
                    current |= bit
        mine, theirs = int(np.sum(board > 0)), int(np.sum(board < 0))
        if theirs - mine not in (0, 1):
            raise ValueError(
                f"the side to move has {mine} stones and the other {theirs}: not a game position"
            )
        return cls(current, mask, mine + theirs)

    def key(self) -> int:
        """A unique integer per position (for tables)."""
        return self.current + self.mask


# --------------------------------------------------------------------------- search


def heuristic(current: int, mask: int) -> int:
    """Static score for the side to move: threats and centre stones, theirs subtracted."""
    opponent = current ^ mask
    score = _THREAT_WEIGHT * (threats(current, mask).bit_count() - threats(opponent, mask).bit_count())
    for centre in _CENTRE_MASKS:
        score += (current & centre).bit_count() - (opponent & centre).bit_count()
    return score


def negamax(current: int, mask: int, moves: int, depth: int, alpha: int, beta: int) -> int:
    """Alpha-beta value of a position whose last move did not win, for the side to move.

    ``depth`` plies are searched; see the module docstring for the scale. Fail-soft: a value
    at or below ``alpha`` (at or above ``beta``) is a bound."""
    if moves >= CELLS:
        return 0
    possible = (mask + BOTTOM) & BOARD
    if possible & threats(current, mask):
        return win_score(moves + 1)
    opponent_threats = threats(current ^ mask, mask)
    forced = possible & opponent_threats
    if forced:
        if forced & (forced - 1):  # two threats to block at once: the opponent wins next move
            return -win_score(moves + 2)
        possible = forced
    possible &= ~(opponent_threats >> 1)  # a stone under an opponent threat lets it win there
    if not possible:
        return -win_score(moves + 2)
    if depth <= 0:
        return heuristic(current, mask)
    best = -_INF
    opponent = current ^ mask
    for column in ORDER:
        bit = possible & _COLUMN[column]
        if not bit:
            continue
        score = -negamax(opponent, mask | bit, moves + 1, depth - 1, -beta, -alpha)
        if score > best:
            best = score
            if score > alpha:
                alpha = score
                if alpha >= beta:
                    break
    return best


def move_scores(position: Position, depth: int) -> dict[int, int]:
    """Score of each legal column at ``depth`` plies (the move itself is the first ply).

    The best columns' scores are exact, so ties among them are exact; a worse column's score
    may be an upper bound (alpha-beta cut it off), which is never above the best."""
    if position.is_over():
        return {}
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    scores: dict[int, int] = {}
    best = -_INF
    opponent = position.opponent
    for column in ORDER:
        if position.mask & _TOP[column]:
            continue
        bit = playable(position.mask) & _COLUMN[column]
        if bit & threats(position.current, position.mask):
            score = win_score(position.moves + 1)
        else:
            # alpha = best - 1: a column that ties the best returns its exact score.
            score = -negamax(opponent, position.mask | bit, position.moves + 1, depth - 1, -_INF, -(best - 1))
        scores[column] = score
        best = max(best, score)
    return dict(sorted(scores.items()))


def best_moves(position: Position, depth: int) -> list[int]:
    """The columns tied for the best score at ``depth`` plies, in increasing order."""
    scores = move_scores(position, depth)
    top = max(scores.values())
    return [c for c, s in scores.items() if s == top]


def forced_win(position: Position, plies: int) -> bool:
    """True if the side to move can force a win with its stone landing within ``plies`` plies.

    A proof with no heuristic: ``plies=1`` is a win at once, ``plies=3`` a win whatever the
    opponent answers to one move, and so on (even ``plies`` add nothing over ``plies - 1``)."""
    if position.is_over():
        return False
    return _forced_win(position.current, position.mask, position.moves, plies)


def loses(position: Position, column: int, plies: int) -> bool:
    """True if after the side to move's stone in ``column`` the opponent can force a win within
    ``plies`` plies, the move itself first (``plies=2``: it wins at once)."""
    return forced_win(position.play(column), plies - 1)


def _forced_win(current: int, mask: int, moves: int, plies: int) -> bool:
    if plies < 1 or moves >= CELLS:
        return False
    possible = (mask + BOTTOM) & BOARD
    if possible & threats(current, mask):
        return True
    if plies < 3 or moves + 3 > CELLS:
        return False
    opponent = current ^ mask
    opponent_threats = threats(opponent, mask)
    forced = possible & opponent_threats
    if forced:
        if forced & (forced - 1):
            return False
        possible = forced
    possible &= ~(opponent_threats >> 1)
    for column in ORDER:
        bit = possible & _COLUMN[column]
        if bit and _opponent_loses(opponent, mask | bit, moves + 1, plies - 1):
            return True
    return False


def _opponent_loses(current: int, mask: int, moves: int, plies: int) -> bool:
    # The side to move (who cannot win at once: the caller left no playable threat of theirs
    # unblocked) loses if every reply leaves the other side a forced win in plies - 1.
    if moves >= CELLS:
        return False
    possible = (mask + BOTTOM) & BOARD
    if possible & threats(current, mask):
        return False
    opponent = current ^ mask
    for column in ORDER:
        bit = possible & _COLUMN[column]
        if bit and not _forced_win(opponent, mask | bit, moves + 1, plies - 1):
            return False
    return True


def perft(position: Position, depth: int) -> tuple[int, int]:
    """``(leaves, wins)``: positions reached after exactly ``depth`` plies (games that end earlier
    stop there), and how many of all positions visited on the way end the game with a win."""
    if depth == 0:
        return 1, 0
    leaves = wins = 0
    for column in position.legal_moves():
        child = position.play(column)
        if child.last_mover_won():
            wins += 1
            continue
        n, w = perft(child, depth - 1)
        leaves += n
        wins += w
    return leaves, wins


# --------------------------------------------------------------------------- players


@dataclass(frozen=True)
class Player:
    """A search player: with probability ``blunder`` a uniformly random legal move, otherwise
    one of the best moves of a ``depth``-ply search, ties broken at random."""

    depth: int = 2
    """Plies searched (1: its own move, scored by the heuristic)."""
    blunder: float = 0.0
    """Probability of a uniformly random legal move instead of the search's choice."""

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")
        if not 0.0 <= self.blunder <= 1.0:
            raise ValueError(f"blunder must be a probability in [0, 1], got {self.blunder}")

    def policy(self, position: Position) -> np.ndarray:
        """(7,) the probability of each column: the distribution :meth:`move` draws from (the
        blunder share spread over the legal columns, the rest over the search's best ones)."""
        legal = position.legal_moves()
        if not legal:
            raise ValueError("no legal move: the game is over")
        probabilities = np.zeros(COLUMNS)
        probabilities[legal] += self.blunder / len(legal)
        if self.blunder < 1:
            best = best_moves(position, self.depth)
            probabilities[best] += (1 - self.blunder) / len(best)
        return probabilities

    def move(self, position: Position, rng: np.random.Generator) -> int:
        """A column for the side to move; draws from ``rng`` in a fixed order (determinism)."""
        legal = position.legal_moves()
        if not legal:
            raise ValueError("no legal move: the game is over")
        # Draw both numbers every move so the stream does not depend on the branch taken.
        coin, pick = rng.random(), rng.random()
        choices = legal if coin < self.blunder else best_moves(position, self.depth)
        return choices[int(pick * len(choices))]
