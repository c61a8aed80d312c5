"""How an agent plays Connect Four: blunders, outcomes, move entropy, KL to the data, Elo.

Every metric works on *moves*: ``(position, column)`` pairs of the player being measured,
which come from a dataset's episodes (:func:`moves_of_episodes`) or from an agent's games
(:func:`play_games`). The pure functions take those pairs, so the same code measures the
data's players and the agents made from a simulator.

- **Blunder** (:func:`blunder`): a move that misses a win in one, or that turns a position
  where some move avoids a forced loss within ``depth`` plies into one where the opponent
  forces a win (proved by exhaustive search, no heuristic).
- **Fidelity to a player** (:func:`policy_fidelity`): in given positions, how far a move
  distribution is from a population player's exact policy, and how much probability each
  puts on blunders.
- **Outcome rates** (:func:`outcome_rates`): win/draw/loss fractions of games.
- **Move entropy and KL to the data** (:func:`move_statistics`): per position that the agent
  visits and the data visits often (the openings), the entropy of the agent's move
  distribution there and its KL divergence from the data's; averaged with the agent's visit
  counts as weights. A sampling agent's distribution is the policy it drew from
  (:attr:`~simagents.agents.SimulatorAgent.action_probabilities`), not its one or two draws:
  counted from single visits, a faithful imitator would look deterministic and far from the
  data (measured on the quick study's simulator, all shared positions counted: imitation
  entropy 0.62 and KL 1.02 nats, against 1.36 and 0.15 from its policies in positions the
  data visits 20 times or more).
- **Elo** (:func:`fit_elo`, :func:`population_elo`, :func:`elo_against_population`): a
  logistic (Bradley–Terry) fit of game scores, with the population's ratings fitted from
  games among its players.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from simagents.agents.base import Agent
from simagents.agents.evaluate import evaluate
from simagents.data.episodes import Episode, episode_from_arrays
from simagents.envs.connect_four import (
    POPULATION,
    ConnectFourEnv,
    EnginePlayerAgent,
    position_from_observation,
)
from simagents.envs.connect_four_engine import COLUMNS, Player, Position, loses

Move = tuple[Position, int]
"""A position with the side to move and the column it played."""

BLUNDER_DEPTH = 6
"""Default proof depth (plies, the move itself first): 6 catches a move after which the
opponent forces a win with one of its next three stones, whatever is answered (about a
millisecond per move; 4 and 2 see less far)."""

ELO_SCALE = 400.0
"""Elo points per factor of 10 in the odds of winning."""


# --------------------------------------------------------------------------- blunders


def blunder(position: Position, column: int, depth: int = BLUNDER_DEPTH) -> str | None:
    """``"missed_win"``, ``"losing_move"`` or None for the side to move playing ``column``.

    ``missed_win``: a win in one was on the board and ``column`` does not take it.
    ``losing_move``: after ``column`` the opponent can force a win within ``depth - 1``
    plies, while some other legal column would have left it no such win."""
    if depth < 2:
        raise ValueError(f"depth must be at least 2 (the move and the opponent's answer), got {depth}")
    winning = position.winning_moves()
    if winning:
        return None if column in winning else "missed_win"
    if loses(position, column, depth):
        others = (c for c in position.legal_moves() if c != column)
        if any(not loses(position, c, depth) for c in others):
            return "losing_move"
    return None


def losing_plies(position: Position, column: int, depth: int = BLUNDER_DEPTH) -> int | None:
    """The fewest plies (the move itself first) within which the opponent forces a win after
    ``column``: 2 (it wins at once), 4 (a threat the mover cannot meet, e.g. a fork), 6 ...;
    None if it forces none within ``depth``. How far ahead a player must look to avoid the move."""
    for plies in range(2, depth + 1, 2):  # the opponent moves, and so can win, on even plies only
        if loses(position, column, plies):
            return plies
    return None


def blunder_rate(moves: Iterable[Move], depth: int = BLUNDER_DEPTH) -> dict[str, Any]:
    """``{"blunder_rate", "missed_win_rate", "losing_move_rate", "losing_move_rate_by_plies",
    "moves"}`` over ``moves``; ``losing_move_rate_by_plies`` splits the losing moves by
    :func:`losing_plies` (keys ``"2"``, ``"4"``, ... up to ``depth``)."""
    moves = list(moves)
    found = [blunder(position, column, depth) for position, column in moves]
    kinds = Counter(found)
    n = len(found)
    if n == 0:
        raise ValueError("no moves to measure")
    plies = Counter(
        losing_plies(position, column, depth)
        for (position, column), kind in zip(moves, found, strict=True)
        if kind == "losing_move"
    )
    return {
        "blunder_rate": (kinds["missed_win"] + kinds["losing_move"]) / n,
        "missed_win_rate": kinds["missed_win"] / n,
        "losing_move_rate": kinds["losing_move"] / n,
        "losing_move_rate_by_plies": {str(d): plies[d] / n for d in range(2, depth + 1, 2)},
        "moves": float(n),
    }


def policy_fidelity(
    player: Player,
    positions: Sequence[Position],
    policies: Sequence[np.ndarray],
    depth: int = BLUNDER_DEPTH,
) -> dict[str, Any]:
    """How closely move distributions follow ``player``'s exact policy (:meth:`Player.policy`),
    one distribution per position (each (7,), zero on illegal columns), averaged over positions.

    ``kl_from_player``: KL(player || policy) in nats; ``mass_on_player_moves``: the probability
    on columns the player might play; ``blunder_mass`` and ``player_blunder_mass``: the
    probability each puts on :func:`blunder` columns, i.e. its expected blunders per move in
    these positions, exact where :func:`blunder_rate` counts sampled moves. An imitator of
    ``player`` read in the player's own positions gives the error of its policy alone; in the
    positions its own games reach, also where its play leads. ``missed_win_mass`` and
    ``losing_move_mass_by_plies`` split ``blunder_mass`` as :func:`blunder_rate` splits the
    blunders: which mistakes the policy still makes (the two-ply ones are on the board, the
    longer ones need a search)."""
    if len(positions) != len(policies):
        raise ValueError(f"{len(policies)} policies for {len(positions)} positions")
    if not positions:
        raise ValueError("no positions to measure")
    kl = on_player = blunders = player_blunders = missed_wins = 0.0
    by_plies = dict.fromkeys(range(2, depth + 1, 2), 0.0)
    for position, policy in zip(positions, policies, strict=True):
        exact = player.policy(position)
        q = np.asarray(policy, dtype=np.float64)
        support = exact > 0
        kl += float((exact[support] * np.log(exact[support] / np.maximum(q[support], 1e-12))).sum())
        on_player += float(q[support].sum())
        kinds = {c: blunder(position, c, depth) for c in position.legal_moves()}
        bad = [c for c, kind in kinds.items() if kind is not None]
        blunders += float(q[bad].sum())
        player_blunders += float(exact[bad].sum())
        for column, kind in kinds.items():
            if kind == "missed_win":
                missed_wins += float(q[column])
            elif kind == "losing_move":
                plies = losing_plies(position, column, depth)
                assert plies is not None  # a losing move loses within the proof's depth
                by_plies[plies] += float(q[column])
    n = len(positions)
    return {
        "kl_from_player": kl / n,
        "mass_on_player_moves": on_player / n,
        "blunder_mass": blunders / n,
        "player_blunder_mass": player_blunders / n,
        "missed_win_mass": missed_wins / n,
        "losing_move_mass_by_plies": {str(d): mass / n for d, mass in by_plies.items()},
        "positions": float(n),
    }


def blunder_kinds(fidelity: dict[str, Any]) -> str:
    """``fidelity``'s blunder probability split by kind, e.g. ``0.001 / 0.002, 0.005, 0.004``
    ("-" for results written before the split)."""
    if "losing_move_mass_by_plies" not in fidelity:
        return "-"
    plies = ", ".join(f"{mass:.3f}" for mass in fidelity["losing_move_mass_by_plies"].values())
    return f"{fidelity['missed_win_mass']:.3f} / {plies}"


# --------------------------------------------------------------------------- games


@dataclass
class Games:
    """What :func:`play_games` saw: the agent's moves and each game's reward (+1, 0, −1)."""

    moves: list[Move] = field(default_factory=list)
    outcomes: list[float] = field(default_factory=list)
    policies: list[np.ndarray | None] = field(default_factory=list)
    """Per move, the (7,) distribution the agent drew it from (its ``action_probabilities``),
    or None where the agent does not say (then the move itself is the only evidence)."""
    episodes: list[Episode] = field(default_factory=list)
    """Each game from the agent's side, as the data's episodes are (observations, actions,
    rewards, termination), so a simulator can read an agent's games as it reads the players'."""


class _RecordMoves(gym.Wrapper):
    """Records the engine position before each of the agent's moves, and each game's outcome."""

    def __init__(self, env: ConnectFourEnv, games: Games, agent: Agent) -> None:
        super().__init__(env)
        self.connect_four = env
        self.games = games
        self.agent = agent

    def reset(self, **kwargs: Any) -> Any:
        observation, info = self.env.reset(**kwargs)
        self.steps: dict[str, list[Any]] = {"observations": [observation], "actions": [], "rewards": []}
        return observation, info

    def step(self, action: Any) -> Any:
        position = self.connect_four.position
        out = self.env.step(action)
        self.games.moves.append((position, int(action)))
        self.games.policies.append(getattr(self.agent, "action_probabilities", None))
        self.steps["observations"].append(out[0])
        self.steps["actions"].append(int(action))
        self.steps["rewards"].append(float(out[1]))
        if out[2] or out[3]:
            self.games.outcomes.append(float(out[1]))
            length = len(self.steps["actions"])
            ended = np.zeros(length, dtype=bool)
            ended[-1] = True
            self.games.episodes.append(
                episode_from_arrays(
                    np.stack(self.steps["observations"]),
                    np.array(self.steps["actions"]),
                    np.array(self.steps["rewards"]),
                    terminations=ended & bool(out[2]),
                    truncations=ended & bool(out[3]),
                    observation_space=self.observation_space,
                    action_space=self.action_space,
                )
            )
        return out


def play_games(agent: Agent, episodes: int, seed: int = 0, **env_kwargs: Any) -> Games:
    """Play ``episodes`` games of ``agent`` in ``ConnectFourEnv(**env_kwargs)`` (seeds seed, seed+1...)."""
    games = Games()
    evaluate(agent, _RecordMoves(ConnectFourEnv(**env_kwargs), games, agent), episodes, seed=seed)
    return games


def moves_of_episodes(episodes: Iterable[Episode]) -> list[Move]:
    """The ``(position, column)`` of every step of Connect Four episodes (the agent's side)."""
    return [
        (position_from_observation(episode.observations[t]), int(episode.actions[t]))
        for episode in episodes
        for t in range(len(episode))
    ]


def outcome_rates(outcomes: Sequence[float]) -> dict[str, float]:
    """``{"win_rate", "draw_rate", "loss_rate", "score"}`` of game rewards (+1, 0, −1);
    ``score`` counts a draw as half a win."""
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no games to measure")
    win, draw, loss = (float(np.mean(values == v)) for v in (1.0, 0.0, -1.0))
    return {"win_rate": win, "draw_rate": draw, "loss_rate": loss, "score": win + 0.5 * draw}


def player_metrics(episodes: Sequence[Episode], depth: int = BLUNDER_DEPTH) -> dict[str, dict[str, Any]]:
    """Outcome and blunder rates of each player (``Episode.policy``) in Connect Four episodes."""
    by_player: dict[str, list[Episode]] = {}
    for episode in episodes:
        by_player.setdefault(episode.policy, []).append(episode)
    return {
        name: {
            **outcome_rates([e.episode_return for e in games]),
            **blunder_rate(moves_of_episodes(games), depth),
            "games": float(len(games)),
        }
        for name, games in by_player.items()
    }


# --------------------------------------------------------------------------- move distributions


MIN_DATA_VISITS = 20
"""Visits a position needs in the data before its move distribution there is compared: below
that the data's frequencies are too few draws to say how its players move."""


def move_distributions(
    moves: Sequence[Move], policies: Sequence[np.ndarray | None] | None = None
) -> dict[int, tuple[Position, np.ndarray, int]]:
    """Per position key: the position, the summed move distributions of its visits (7,) and the
    number of visits. A visit adds its policy where one is given, else a count on its move."""
    out: dict[int, tuple[Position, np.ndarray, int]] = {}
    for (position, column), policy in zip(moves, policies or [None] * len(moves), strict=True):
        key = position.key()
        _, total, visits = out.get(key, (position, np.zeros(COLUMNS), 0))
        if policy is None:
            total[column] += 1
        else:
            total += np.asarray(policy, dtype=np.float64)
        out[key] = (position, total, visits + 1)
    return out


def move_statistics(
    agent_moves: Sequence[Move],
    data_moves: Sequence[Move],
    agent_policies: Sequence[np.ndarray | None] | None = None,
    min_data_visits: int = MIN_DATA_VISITS,
    smoothing: float = 0.5,
) -> dict[str, float]:
    """Move entropy of the agent and its KL divergence from the data, in the positions both visit
    that the data visits at least ``min_data_visits`` times (the openings, in practice).

    In each such position, ``p`` is the agent's move distribution: the mean of the policies it
    drew its moves from there (``agent_policies``, exact for a sampling agent), or its move
    frequencies where it gives none (exact for a deterministic one; for a sampling agent's few
    visits a plug-in that understates its entropy). ``q`` is the data's: counts plus
    ``smoothing`` on every legal column, so a move the data never made there costs a finite
    amount. Entropy ``H(p)`` and ``KL(p || q)`` in nats, averaged with the agent's visits as
    weights. Returns ``{"move_entropy", "kl_to_data", "shared_positions", "shared_moves"}``;
    NaN for the first two if no position qualifies."""
    if smoothing <= 0:
        raise ValueError(f"smoothing must be positive (else KL can be infinite), got {smoothing}")
    if agent_policies is not None and len(agent_policies) != len(agent_moves):
        raise ValueError(f"{len(agent_policies)} policies for {len(agent_moves)} moves")
    agent = move_distributions(agent_moves, agent_policies)
    data = move_distributions(data_moves)
    entropy = kl = weight = 0.0
    shared = 0
    for key, (position, total, n) in agent.items():
        if key not in data or data[key][2] < min_data_visits:
            continue
        q = data[key][1] + smoothing * position.action_mask()
        q = q / q.sum()
        p = total / n
        played = p > 0
        entropy += n * float(-(p[played] * np.log(p[played])).sum())
        kl += n * float((p[played] * np.log(p[played] / q[played])).sum())
        weight += n
        shared += 1
    if weight == 0:
        return {
            "move_entropy": math.nan,
            "kl_to_data": math.nan,
            "shared_positions": 0.0,
            "shared_moves": 0.0,
        }
    return {
        "move_entropy": entropy / weight,
        "kl_to_data": kl / weight,
        "shared_positions": float(shared),
        "shared_moves": weight,
    }


# --------------------------------------------------------------------------- Elo


def expected_score(rating: float | np.ndarray, opponent: float | np.ndarray) -> Any:
    """Elo's expected score of ``rating`` against ``opponent``: 1 / (1 + 10^((opp − r)/400))."""
    return 1.0 / (1.0 + 10.0 ** ((np.asarray(opponent) - np.asarray(rating)) / ELO_SCALE))


def fit_elo(
    results: Sequence[tuple[str, str, float]],
    fixed: Mapping[str, float],
    prior_sd: float = 800.0,
    iterations: int = 100,
) -> dict[str, float]:
    """Ratings from game results ``(player, opponent, score)`` (score 1 win, 0.5 draw, 0 loss).

    Maximises the logistic (Bradley–Terry) likelihood by Newton's method, with the players
    in ``fixed`` held at their ratings (the scale's anchor) and a Gaussian prior
    N(mean of ``fixed``, ``prior_sd``²) on the others, so a player who won or lost every
    game still gets a finite rating. Every player in ``fixed`` is returned unchanged."""
    if not fixed:
        raise ValueError("fit_elo needs at least one player with a fixed rating (the anchor)")
    names = sorted({name for a, b, _ in results for name in (a, b)} - set(fixed))
    index = {name: i for i, name in enumerate(names)}
    centre = float(np.mean(list(fixed.values())))
    ratings = np.full(len(names), centre)
    c = math.log(10.0) / ELO_SCALE
    for _ in range(iterations):
        grad = -(ratings - centre) / prior_sd**2
        hess = np.diag(np.full(len(names), -1.0 / prior_sd**2))
        for a, b, score in results:
            ra = fixed[a] if a in fixed else ratings[index[a]]
            rb = fixed[b] if b in fixed else ratings[index[b]]
            e = float(expected_score(ra, rb))
            g, h = c * (score - e), c * c * e * (1 - e)
            for name, sign in ((a, 1.0), (b, -1.0)):
                if name in index:
                    grad[index[name]] += sign * g
                    hess[index[name], index[name]] -= h
            if a in index and b in index:
                hess[index[a], index[b]] += h
                hess[index[b], index[a]] += h
        step = np.linalg.solve(hess, grad)
        ratings = ratings - step
        if np.max(np.abs(step)) < 1e-6:
            break
    return {**dict(fixed), **{name: float(ratings[i]) for i, name in enumerate(names)}}


def population_games(
    games_per_pair: int, seed: int = 0, players: Mapping[str, Any] = POPULATION, agent_first: float = 0.5
) -> list[tuple[str, str, float]]:
    """Round robin of ``players``: ``games_per_pair`` games per ordered pair, as Elo results."""
    results = []
    for i, (a, pa) in enumerate(players.items()):
        for j, (b, pb) in enumerate(players.items()):
            if a == b:
                continue
            games = play_games(
                EnginePlayerAgent(pa),
                games_per_pair,
                seed=seed + 1000 * (i * len(players) + j),
                opponent_depth=pb.depth,
                opponent_blunder=pb.blunder,
                agent_first=agent_first,
            )
            results += [(a, b, (outcome + 1.0) / 2.0) for outcome in games.outcomes]
    return results


def population_elo(
    games_per_pair: int, seed: int = 0, anchor: str = "random", anchor_rating: float = 0.0
) -> dict[str, float]:
    """Elo of every :data:`POPULATION` player from a round robin, ``anchor`` held at ``anchor_rating``."""
    return fit_elo(population_games(games_per_pair, seed), {anchor: anchor_rating})


def elo_against_population(
    agent: Agent, ratings: Mapping[str, float], games_per_player: int, seed: int = 0, agent_first: float = 0.5
) -> dict[str, float]:
    """The agent's Elo from ``games_per_player`` games against each rated population player.

    Returns ``{"elo": rating, "score_vs_<name>": score...}``."""
    results, out = [], {}
    for i, name in enumerate(ratings):
        player = POPULATION[name]
        games = play_games(
            agent,
            games_per_player,
            seed=seed + 1000 * i,
            opponent_depth=player.depth,
            opponent_blunder=player.blunder,
            agent_first=agent_first,
        )
        scores = [(outcome + 1.0) / 2.0 for outcome in games.outcomes]
        results += [("agent", name, s) for s in scores]
        out[f"score_vs_{name}"] = float(np.mean(scores))
    return {"elo": fit_elo(results, dict(ratings))["agent"], **out}
