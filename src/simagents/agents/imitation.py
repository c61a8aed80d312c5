"""Route 1, imitation: sample the next action with the return unknown.

No goal is given, so the simulator plays whoever the context suggests is playing:
a copy of the data's agents, their mistakes included. ``label`` names who is playing
(one of the behaviour-policy labels of a simulator trained with label conditioning):
the simulator then plays like that policy, its mistakes included.
"""

from __future__ import annotations

from torch import Tensor

from simagents.agents.base import SimulatorAgent, check_temperature, register_agent
from simagents.model import Simulator


@register_agent("imitation")
class ImitationAgent(SimulatorAgent):
    def __init__(
        self,
        simulator: Simulator,
        temperature: float = 1.0,
        label: str | None = None,
        min_history: int | None = None,
    ) -> None:
        self.temperature = check_temperature(temperature)
        super().__init__(simulator, label=label, min_history=min_history)

    def choose(self) -> Tensor:
        self.context.queue_return(None)
        return self.sample_action(self.temperature)
