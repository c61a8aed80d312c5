"""Delusion boxes (after Ortega et al. 2021, "Shaking the foundations: delusions in
sequence models for interaction and control").

A prize (``prize``, 1) is behind one of two boxes, the left one with probability
``p_left`` (0.5). Each step the agent opens a box (``left`` or ``right``); opening the
prize box pays ``prize`` and ends the episode, opening the other pays 0. After
``max_steps`` (4) openings the game is over (a termination, not a truncation: no later
reward is possible, so there is nothing to bootstrap). The observation is a constant 0:
nothing shows where the prize is.

*Data*: demonstrators know where the prize is and open that box at once, so every
observational episode is one step long and pays ``prize``. A simulator trained on it and
asked what follows *its own* opening treats the action as evidence, as it was for the
demonstrators: it predicts ``prize`` for either box (a self-delusion: it gets
p_left·prize or (1−p_left)·prize), and after a miss, which it never saw, it is off the
data's distribution.

*Interventional data*: the boxes are opened uniformly at random, independently of the
prize's position, until the prize is found or ``max_steps`` pass. A simulator trained on
it predicts P(prize box)·prize for the first opening and, after a miss, that the prize is
in the other box: it switches and finds the prize by the second step.

Theory (``theory``) is about the first opening; ``self_delusion_gap`` is the predicted
minus the realised reward of each first opening, and ``switching`` describes the
interventional agent's whole episode.
"""

from __future__ import annotations

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
    decision_summary,
    parse_params,
)
from simagents.errors import SimagentsError

LEFT, RIGHT = 0, 1
ACTION_NAMES = ("left", "right")


@dataclass(frozen=True)
class DelusionBoxesParams:
    """Parameters of the delusion boxes (``gymnasium.make`` keyword arguments)."""

    max_steps: int = 4
    """Openings allowed before the game is over."""
    prize: float = 1.0
    """Reward for opening the prize box."""
    p_left: float = 0.5
    """Probability that the prize is behind the left box."""

    def __post_init__(self) -> None:
        check_probability("delusion_boxes", p_left=self.p_left)
        if self.max_steps < 1:
            raise SimagentsError(f"delusion_boxes: max_steps must be at least 1, got {self.max_steps}")


class DelusionBoxesEnv(TestbedEnv[np.int64]):
    """Delusion boxes for a deployed agent who does not know where the prize is.

    Actions: 0 ``left``, 1 ``right``. Observation: constant 0 (``Discrete(1)``). Reward
    ``prize`` and termination when the prize box is opened or after ``max_steps`` openings.
    The final info reports the prize box, whether it was found and the number of openings.
    """

    params_class: ClassVar[type] = DelusionBoxesParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: DelusionBoxesParams

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        super().__init__(render_mode=render_mode, **params)
        self.observation_space = gym.spaces.Discrete(1)
        self._prize_box = LEFT
        self._steps = 0
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        self._prize_box = LEFT if self.np_random.random() < self.params.p_left else RIGHT
        self._steps = 0
        self._done = False
        return np.int64(0), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        action = self._check_action(action)
        if self._done:
            raise gym.error.ResetNeeded("DelusionBoxesEnv: the episode is over; call reset()")
        self._steps += 1
        found = action == self._prize_box
        self._done = found or self._steps >= self.params.max_steps
        # Where the prize was is told only once the episode is over.
        info = {}
        if self._done:
            info = {"prize_box": ACTION_NAMES[self._prize_box], "found": found, "openings": self._steps}
        return np.int64(0), self.params.prize if found else 0.0, self._done, False, info


def demonstrations(
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    rng: np.random.Generator,
    intervene: bool = False,
) -> list[Episode]:
    """Informed demonstrators (one step, always the prize box; labelled ``informed``) or,
    with ``intervene``, random openings until the prize or ``max_steps`` (labelled ``random``).
    """
    p = parse_params(DelusionBoxesParams, env_kwargs, where="delusion_boxes demonstrations")
    check_episodes(episodes, "delusion_boxes demonstrations")
    env = DelusionBoxesEnv()
    out = []
    for _ in range(episodes):
        prize_box = LEFT if rng.random() < p.p_left else RIGHT
        actions: list[int]
        if intervene:
            actions = []
            while len(actions) < p.max_steps:
                actions.append(int(rng.integers(2)))
                if actions[-1] == prize_box:
                    break
        else:
            actions = [prize_box]
        n = len(actions)
        found = actions[-1] == prize_box
        rewards = np.zeros(n)
        rewards[-1] = p.prize if found else 0.0
        end = np.arange(n) == n - 1
        out.append(
            episode_from_arrays(
                observations=np.zeros(n + 1, dtype=np.int64),
                actions=np.array(actions),
                rewards=rewards,
                terminations=end,
                truncations=np.zeros(n, dtype=bool),
                observation_space=env.observation_space,
                action_space=env.action_space,
                interventions=np.full(n, intervene),
                policy="random" if intervene else "informed",
            )
        )
    return out


def theory(**params: Any) -> Theory:
    """Predicted and realised reward of the first opening, and the switching agent's episode.

    Beyond :func:`~simagents.envs.base.decision_summary`'s keys (about the first opening):
    ``self_delusion_gap`` per box (evidential prediction minus deployment reward) and
    ``switching``: ``expected_return`` and ``expected_steps`` of an agent that opens CDT's
    box first and the other one after a miss.
    """
    p = parse_params(DelusionBoxesParams, params, where="delusion_boxes theory")
    chance = {"left": p.p_left, "right": 1 - p.p_left}
    table = {
        name: {
            # Demonstrators open a box only when the prize is there: the data says "always".
            "evidential": p.prize if chance[name] > 0 else float("nan"),
            "interventional": chance[name] * p.prize,
            "deployment": chance[name] * p.prize,
        }
        for name in ACTION_NAMES
    }
    summary = decision_summary(table, tie_order=ACTION_NAMES)
    summary["self_delusion_gap"] = {
        name: values["evidential"] - values["deployment"] for name, values in table.items()
    }
    first = chance[summary["cdt"]["choice"]]
    second_chance = p.max_steps >= 2
    summary["switching"] = {
        "expected_return": p.prize * (1.0 if second_chance else first),
        # Steps until the prize is found, or until the episode ends without it.
        "expected_steps": 1.0 + ((1 - first) if second_chance else 0.0),
    }
    return summary


TESTBED = Testbed(
    name="delusion_boxes",
    env_id="simagents/DelusionBoxes-v0",
    env_class=DelusionBoxesEnv,
    params_class=DelusionBoxesParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="Two boxes, one prize: imitating informed demonstrators deludes a learner about its own actions",
)
