"""Connect Four against a search opponent, and a population of players of graded strength
(seed 003: a simulator of many players versus an agent that always tries to win).

The agent plays one side of a 6×7 board; the env plays the other with a
:class:`~simagents.envs.connect_four_engine.Player`: a ``opponent_depth``-ply alpha-beta
search that plays a uniformly random legal move with probability ``opponent_blunder``.
The agent moves first with probability ``agent_first`` (drawn at each reset).

- Observation: ``Box(0, 1, (420,), float32)``, the board from the agent's side as ten
  planes of 42 cells (cell ``(row, column)`` of a plane at index ``7 * row + column``, row 0
  at the bottom), each 1 where: the agent's stones; the opponent's stones; the playable cells
  (where a stone dropped in a column lands); the playable cells where the agent would complete
  four (its wins in one); those where the opponent would (the cells it must block); the
  playable cells right under a cell where the opponent would (a stone there lets the
  opponent win on top); the empty cells, playable or not, where the agent would complete
  four; those where the opponent would; the playable cells where an agent's stone would
  leave it two wins in one at once (a fork: one answer cannot block both); those where an
  opponent's stone would. The agent is always the side to move when it observes. All but the
  first two planes are the board's immediate tactics, computed from the stones (as AlphaGo's
  inputs carried liberties): with them a simulator of this budget can tell a player who acts
  on a threat from one who overlooks it, which from the bare stones it did not learn
  (measured at the testbed's default budget: on a +1/−1 board every player label blundered
  at 0.15-0.18, against its players' 0.00-0.21; with the first eight planes from 0.18 as
  ``random`` down to 0.08 as ``expert``). The fork planes followed a count of the strong
  labels' blunders (seed 0, 200 games each, labels ``club``/``expert``): 23 and 19 of their
  65 and 53 blunders let the opponent fork within two moves, 20 and 13 of them by leaving an
  opponent's fork cell open. What a player does about the threats is left to be learnt.
- Action: ``Discrete(7)``, the column to drop a stone in. ``info["action_mask"]`` (int8,
  length 7) marks the legal columns on reset and after every step (all zero once the game
  is over). A full column raises ``gymnasium.error.InvalidAction``: an agent that does not
  respect the mask is a bug to see, not a loss to hide.
- Reward +1 when the agent completes four, −1 when the opponent does, 0 for a draw (full
  board) and on every other step. The final info has ``outcome``: ``win``, ``draw`` or ``loss``.

*Data* (:func:`demonstrations`): every player of :data:`POPULATION` (from ``random`` to
``expert``, equal shares) plays the agent's side against the env's own opponent, the
fixed reference (``opponent_depth``/``opponent_blunder``, by default the population's
middle player). Each episode is one game from the player's side, labelled with the
player's name (``Episode.policy``), so a simulator sees who is playing only through how
they play. Interventional data are uniformly random legal moves, flagged as interventions.
The metrics (blunders, outcome rates, move entropy, KL to the data, Elo) are in
:mod:`simagents.envs.connect_four_metrics`. :func:`with_losing_moves` adds the engine's proof of
which moves lose as each game's auxiliary targets (``Episode.aux_targets``): a simulator trained
on them learns to see what the strong players avoid, from the board alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from simagents.data.episodes import Episode, episode_from_arrays
from simagents.envs.base import (
    Testbed,
    TestbedEnv,
    Theory,
    check_episodes,
    check_probability,
    parse_params,
)
from simagents.envs.connect_four_engine import (
    CELLS,
    COLUMNS,
    ROWS,
    Player,
    Position,
    cells,
    forks,
    loses,
    playable,
    threats,
)
from simagents.errors import SimagentsError

ACTION_NAMES = tuple(f"column_{c}" for c in range(COLUMNS))

POPULATION: dict[str, Player] = {
    "random": Player(depth=1, blunder=1.0),
    "novice": Player(depth=1, blunder=0.5),
    "casual": Player(depth=2, blunder=0.2),
    "club": Player(depth=3, blunder=0.05),
    "expert": Player(depth=5, blunder=0.0),
}
"""The data's players, weakest first: search depth (plies) and blunder probability."""


@dataclass(frozen=True)
class ConnectFourParams:
    """Parameters of Connect Four (``gymnasium.make`` keyword arguments)."""

    opponent_depth: int = 2
    """Plies the env's opponent searches (1: its own move scored by the heuristic)."""
    opponent_blunder: float = 0.2
    """Probability that the env's opponent plays a uniformly random legal move instead."""
    agent_first: float = 0.5
    """Probability that the agent moves first in a game (1: always first, 0: always second)."""

    def __post_init__(self) -> None:
        check_probability(
            "connect_four", opponent_blunder=self.opponent_blunder, agent_first=self.agent_first
        )
        if not 1 <= self.opponent_depth <= 8:
            raise SimagentsError(
                f"connect_four: opponent_depth must be between 1 and 8 plies, got {self.opponent_depth} "
                "(deeper searches take seconds per move in this pure-Python engine)"
            )

    @property
    def opponent(self) -> Player:
        """The env's opponent as a player."""
        return Player(depth=self.opponent_depth, blunder=self.opponent_blunder)


PLANES = (
    "agent",
    "opponent",
    "playable",
    "agent_wins",
    "opponent_wins",
    "under_opponent_fours",
    "agent_fours",
    "opponent_fours",
    "agent_forks",
    "opponent_forks",
)
"""The observation's planes of 42 cells, in order (see the module doc)."""
OBSERVATION_SIZE = len(PLANES) * CELLS
OBSERVATION_IMAGE = (len(PLANES), ROWS, COLUMNS)
"""The observation read as an image (planes, rows, columns): ``SimulatorConfig.obs_image``."""


def observe(position: Position, agent_to_move: bool) -> np.ndarray:
    """The (420,) float32 observation of ``position`` from the agent's side."""
    mine, theirs = position.current, position.opponent
    if not agent_to_move:
        mine, theirs = theirs, mine
    mask = position.mask
    landing, my_fours, their_fours = playable(mask), threats(mine, mask), threats(theirs, mask)
    planes = (
        mine,
        theirs,
        landing,
        landing & my_fours,
        landing & their_fours,
        landing & (their_fours >> 1),  # the cell above completes the opponent's four
        my_fours,
        their_fours,
        forks(mine, mask),
        forks(theirs, mask),
    )
    return np.concatenate([cells(bits) for bits in planes]).astype(np.float32)


def position_from_observation(observation: Any) -> Position:
    """The engine position of an observation taken when the agent is to move.

    Raises :class:`SimagentsError` if the observation is not a Connect Four board."""
    values = np.asarray(observation, dtype=np.float32).reshape(-1)
    if values.shape != (OBSERVATION_SIZE,) or not np.isin(values, (0.0, 1.0)).all():
        raise SimagentsError(
            f"a Connect Four observation is {OBSERVATION_SIZE} values in {{0, 1}} ({len(PLANES)} "
            f"planes of {CELLS} cells), got shape {np.shape(observation)}"
        )
    mine, theirs = values[:CELLS], values[CELLS : 2 * CELLS]
    if (mine * theirs).any():
        raise SimagentsError("not a Connect Four position: a cell holds a stone of each side")
    try:
        return Position.from_board((mine - theirs).reshape(6, COLUMNS).astype(np.int8))
    except ValueError as e:
        raise SimagentsError(f"not a Connect Four position: {e}") from None


class ConnectFourEnv(TestbedEnv[np.ndarray]):
    """Connect Four for a deployed agent against the env's search opponent (see the module doc)."""

    params_class: ClassVar[type] = ConnectFourParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: ConnectFourParams

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        super().__init__(render_mode=render_mode, **params)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (OBSERVATION_SIZE,), np.float32)
        self.opponent = self.params.opponent
        self.position = Position()
        self.agent_is_first = True
        self._done = True

    def _agent_to_move(self) -> bool:
        return (self.position.moves % 2 == 0) == self.agent_is_first

    def _info(self) -> dict[str, Any]:
        return {"action_mask": self.position.action_mask()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.position = Position()
        self.agent_is_first = bool(self.np_random.random() < self.params.agent_first)
        if not self.agent_is_first:
            self.position = self.position.play(self.opponent.move(self.position, self.np_random))
        self._done = False
        return observe(self.position, True), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        column = self._check_action(action)
        if self._done:
            raise gym.error.ResetNeeded("ConnectFourEnv: the game is over; call reset()")
        if column not in self.position.legal_moves():
            raise gym.error.InvalidAction(
                f"ConnectFourEnv: column {column} is full; legal columns are {self.position.legal_moves()} "
                '(info["action_mask"])'
            )
        self.position = self.position.play(column)
        if not self.position.is_over():
            self.position = self.position.play(self.opponent.move(self.position, self.np_random))
        if not self.position.is_over():
            return observe(self.position, True), 0.0, False, False, self._info()
        self._done = True
        won = self.position.last_mover_won()
        reward = 0.0 if not won else (-1.0 if self._agent_to_move() else 1.0)
        info = self._info() | {"outcome": {1.0: "win", 0.0: "draw", -1.0: "loss"}[reward]}
        return observe(self.position, self._agent_to_move()), reward, True, False, info


# --------------------------------------------------------------------------- players as agents


class EnginePlayerAgent:
    """A :class:`~simagents.envs.connect_four_engine.Player` behind the agent protocol, so a
    population player can be evaluated like any agent (for Elo, outcome rates, blunders)."""

    def __init__(self, player: Player) -> None:
        self.player = player
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(0 if seed is None else seed)

    def act(self, observation: Any, reward: float = 0.0, action_mask: np.ndarray | None = None) -> int:
        return self.player.move(position_from_observation(observation), self.rng)


# --------------------------------------------------------------------------- data


def play_game(
    env: ConnectFourEnv,
    player: Player,
    rng: np.random.Generator,
    seed: int,
    policy: str,
    intervene: bool = False,
) -> Episode:
    """One game in ``env`` (reset with ``seed``) from the agent's side, ``player`` playing it."""
    observation, _ = env.reset(seed=seed)
    observations, actions, rewards = [observation], [], []
    terminated = False
    while not terminated:
        action = player.move(env.position, rng)
        observation, reward, terminated, _, _ = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(reward)
    n = len(actions)
    return episode_from_arrays(
        observations=np.stack(observations),
        actions=np.array(actions),
        rewards=np.array(rewards),
        terminations=np.arange(n) == n - 1,
        truncations=np.zeros(n, dtype=bool),
        observation_space=env.observation_space,
        action_space=env.action_space,
        interventions=np.full(n, intervene),
        policy=policy,
        seed=seed,
    )


def demonstrations(
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    rng: np.random.Generator,
    intervene: bool = False,
) -> list[Episode]:
    """Games of the :data:`POPULATION` against the env's opponent, one episode per game.

    Episode ``i`` is played by the ``i % 5``-th player (equal shares, weakest first) and
    labelled with its name. With ``intervene`` every move is a uniformly random legal
    column (labelled ``random``, flagged as interventions). Each game has its own seed
    drawn from ``rng`` (kept in ``Episode.seed``), so games do not depend on each other.
    """
    params = parse_params(ConnectFourParams, env_kwargs, where="connect_four demonstrations")
    check_episodes(episodes, "connect_four demonstrations")
    env = ConnectFourEnv(**dataclasses.asdict(params))
    seeds = rng.integers(2**31 - 1, size=episodes)
    names = list(POPULATION)
    games = []
    for i, seed in enumerate(seeds.tolist()):
        name = "random" if intervene else names[i % len(names)]
        # The player's own stream, apart from the env's (seeded by reset): the env's opponent
        # makes the same draws whatever player it faces.
        player_rng = np.random.default_rng([seed, 1])
        games.append(play_game(env, POPULATION[name], player_rng, seed, name, intervene))
    return games


def losing_moves(position: Position, plies: int) -> np.ndarray:
    """(7,) float32: 1 in the columns where a stone of the side to move lets the opponent force
    a win within ``plies`` plies, the move itself first (the blunder detector's proof,
    :func:`~simagents.envs.connect_four_metrics.losing_plies`); 0 in the others, in full columns
    and once the game is over."""
    out = np.zeros(COLUMNS, dtype=np.float32)
    if not position.is_over():
        for column in position.legal_moves():
            out[column] = loses(position, column, plies)
    return out


def with_losing_moves(episode: Episode, plies: int) -> Episode:
    """``episode`` (a game from the agent's side) with :func:`losing_moves` of each position the
    agent moves in as its auxiliary targets; the final observation, the game over, gets zeros."""
    targets = np.zeros((len(episode.observations), COLUMNS), dtype=np.float32)
    for row, observation in enumerate(episode.observations[:-1]):
        targets[row] = losing_moves(position_from_observation(observation), plies)
    return dataclasses.replace(episode, aux_targets=targets)


def mirror(episode: Episode) -> Episode:
    """The game reflected left to right (column ``c`` becomes ``6 - c``), labelled alike.

    The rules, the search players (ties broken at random) and the reference opponent are all
    left-right symmetric, so the mirror image of a player's game is an equally likely game of
    the same player: twice the data for no search."""
    planes = episode.observations.reshape(len(episode.observations), len(PLANES), -1, COLUMNS)[..., ::-1]
    return dataclasses.replace(
        episode,
        observations=np.ascontiguousarray(planes.reshape(len(planes), OBSERVATION_SIZE)),
        actions=COLUMNS - 1 - episode.actions,
        # Per-column targets (losing_moves) mirror with the board; there are no others here.
        aux_targets=np.ascontiguousarray(episode.aux_targets[:, ::-1]),
    )


def theory(**params: Any) -> Theory:
    """What the testbed is, as numbers: the reference opponent and the population's players.

    Connect Four has no closed-form answer for EDT or CDT; what each agent achieves is
    measured (:mod:`simagents.envs.connect_four_metrics`) against this description."""
    p = parse_params(ConnectFourParams, params, where="connect_four theory")
    return {
        "reference": {"depth": p.opponent_depth, "blunder": p.opponent_blunder},
        "agent_first": p.agent_first,
        "population": {name: {"depth": pl.depth, "blunder": pl.blunder} for name, pl in POPULATION.items()},
    }


TESTBED = Testbed(
    name="connect_four",
    env_id="simagents/ConnectFour-v0",
    env_class=ConnectFourEnv,
    params_class=ConnectFourParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="Connect Four vs a search opponent; data from five players of graded strength",
)
