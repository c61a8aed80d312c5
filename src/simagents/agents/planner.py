"""Route 5, outer-loop planning: score every candidate action by its predicted return, take the best.

The same planner makes two decision theorists, depending only on how it asks the
simulator about its own action (seed 000):

- ``edt``: the action enters as *evidence*, as a demonstrator's choice would. The
  simulator answers "what return follows, among trajectories where this action
  was taken?" — an evidential decision theorist (one-boxes, cooperates with its
  twin, abstains in the smoking lesion).
- ``cdt``: the action enters as an *intervention*. A simulator trained with
  counterfactual teaching answers "what return follows if I set this action?" —
  a causal decision theorist.

Candidates: every action of a Discrete space; for Box, ``candidates`` samples from
the imitation policy plus its mode. All are scored in one batch on the shared
cached prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simagents.agents.base import SimulatorAgent, register_agent
from simagents.model import Simulator


class PlannerAgent(SimulatorAgent):
    def __init__(self, simulator: Simulator, intervention: bool, candidates: int = 16) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.intervention = intervention
        self.n_candidates = candidates
        super().__init__(simulator)

    def candidate_actions(self, h_return: Tensor) -> Tensor:
        model = self.simulator
        if model.act_discrete:
            return torch.arange(model.act_dim) + model.act_start
        sampled = model.sample_action(h_return, self.generator, 1.0, n=self.n_candidates - 1)
        return torch.cat([model.sample_action(h_return, None, 0.0), sampled])

    def choose(self) -> Tensor:
        h = self.context.push_return(None)
        candidates = self.candidate_actions(h)
        scores = self.context.evaluate_actions(candidates, self.intervention)
        best = int(torch.argmax(scores.expected_return))
        self.step_records.append(
            {
                "predicted_return": float(scores.expected_return[best]),
                "predicted_reward": float(scores.reward[best]),
            }
        )
        return candidates[best]


@register_agent("edt")
def make_edt(simulator: Simulator, candidates: int = 16) -> PlannerAgent:
    """Evidential planner: the agent's own action is evidence."""
    return PlannerAgent(simulator, intervention=False, candidates=candidates)


@register_agent("cdt")
def make_cdt(simulator: Simulator, candidates: int = 16) -> PlannerAgent:
    """Causal planner: the agent's own action is an intervention (needs counterfactual teaching)."""
    return PlannerAgent(simulator, intervention=True, candidates=candidates)
