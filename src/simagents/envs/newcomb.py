"""Newcomb's problem.

Two boxes: a transparent one with ``small`` (1,000) in it and an opaque one that holds
``big`` (1,000,000) if and only if a predictor predicted that the agent would take only the
opaque box. The agent takes the opaque box alone (``one_box``) or both (``two_box``). The
predictor is right with probability ``accuracy`` (q).

- EDT: one-boxing is evidence of a full box. E[R | one_box] = q·big and
  E[R | two_box] = small + (1−q)·big, so EDT one-boxes iff q·big > small + (1−q)·big,
  i.e. iff q > (small + big) / (2·big) (0.5005 by default).
- CDT: the prediction is already made; taking both boxes adds ``small`` whatever is in
  the opaque one, so CDT always two-boxes (for small > 0).

*Deployment*: the predictor simulates the deployed agent, so its prediction matches that
agent's actual choice with probability q. Equivalently the env draws the prediction after
the action (the box content is unseen until the end), right with probability q. So in
deployment one-boxing earns q·big and two-boxing small + (1−q)·big: EDT's choice is the
one that pays.

*Data*: a population of one-boxers, two-boxers and undecided agents (who one-box with
probability ``undecided_one_box``); the predictor is right about each one's actual choice
with probability q. *Interventional data*: the predictor reads each demonstrator's
disposition as before, but the action is then drawn uniformly at random, independently of
the disposition and hence of the prediction. There the box is full with probability
P_fill = π·q + (1−π)·(1−q) (π: the population's share of one-box dispositions) whatever the
action, so a simulator trained on it sees two-boxing win by exactly ``small``: CDT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simagents.data.episodes import Episode
from simagents.envs.base import (
    OneShotEnv,
    Testbed,
    Theory,
    check_episodes,
    check_population,
    check_probability,
    decision_summary,
    mirrored_population,
    one_step_episodes,
    parse_params,
)

ONE_BOX, TWO_BOX = 0, 1
ACTION_NAMES = ("one_box", "two_box")
TYPES = ("one_boxer", "two_boxer", "undecided")


@dataclass(frozen=True)
class NewcombParams:
    """Parameters of Newcomb's problem (``gymnasium.make`` keyword arguments)."""

    small: float = 1_000.0
    """Content of the transparent box, taken only by two-boxers."""
    big: float = 1_000_000.0
    """Content of the opaque box when the predictor predicted one-boxing."""
    accuracy: float = 0.9
    """Probability that the prediction matches the agent's actual choice."""
    one_boxers: float = 0.4
    """Share of demonstrators who always one-box (data only)."""
    two_boxers: float = 0.4
    """Share of demonstrators who always two-box (data only); the rest are undecided."""
    undecided_one_box: float = 0.5
    """Probability that an undecided demonstrator one-boxes (data only)."""

    def __post_init__(self) -> None:
        where = "newcomb"
        check_probability(
            where,
            accuracy=self.accuracy,
            one_boxers=self.one_boxers,
            two_boxers=self.two_boxers,
            undecided_one_box=self.undecided_one_box,
        )
        check_population(where, one_boxers=self.one_boxers, two_boxers=self.two_boxers)

    @property
    def undecided(self) -> float:
        return max(0.0, 1.0 - self.one_boxers - self.two_boxers)

    @property
    def one_box_share(self) -> float:
        """π: the probability that a demonstrator's disposition is to one-box."""
        return self.one_boxers + self.undecided * self.undecided_one_box


class NewcombEnv(OneShotEnv):
    """Newcomb's problem for a deployed agent: one step, constant observation 0.

    Actions: 0 ``one_box``, 1 ``two_box``. The prediction is drawn after the action and
    matches it with probability ``accuracy``; the final info reports it.
    """

    params_class: ClassVar[type] = NewcombParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: NewcombParams

    def _draw(self) -> int:
        return 0  # nothing to draw before the choice: the predictor responds to the choice itself

    def _outcome(self, action: int) -> tuple[float, dict[str, Any]]:
        p = self.params
        correct = bool(self.np_random.random() < p.accuracy)
        prediction = action if correct else 1 - action
        return _reward(action, prediction, p), {"prediction": ACTION_NAMES[prediction]}


def _reward(action: Any, prediction: Any, p: NewcombParams) -> Any:
    # Works on ints and on numpy arrays alike.
    return p.small * (action == TWO_BOX) + p.big * (prediction == ONE_BOX)


def demonstrations(
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    rng: np.random.Generator,
    intervene: bool = False,
) -> list[Episode]:
    """Episodes from the demonstrator population (``intervene``: actions drawn at random).

    Observational episodes are labelled by demonstrator type (``one_boxer``, ``two_boxer``,
    ``undecided``); interventional ones ``random``, the policy that chose their actions.
    The same ``rng`` state gives the same demonstrators and predictions either way.
    """
    p = parse_params(NewcombParams, env_kwargs, where="newcomb demonstrations")
    check_episodes(episodes, "newcomb demonstrations")
    # The predictor reads the disposition; without intervention that is also the action.
    kind, action, prediction, block = mirrored_population(
        rng, episodes, (p.one_boxers, p.two_boxers), p.undecided_one_box, p.accuracy, intervene
    )
    labels = "random" if intervene else [TYPES[k] for k in kind]
    return one_step_episodes(NewcombEnv(), action, _reward(action, prediction, p), intervene, labels, block)


def theory(**params: Any) -> Theory:
    """EDT's and CDT's choices and each choice's expected return (see the module docstring).

    Beyond :func:`~simagents.envs.base.decision_summary`'s keys: ``edt_threshold``, the
    accuracy above which EDT one-boxes.
    """
    p = parse_params(NewcombParams, params, where="newcomb theory")
    q, pi = p.accuracy, p.one_box_share
    fill = pi * q + (1 - pi) * (1 - q)  # P(prediction = one_box) when actions are randomised
    table = {
        "one_box": {
            "evidential": q * p.big if pi > 0 else float("nan"),
            "interventional": fill * p.big,
            "deployment": q * p.big,
        },
        "two_box": {
            "evidential": p.small + (1 - q) * p.big if pi < 1 else float("nan"),
            "interventional": p.small + fill * p.big,
            "deployment": p.small + (1 - q) * p.big,
        },
    }
    # Ties go to two-boxing: EDT one-boxes only if strictly better.
    summary = decision_summary(table, tie_order=("two_box", "one_box"))
    summary["edt_threshold"] = (p.small + p.big) / (2 * p.big) if p.big > 0 else float("nan")
    return summary


TESTBED = Testbed(
    name="newcomb",
    env_id="simagents/Newcomb-v0",
    env_class=NewcombEnv,
    params_class=NewcombParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="Newcomb's problem: EDT one-boxes when the predictor is accurate, CDT two-boxes",
)
