"""A decision procedure of your own: a risk-averse planner over the simulator.

The built-in planners (``edt``, ``cdt``) take the action whose predicted return has the
highest *mean*. The simulator predicts a whole return distribution (categorical over return
bins), so a planner can read any statistic of it. This one maximises a lower quantile: with
``quantile=0.1`` it takes the action whose worst tenth of outcomes is best. Nothing here
knows which problem it plays; the simulator supplies the distribution, the rule picks.

Registered as ``risk_averse``, so once this file is imported (``--plugin``) the CLI and the
study can use it::

    simagents --plugin examples/custom_agent.py eval RUN --agent risk_averse --option quantile=0.1

Run as a script, it trains one simulator on the gamble testbed with a lucrative risky bet
(+30 or −15 at even odds: mean +7.5, beside a sure +1) and prints, per quantile, the bet the
planner takes beside the bet that maximises that quantile of the true payoffs::

    python examples/custom_agent.py            # about 10-30 s on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simagents import Simulator, make_agent, register_agent, run_testbed
from simagents.agents.planner import PlannerAgent, PlanScores
from simagents.envs import get_testbed
from simagents.study.testbed import evaluate_agent


def return_quantile(simulator: Simulator, logits: Tensor, quantile: float) -> Tensor:
    """Return-bin logits (N,bins) -> the ``quantile`` of each predicted return distribution (N,)."""
    cdf = torch.softmax(logits, -1).cumsum(-1)  # (N,bins)
    # The first bin whose cumulative probability reaches the quantile.
    index = (cdf < quantile).sum(-1).clamp(max=cdf.shape[-1] - 1)  # (N,)
    return simulator.get_buffer("return_bins")[index]


@register_agent("risk_averse")
class RiskAversePlanner(PlannerAgent):
    """Route 5 with another decision rule: maximise a quantile of the predicted return, not its mean.

    Candidates are the built-in planner's (every Discrete action, or samples of the imitation
    policy for Box); each is scored as one batch on the shared cached prefix.
    """

    def __init__(
        self, simulator: Simulator, quantile: float = 0.1, intervention: bool = False, candidates: int = 16
    ) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self.quantile = float(quantile)
        self.intervention = intervention  # how its own action enters the context (evidence or not)
        super().__init__(simulator, candidates=candidates)

    def score(self, candidates: Tensor) -> PlanScores:
        evaluation = self.context.evaluate_actions(candidates, self.intervention)
        return PlanScores(
            return_quantile(self.simulator, evaluation.return_logits, self.quantile), evaluation.reward
        )


def theory_choice(params: dict[str, Any], quantile: float) -> str:
    """The bet whose true payoff distribution has the highest ``quantile`` (ties: the first bet)."""
    testbed = get_testbed("gamble")
    p = testbed.params_class(**params)
    payoffs = p.payoffs()  # (bets, 2): payoff when the coin wins, when it loses
    odds = np.array([p.p_win, 1 - p.p_win])
    values = []
    for outcomes in payoffs:
        order = np.argsort(outcomes)
        cdf = np.cumsum(odds[order])
        values.append(outcomes[order][min(int(np.sum(cdf < quantile)), len(cdf) - 1)])
    return testbed.action_names[int(np.argmax(values))]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.1, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per quantile")
    args = parser.parse_args(argv)
    params = {"risky_win": 30.0}
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "gamble"
        # One simulator trained on the testbed's data; `edt` (the mean) for comparison.
        results = run_testbed("gamble", params, agents=["edt"], seed=args.seed, out=out, budget="fast")
        simulator = Simulator.load(out / "simulator")
        testbed = get_testbed("gamble")
        rows = [
            {
                "agent": "edt",
                "choice": results["agents"]["edt"]["choice"],
                "theory_choice": results["theory"]["edt"]["choice"],
                "mean_return": results["agents"]["edt"]["mean_return"],
            }
        ]
        for quantile in args.quantiles:
            agent = make_agent("risk_averse", simulator, quantile=quantile)
            summary = evaluate_agent(
                agent, testbed.make(**params), testbed.action_names, args.episodes, seed=10_000 + args.seed
            )
            rows.append(
                {
                    "agent": "risk_averse",
                    "quantile": quantile,
                    "choice": summary["choice"],
                    "theory_choice": theory_choice(params, quantile),
                    "mean_return": summary["mean_return"],
                }
            )
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
