"""A decision problem of your own, with its theory: Death in Damascus.

You meet Death in Damascus. Death says "I am coming for you tomorrow", and Death, who
predicts where people will be with accuracy ``accuracy`` (q), will wait in the city it
predicts. You can ``stay`` in Damascus or ``flee`` to Aleppo, which costs ``travel_cost``
(c); surviving is worth ``life`` (L).

- EDT: wherever you go, Death predicted it with probability q, so
  E[R | stay] = L(1−q) and E[R | flee] = L(1−q) − c: EDT stays iff c > 0.
- CDT: Death's choice does not depend causally on yours. It believes Death waits in
  Damascus with the probability d the population's dispositions imply,
  d = π·q + (1−π)(1−q) (π: share of demonstrators disposed to stay), and flees iff
  L·d − c > L(1−d). With most demonstrators staying, CDT flees; with most fleeing, it stays.
- Deployment: Death predicts the deployed agent itself, so any fixed choice meets Death
  with probability q; staying saves the fare (EDT's answer).

Registered as ``death_in_damascus`` (gymnasium id ``examples/DeathInDamascus-v0``), so::

    simagents --plugin examples/custom_testbed.py testbed death_in_damascus --out runs/dd
    SIMAGENTS_PLUGINS=examples/custom_testbed.py simagents testbed death_in_damascus \\
        --param stayers=0.1 fleers=0.7 --out runs/dd-fleers

Run as a script, it runs the testbed at two population settings where CDT's answer flips
and prints each planner's choice beside the theory's (about 30 s on 2 cores)::

    python examples/custom_testbed.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from simagents import Testbed, register_testbed, run_testbed
from simagents.data.episodes import Episode
from simagents.envs import TESTBEDS
from simagents.envs.base import (
    OneShotEnv,
    Theory,
    check_episodes,
    check_population,
    check_probability,
    decision_summary,
    mirrored_population,
    one_step_episodes,
    parse_params,
)

STAY, FLEE = 0, 1
ACTION_NAMES = ("stay", "flee")
KINDS = ("stayer", "fleer", "undecided")


@dataclass(frozen=True)
class DeathInDamascusParams:
    """Parameters of Death in Damascus (``gymnasium.make`` keyword arguments)."""

    life: float = 100.0
    """L: the reward for surviving (Death waits in the other city)."""
    travel_cost: float = 20.0
    """c: the fare to Aleppo, paid by fleeing whatever happens."""
    accuracy: float = 0.9
    """q: probability that Death waits in the city the chooser's disposition leads to."""
    stayers: float = 0.7
    """Share of demonstrators who always stay (data only)."""
    fleers: float = 0.1
    """Share of demonstrators who always flee (data only); the rest are undecided."""
    undecided_stay: float = 0.5
    """Probability that an undecided demonstrator stays (data only)."""

    def __post_init__(self) -> None:
        where = "death_in_damascus"
        check_probability(
            where,
            accuracy=self.accuracy,
            stayers=self.stayers,
            fleers=self.fleers,
            undecided_stay=self.undecided_stay,
        )
        check_population(where, stayers=self.stayers, fleers=self.fleers)

    @property
    def stay_share(self) -> float:
        """π: the probability that a demonstrator's disposition is to stay."""
        undecided = max(0.0, 1.0 - self.stayers - self.fleers)
        return self.stayers + undecided * self.undecided_stay


def _reward(action: Any, death: Any, p: DeathInDamascusParams) -> Any:
    # Works on ints and numpy arrays alike.
    return p.life * (np.asarray(action) != death) - p.travel_cost * (np.asarray(action) == FLEE)


class DeathInDamascusEnv(OneShotEnv):
    """One step, constant observation 0. Actions: 0 ``stay``, 1 ``flee``.

    Death predicts the deployed agent: its city is drawn after the agent's choice and matches
    it with probability ``accuracy``; the final info reports it.
    """

    params_class: ClassVar[type] = DeathInDamascusParams
    action_names: ClassVar[tuple[str, ...]] = ACTION_NAMES
    params: DeathInDamascusParams

    def _draw(self) -> int:
        return 0

    def _outcome(self, action: int) -> tuple[float, dict[str, Any]]:
        predicted = bool(self.np_random.random() < self.params.accuracy)
        death = action if predicted else 1 - action
        return float(_reward(action, death, self.params)), {"death_in": ACTION_NAMES[death]}


def demonstrations(
    env_kwargs: Mapping[str, Any] | None, episodes: int, rng: np.random.Generator, intervene: bool = False
) -> list[Episode]:
    """Observational episodes (labelled by demonstrator kind) or interventional ones (moves at random)."""
    p = parse_params(DeathInDamascusParams, env_kwargs, where="death_in_damascus demonstrations")
    check_episodes(episodes, "death_in_damascus demonstrations")
    # Death mirrors each demonstrator's disposition, as Newcomb's predictor and the twin's copy do.
    kind, action, death, block = mirrored_population(
        rng, episodes, (p.stayers, p.fleers), p.undecided_stay, p.accuracy, intervene
    )
    labels = "random" if intervene else [KINDS[k] for k in kind]
    return one_step_episodes(
        DeathInDamascusEnv(), action, _reward(action, death, p), intervene, labels, block
    )


def theory(**params: Any) -> Theory:
    """EDT's and CDT's choices and each choice's expected return (see the module docstring)."""
    p = parse_params(DeathInDamascusParams, params, where="death_in_damascus theory")
    q, pi = p.accuracy, p.stay_share
    d = pi * q + (1 - pi) * (1 - q)  # P(Death in Damascus) when the move is randomised
    same_city = p.life * (1 - q)  # wherever you go, Death predicted it with probability q
    table = {
        "stay": {
            "evidential": same_city if pi > 0 else float("nan"),
            "interventional": p.life * (1 - d),
            "deployment": same_city,
        },
        "flee": {
            "evidential": same_city - p.travel_cost if pi < 1 else float("nan"),
            "interventional": p.life * d - p.travel_cost,
            "deployment": same_city - p.travel_cost,
        },
    }
    return decision_summary(table, tie_order=ACTION_NAMES)


TESTBED = Testbed(
    name="death_in_damascus",
    env_id="examples/DeathInDamascus-v0",
    env_class=DeathInDamascusEnv,
    params_class=DeathInDamascusParams,
    theory=theory,
    demonstrations=demonstrations,
    action_names=ACTION_NAMES,
    description="Death predicts where you go: EDT stays, CDT flees where the population makes Death expect you",
)
if TESTBED.name not in TESTBEDS:  # loading the plugin twice must not fail
    register_testbed(TESTBED)

SETTINGS = {
    "most stay": {"stayers": 0.7, "fleers": 0.1},  # Death expected in Damascus: CDT flees
    "most flee": {"stayers": 0.1, "fleers": 0.7},  # Death expected in Aleppo: CDT stays
}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="parent of the run folders (default: temporary)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", default="fast", help="testbed budget: smoke, fast or default")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        parent = args.out or Path(scratch)
        for label, params in SETTINGS.items():
            out = parent / label.replace(" ", "_")
            results = run_testbed(
                TESTBED.name, params, agents=["edt", "cdt"], seed=args.seed, out=out, budget=args.budget
            )
            for agent in ("edt", "cdt"):
                measured = results["agents"][agent]
                rows.append(
                    {
                        "setting": label,
                        "params": params,
                        "agent": agent,
                        "choice": measured["choice"],
                        "theory_choice": measured["theory_choice"],
                        "mean_return": measured["mean_return"],
                        "theory_expected_return": results["theory"][agent]["expected_return"],
                    }
                )
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
