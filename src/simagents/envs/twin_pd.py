"""The twin prisoner's dilemma.

The agent plays one prisoner's dilemma against a copy of itself. Payoffs to the agent:
``temptation`` T (it defects, the copy cooperates), ``reward`` R (both cooperate),
``punishment`` P (both defect), ``sucker`` S (it cooperates, the copy defects); by
default T, R, P, S = 5, 3, 1, 0. The copy plays the agent's own move with probability
``fidelity`` (f) and the other move otherwise.

- EDT: its own move is evidence of the copy's. E[R | cooperate] = R·f + S·(1−f) and
  E[R | defect] = P·f + T·(1−f), so EDT cooperates iff R·f + S·(1−f) > P·f + T·(1−f)
  (f > 5/7 by default).
- CDT: the copy's move does not depend causally on the agent's; defecting is better
  against either move (T > R and P > S), so CDT defects.

*Deployment*: the copy runs the deployed agent's own decision procedure, so it plays the
agent's actual move with probability f; the env draws the copy's move after the agent's.

*Data*: a population of cooperators, defectors and undecided demonstrators (who cooperate
with probability ``undecided_cooperate``), each playing its own copy, which plays the
demonstrator's actual move with probability f. *Interventional data*: the copy plays the
demonstrator's disposition with probability f, but the demonstrator's move is then drawn
uniformly at random, so the copy cooperates with probability c = π·f + (1−π)·(1−f)
(π: the population's share of cooperative dispositions) whatever the move.
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

COOPERATE, DEFECT = 0, 1
ACTION_NAMES = ("cooperate", "defect")
TYPES = ("cooperator", "defector", "undecided")


@dataclass(frozen=True)
class TwinPDParams:
    """Parameters of the twin prisoner's dilemma (``gymnasium.make`` keyword arguments)."""

    temptation: float = 5.0
    """T: the agent defects, the copy cooperates."""
    reward: float = 3.0
    """R: both cooperate."""
    punishment: float = 1.0
    """P: both defect."""
    sucker: float = 0.0
    """S: the agent cooperates, the copy defects."""
    fidelity: float = 0.9
    """Probability that the copy plays the agent's move."""
    cooperators: float = 0.4
    """Share of demonstrators who always cooperate (data only)."""
    defectors: float = 0.4
    """Share of demonstrators who always defect (data only); the rest are undecided."""
    undecided_cooperate: float = 0.5
    """Probability that an undecided demonstrator cooperates (data only)."""

    def __post_init__(self) -> None:
        where = "twin_pd"
        check_probability(
            where,
            fidelity=self.fidelity,
            cooperators=self.cooperators,
            defectors=self.defectors,
            undecided_cooperate=self.undecided_cooperate,
        )
        check_population(where, cooperators=self.cooperators, defectors=self.defectors)

    @property
    def undecided(self) -> float:
        return max(0.0, 1.0 - self.cooperators - self.defectors)

    @property
    def cooperate_share(self) -> float:
        """π: the probability that a demonstrator's disposition is to cooperate."""
        return self.cooperators + self.undecided * self.undecided_cooperate


def _payoff(action: Any, other: Any, p: TwinPDParams) -> Any:
    # The agent's payoff; works on ints and on numpy arrays alike.
    return np.select(
        [(action == COOPERATE) & (other == COOPERATE), action == COOPERATE, other == COOPERATE],
        [p.reward, p.sucker, p.temptation],
        default=p.punishment,
    )


class TwinPDEnv(OneShotEnv):
    """The twin prisoner's dilemma for a deployed agent: one step, constant observation 0.

    Actions: 0 ``cooperate``, 1 ``defect``. The copy's move is drawn after the agent's and
    equals it with probability ``fidelity``; the final info reports it.
    """

    params_class: ClassVar[type] = TwinPDParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: TwinPDParams

    def _draw(self) -> int:
        return 0  # the copy responds to the agent's move itself, drawn in step

    def _outcome(self, action: int) -> tuple[float, dict[str, Any]]:
        p = self.params
        same = bool(self.np_random.random() < p.fidelity)
        other = action if same else 1 - action
        return float(_payoff(action, other, p)), {"copy_action": ACTION_NAMES[other]}


def demonstrations(
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    rng: np.random.Generator,
    intervene: bool = False,
) -> list[Episode]:
    """Episodes from the demonstrator population (``intervene``: moves drawn at random).

    Observational episodes are labelled by demonstrator type (``cooperator``, ``defector``,
    ``undecided``); interventional ones ``random``, the policy that chose their moves.
    """
    p = parse_params(TwinPDParams, env_kwargs, where="twin_pd demonstrations")
    check_episodes(episodes, "twin_pd demonstrations")
    # The copy runs the demonstrator's disposition; without intervention that is also its move.
    kind, action, other, block = mirrored_population(
        rng, episodes, (p.cooperators, p.defectors), p.undecided_cooperate, p.fidelity, intervene
    )
    labels = "random" if intervene else [TYPES[k] for k in kind]
    return one_step_episodes(TwinPDEnv(), action, _payoff(action, other, p), intervene, labels, block)


def theory(**params: Any) -> Theory:
    """EDT's and CDT's choices and each choice's expected return (see the module docstring).

    Beyond :func:`~simagents.envs.base.decision_summary`'s keys: ``edt_threshold``, the
    fidelity above which EDT cooperates (NaN when R − S − P + T ≤ 0: then no such threshold).
    """
    p = parse_params(TwinPDParams, params, where="twin_pd theory")
    f, pi = p.fidelity, p.cooperate_share
    c = pi * f + (1 - pi) * (1 - f)  # P(copy cooperates) when moves are randomised
    cooperate = p.reward * f + p.sucker * (1 - f)
    defect = p.punishment * f + p.temptation * (1 - f)
    table = {
        "cooperate": {
            "evidential": cooperate if pi > 0 else float("nan"),
            "interventional": p.reward * c + p.sucker * (1 - c),
            "deployment": cooperate,
        },
        "defect": {
            "evidential": defect if pi < 1 else float("nan"),
            "interventional": p.temptation * c + p.punishment * (1 - c),
            "deployment": defect,
        },
    }
    # Ties go to defecting: EDT cooperates only if strictly better.
    summary = decision_summary(table, tie_order=("defect", "cooperate"))
    # R·f + S·(1−f) > P·f + T·(1−f)  <=>  f·(R − S − P + T) > T − S.
    slope = p.reward - p.sucker - p.punishment + p.temptation
    summary["edt_threshold"] = (p.temptation - p.sucker) / slope if slope > 0 else float("nan")
    return summary


TESTBED = Testbed(
    name="twin_pd",
    env_id="simagents/TwinPrisonersDilemma-v0",
    env_class=TwinPDEnv,
    params_class=TwinPDParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="Prisoner's dilemma against a copy: EDT cooperates when the copy is faithful, CDT defects",
)
