"""Route 2, consequence conditioning: the Decision Transformer.

Prompt a return-to-go, take the policy's most likely action, lower the target by each
reward. Fast and able to beat its data, but a target the data cannot reach, or reached
only by luck, misleads it.

``temperature`` 0 (the default) acts on the mode of P(a | R, history), as the Decision
Transformer does for continuous actions; ``temperature=1`` samples it, as its Atari code
and d3rlpy's discrete version do. Sampled, it also plays the moves of players who reached
the target by luck, and the simulator's own spread: measured on the quick study's
simulators (2,000 steps, seed 0), CartPole 456.1 ± 131.8 at temperature 1 against 500.0 ± 0.0
at 0 (best behaviour policy 500), DoorKey 0.571 against 0.814 (best 0.822), Connect Four
0.24 of its games won against 0.61 (the population's average 0.44). ``expert=κ`` replaces the fixed target by Multi-Game DT's
expert sampling: each step draws R from P(R | history) · exp(κ·R), κ in units of
the data's return range.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simagents.agents.base import SimulatorAgent, check_temperature, register_agent
from simagents.model import Simulator


def resolve_target(simulator: Simulator, target: float | str) -> float:
    """'max', 'mean'... or 'qNN' (a percentile of the data's episode returns), or a number."""
    percentiles = simulator.stats.episode_return_percentiles
    if isinstance(target, int | float):
        return float(target)
    if target == "max":
        return percentiles[-1]
    if target == "median":
        return percentiles[10]
    if (
        target.startswith("q")
        and target[1:].isdigit()
        and int(target[1:]) % 5 == 0
        and int(target[1:]) <= 100
    ):
        return percentiles[int(target[1:]) // 5]
    try:
        return float(target)
    except ValueError:
        raise ValueError(
            f"target {target!r} is not a number, 'max', 'median' or a percentile q0, q5, ..., q100"
        ) from None


@register_agent("dt")
class DecisionTransformerAgent(SimulatorAgent):
    def __init__(
        self,
        simulator: Simulator,
        target: float | str = "max",
        temperature: float = 0.0,
        expert: float | None = None,
        min_history: int | None = None,
    ) -> None:
        self.initial_target = resolve_target(simulator, target)
        self.temperature = check_temperature(temperature)
        self.expert = expert
        super().__init__(simulator, min_history=min_history)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.target = self.initial_target
        self.h_obs: Tensor | None = None

    def observe_reward(self, reward: float) -> None:
        self.target -= reward

    def choose(self) -> Tensor:
        if self.expert is not None:
            self.target = self._expert_return(self.expert)
        self.context.queue_return(self.target)
        self.step_records.append({"prompted_return": self.target})
        return self.sample_action(self.temperature)

    def _expert_return(self, kappa: float) -> float:
        """Sample R ∝ P(R | history) exp(κ R) from the value head at the current observation."""
        model = self.simulator
        h_obs = self.context.hidden()  # at o_t: the return token is not pushed yet
        log_p = torch.log_softmax(model.value_head(h_obs).reshape(-1), -1)
        bins = model.return_bins
        scaled = (bins - bins[0]) / (bins[-1] - bins[0])
        weights = torch.softmax(log_p + float(kappa) * scaled, -1)
        index = torch.multinomial(weights, 1, generator=self.generator)
        return float(bins[index])
