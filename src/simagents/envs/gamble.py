"""The gamble (after the gambling task in Paster et al. 2022, "You can't count on luck",
as in ESPER's code).

Three bets, each settled by a coin that comes up ``win`` with probability ``p_win`` (0.5):
``risky`` pays ``risky_win`` (+5) or ``risky_loss`` (−15), ``small`` pays ``small_win`` (+1)
or ``small_loss`` (−6), ``sure`` pays ``sure`` (+1) either way. Expected values: −5, −2.5, +1.

Two steps: at the first the agent picks a bet (reward 0) and the observation then shows
which bet was settled how (one of six states); at the second any action collects the
reward and the episode ends. The data come from a uniformly random policy.

- A Decision Transformer prompted with the best return in the data (+5) takes the action
  that led to +5 there, the risky bet, and averages −5: it conditioned on luck.
- EDT (and CDT: no hidden confounder here) maximises the expected return: the sure +1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from simagents.data.episodes import Episode, episode_from_arrays
from simagents.envs.base import (
    BELIEFS,
    Testbed,
    TestbedEnv,
    Theory,
    check_episodes,
    check_probability,
    decision_summary,
    parse_params,
)

RISKY, SMALL, SURE = 0, 1, 2
ACTION_NAMES = ("risky", "small", "sure")
START = 0
N_STATES = 1 + 2 * len(ACTION_NAMES)  # start, then (bet, won) / (bet, lost) for each bet


@dataclass(frozen=True)
class GambleParams:
    """Parameters of the gamble (``gymnasium.make`` keyword arguments)."""

    risky_win: float = 5.0
    """Payoff of the risky bet when the coin wins."""
    risky_loss: float = -15.0
    """Payoff of the risky bet when the coin loses."""
    small_win: float = 1.0
    """Payoff of the small bet when the coin wins."""
    small_loss: float = -6.0
    """Payoff of the small bet when the coin loses."""
    sure: float = 1.0
    """Payoff of the sure bet, whatever the coin."""
    p_win: float = 0.5
    """Probability that the coin wins."""

    def __post_init__(self) -> None:
        check_probability("gamble", p_win=self.p_win)

    def payoffs(self) -> np.ndarray:
        """(3, 2) array: payoff of each bet when the coin wins (column 0) and loses (column 1)."""
        return np.array(
            [[self.risky_win, self.risky_loss], [self.small_win, self.small_loss], [self.sure, self.sure]]
        )


def _state(bet: Any, won: Any) -> Any:
    # States 1..6: (risky, won), (risky, lost), (small, won), ... as in ESPER.
    return 1 + 2 * bet + (1 - np.asarray(won, dtype=np.int64))


class GambleEnv(TestbedEnv[np.int64]):
    """The gamble for a deployed agent: two steps, ``Discrete(7)`` observations.

    Actions: 0 ``risky``, 1 ``small``, 2 ``sure`` at the first step; any action at the
    second, which pays the settled bet and ends the episode.
    """

    params_class: ClassVar[type] = GambleParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: GambleParams

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        super().__init__(render_mode=render_mode, **params)
        self.observation_space = gym.spaces.Discrete(N_STATES)
        self._state = START
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        self._state = START
        self._done = False
        return np.int64(START), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        action = self._check_action(action)
        if self._done:
            raise gym.error.ResetNeeded("GambleEnv: the episode is over; call reset()")
        if self._state == START:
            won = bool(self.np_random.random() < self.params.p_win)
            self._state = int(_state(action, won))
            return np.int64(self._state), 0.0, False, False, {}
        # The reward arrives one step after the bet: the second action does not matter.
        bet, lost = divmod(self._state - 1, 2)
        self._done = True
        reward = float(self.params.payoffs()[bet, lost])
        return np.int64(self._state), reward, True, False, {"bet": ACTION_NAMES[bet], "won": not lost}


def demonstrations(
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    rng: np.random.Generator,
    intervene: bool = False,
) -> list[Episode]:
    """Episodes of a uniformly random policy (labelled ``random``), two steps each.

    The random bet does not depend on anything hidden, so observational and
    interventional data differ only in their ``interventions`` flags.
    """
    p = parse_params(GambleParams, env_kwargs, where="gamble demonstrations")
    check_episodes(episodes, "gamble demonstrations")
    bets = rng.integers(len(ACTION_NAMES), size=episodes)
    second = rng.integers(len(ACTION_NAMES), size=episodes)
    won = rng.random(episodes) < p.p_win
    states = _state(bets, won)
    rewards = p.payoffs()[bets, (~won).astype(np.int64)]
    env = GambleEnv()
    return [
        episode_from_arrays(
            observations=np.array([START, states[i], states[i]]),
            actions=np.array([bets[i], second[i]]),
            rewards=np.array([0.0, rewards[i]]),
            terminations=np.array([False, True]),
            truncations=np.array([False, False]),
            observation_space=env.observation_space,
            action_space=env.action_space,
            interventions=np.full(2, intervene),
            policy="random",
        )
        for i in range(episodes)
    ]


def theory(**params: Any) -> Theory:
    """Expected return of each bet, EDT's and CDT's choice, and the Decision Transformer's.

    Beyond :func:`~simagents.envs.base.decision_summary`'s keys: ``dt``, a Decision
    Transformer prompted with the best return in the random data: ``prompt`` (that return),
    ``action_probs`` (P(bet | return = prompt) in the data, which a perfect DT samples),
    ``choice`` (the likeliest bet) and ``expected_return`` (what those probabilities earn).
    """
    p = parse_params(GambleParams, params, where="gamble theory")
    payoffs = p.payoffs()
    odds = np.array([p.p_win, 1 - p.p_win])
    means = payoffs @ odds
    table = {name: dict.fromkeys(BELIEFS, float(means[i])) for i, name in enumerate(ACTION_NAMES)}
    summary = decision_summary(table, tie_order=("sure", "small", "risky"))
    # Under the uniform random policy P(bet, return) ∝ P(return | bet); condition on the best return.
    possible = odds > 0
    prompt = float(payoffs[:, possible].max())
    weight = ((payoffs == prompt) * odds).sum(axis=1)
    probs = weight / weight.sum()
    summary["dt"] = {
        "prompt": prompt,
        "action_probs": {name: float(probs[i]) for i, name in enumerate(ACTION_NAMES)},
        "choice": ACTION_NAMES[int(np.argmax(probs))],
        "expected_return": float(probs @ means),
    }
    return summary


TESTBED = Testbed(
    name="gamble",
    env_id="simagents/Gamble-v0",
    env_class=GambleEnv,
    params_class=GambleParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="ESPER's gamble: a DT prompted with the best return bets risky and loses; EDT takes the sure +1",
)
