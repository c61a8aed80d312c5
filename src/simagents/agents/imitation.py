"""Route 1, imitation: sample the next action with the return unknown.

No goal is given, so the simulator plays whoever the context suggests is playing:
a copy of the data's agents, their mistakes included.
"""

from __future__ import annotations

from torch import Tensor

from simagents.agents.base import SimulatorAgent, register_agent
from simagents.model import Simulator


@register_agent("imitation")
class ImitationAgent(SimulatorAgent):
    def __init__(self, simulator: Simulator, temperature: float = 1.0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature = temperature
        super().__init__(simulator)

    def choose(self) -> Tensor:
        h = self.context.push_return(None)
        return self.sample_action(h, self.temperature)[0]
