"""The smoking lesion.

A hidden lesion L (probability ``p_lesion``, 0.5) causes cancer (probability
``cancer_given_lesion`` 0.9 with it, ``cancer_given_no_lesion`` 0.1 without) and, in the
data, a taste for smoking (people with the lesion smoke with ``smoke_given_lesion`` 0.9,
others with ``smoke_given_no_lesion`` 0.1). Smoking itself causes nothing. Utility:
``smoke_utility``·smoke + ``cancer_utility``·cancer (10 and −100).

- EDT: smoking is evidence of the lesion. With the defaults P(L | smoke) = 0.9, so
  P(cancer | smoke) = 0.82 and E[U | smoke] = 10 − 82 = −72, while P(cancer | abstain) = 0.18
  and E[U | abstain] = −18: EDT abstains.
- CDT: smoking does not change P(cancer) = 0.5: E[U | do(smoke)] = 10 − 50 = −40 against
  −50 for abstaining: CDT smokes.

*Deployment*: the deployed agent's choice does not depend on the lesion, so deployment
returns are CDT's: smoking really is better.

*Tickle* (``tickle=True``): the lesion acts on the choice only through an urge the agent
feels, the observation (1: urge, 0: none), which matches the lesion with probability
``tickle_accuracy``; demonstrators smoke with ``smoke_given_lesion`` when they feel the urge
and ``smoke_given_no_lesion`` when not. Given the urge, smoking says nothing more about the
lesion (it is screened off), so EDT conditioned on its observation smokes too. This is
the only testbed whose observation carries information about hidden state.

*Interventional data*: whether to smoke is drawn uniformly at random, independently of
the lesion and the urge.
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
    blocked_interventions,
    check_episodes,
    check_probability,
    decision_summary,
    one_step_episodes,
    parse_params,
)

SMOKE, ABSTAIN = 0, 1
ACTION_NAMES = ("smoke", "abstain")


@dataclass(frozen=True)
class SmokingLesionParams:
    """Parameters of the smoking lesion (``gymnasium.make`` keyword arguments)."""

    p_lesion: float = 0.5
    """Probability of the hidden lesion."""
    smoke_given_lesion: float = 0.9
    """Probability that a demonstrator with the lesion (with the urge, under ``tickle``) smokes."""
    smoke_given_no_lesion: float = 0.1
    """Probability that a demonstrator without the lesion (without the urge) smokes."""
    cancer_given_lesion: float = 0.9
    """Probability of cancer with the lesion."""
    cancer_given_no_lesion: float = 0.1
    """Probability of cancer without the lesion."""
    smoke_utility: float = 10.0
    """Utility of smoking."""
    cancer_utility: float = -100.0
    """Utility of cancer (negative: a cost)."""
    tickle: bool = False
    """Observe the urge to smoke (Discrete(2)) that carries the lesion's influence on the choice."""
    tickle_accuracy: float = 1.0
    """Probability that the urge matches the lesion (used only with ``tickle``)."""

    def __post_init__(self) -> None:
        check_probability(
            "smoking_lesion",
            p_lesion=self.p_lesion,
            smoke_given_lesion=self.smoke_given_lesion,
            smoke_given_no_lesion=self.smoke_given_no_lesion,
            cancer_given_lesion=self.cancer_given_lesion,
            cancer_given_no_lesion=self.cancer_given_no_lesion,
            tickle_accuracy=self.tickle_accuracy,
        )

    def cancer(self, lesion: Any) -> Any:
        return np.where(lesion, self.cancer_given_lesion, self.cancer_given_no_lesion)

    def smoke(self, lesion: Any, urge: Any) -> Any:
        """The demonstrators' probability of smoking: driven by the urge if observed, else the lesion."""
        cue = urge if self.tickle else lesion
        return np.where(cue, self.smoke_given_lesion, self.smoke_given_no_lesion)

    def observe(self, urge: Any) -> Any:
        return np.asarray(urge, dtype=np.int64) if self.tickle else np.zeros_like(urge, dtype=np.int64)


def _reward(action: Any, cancer: Any, p: SmokingLesionParams) -> Any:
    return p.smoke_utility * (action == SMOKE) + p.cancer_utility * cancer


class SmokingLesionEnv(OneShotEnv):
    """The smoking lesion for a deployed agent: one step.

    Actions: 0 ``smoke``, 1 ``abstain``. Observation: constant 0 (``Discrete(1)``), or the
    urge (``Discrete(2)``) with ``tickle=True``. The lesion is drawn at reset and cancer at
    the step, from the lesion alone; the final info reports both.
    """

    params_class: ClassVar[type] = SmokingLesionParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: SmokingLesionParams

    def _n_observations(self) -> int:
        return 2 if self.params.tickle else 1

    def _draw(self) -> int:
        p = self.params
        self._lesion = bool(self.np_random.random() < p.p_lesion)
        urge = self._lesion if self.np_random.random() < p.tickle_accuracy else not self._lesion
        return int(p.observe(urge))

    def _outcome(self, action: int) -> tuple[float, dict[str, Any]]:
        p = self.params
        cancer = bool(self.np_random.random() < p.cancer(self._lesion))
        return float(_reward(action, cancer, p)), {"lesion": self._lesion, "cancer": cancer}


def demonstrations(
    env_kwargs: Mapping[str, Any] | None,
    episodes: int,
    rng: np.random.Generator,
    intervene: bool = False,
) -> list[Episode]:
    """Episodes from the smoking population (``intervene``: smoking drawn at random).

    Observational episodes are labelled ``demonstrator`` (one population whose smoking
    depends on the lesion), interventional ones ``random``.
    """
    p = parse_params(SmokingLesionParams, env_kwargs, where="smoking_lesion demonstrations")
    check_episodes(episodes, "smoking_lesion demonstrations")
    lesion = rng.random(episodes) < p.p_lesion
    urge = np.where(rng.random(episodes) < p.tickle_accuracy, lesion, ~lesion)
    smokes = rng.random(episodes) < p.smoke(lesion, urge)
    action = np.where(smokes, SMOKE, ABSTAIN)
    cancer = rng.random(episodes) < p.cancer(lesion)
    block = np.full(episodes, -1)
    if intervene:
        block, action = blocked_interventions(episodes, 2)
        urge, cancer = urge[block], cancer[block]
    return one_step_episodes(
        SmokingLesionEnv(tickle=p.tickle),
        action,
        _reward(action, cancer, p),
        intervene,
        "random" if intervene else "demonstrator",
        block,
        observations=p.observe(urge),
    )


def theory(**params: Any) -> Theory:
    """EDT's and CDT's choices and each choice's expected return (see the module docstring).

    The evidential value of a choice is E over the observation o of E[U | o, choice] in the
    data: the return an agent that makes this choice whatever it observes expects. With a
    tickle the choice that maximises it is the same for every o (the urge screens the
    lesion off), so one choice per agent suffices.
    """
    p = parse_params(SmokingLesionParams, params, where="smoking_lesion theory")
    lesions = np.array([True, False])
    prior = np.where(lesions, p.p_lesion, 1 - p.p_lesion)  # P(l)
    cancer = p.cancer(lesions)  # P(cancer | l)
    p_cancer = float(prior @ cancer)
    table: dict[str, dict[str, float]] = {}
    for action, name in enumerate(ACTION_NAMES):
        gain = p.smoke_utility if action == SMOKE else 0.0
        evidential = 0.0
        for urge in (True, False) if p.tickle else (False,):
            p_urge = np.where(urge == lesions, p.tickle_accuracy, 1 - p.tickle_accuracy) if p.tickle else 1.0
            p_smoke = p.smoke(lesions, urge)
            p_action = p_smoke if action == SMOKE else 1 - p_smoke
            joint = prior * p_urge * p_action  # P(l, o, action) in the data
            p_obs = float(np.sum(prior * p_urge))
            if p_obs == 0:
                continue
            if joint.sum() == 0:  # the data never shows this choice after this observation
                evidential = float("nan")
                break
            evidential += p_obs * (gain + p.cancer_utility * float(joint @ cancer / joint.sum()))
        interventional = gain + p.cancer_utility * p_cancer
        table[name] = {
            "evidential": evidential,
            "interventional": interventional,
            "deployment": interventional,
        }
    return decision_summary(table, tie_order=("smoke", "abstain"))


TESTBED = Testbed(
    name="smoking_lesion",
    env_id="simagents/SmokingLesion-v0",
    env_class=SmokingLesionEnv,
    params_class=SmokingLesionParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="Smoking lesion: EDT abstains (smoking is evidence of the lesion), CDT smokes",
)
