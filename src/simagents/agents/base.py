"""The agent protocol, the registry of decision procedures, and the shared acting loop.

An agent is a decision procedure over a simulator, not a new model. Every agent
keeps one episode's context in the simulator's KV cache and follows the same
token protocol: the reward of its previous action, then the new observation,
then a return token and an action chosen by the procedure.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from simagents.errors import SimagentsError
from simagents.model import Context, Simulator, as_model_input


@runtime_checkable
class Agent(Protocol):
    """What every decision procedure offers: stateful over one episode."""

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` fixes any sampling the agent does."""

    def act(self, observation: Any, reward: float = 0.0) -> Any:
        """The action for ``observation``; ``reward`` is what the previous action earned (ignored at
        the first step of an episode)."""


class SimulatorAgent:
    """Shared acting loop over a simulator. Subclasses implement :meth:`choose`.

    ``intervention`` says how the agent's own actions enter its context: as evidence
    (False: like a demonstrator's choice) or as interventions (True: counterfactual teaching).
    """

    intervention: bool = False

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator.eval()
        self.generator = torch.Generator()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.context = Context(self.simulator)
        self.generator.manual_seed(0 if seed is None else seed)
        self.started = False
        self.step_records: list[dict[str, float]] = []

    @torch.no_grad()
    def act(self, observation: Any, reward: float = 0.0) -> Any:
        if self.started:
            self.context.push_reward(float(reward))
            self.observe_reward(float(reward))
        self.context.push_observation(as_model_input(observation, self.simulator.observation_space))
        action = self.choose()
        self.context.push_action(action, self.intervention)
        self.started = True
        return to_env_action(action, self.simulator.action_space)

    def choose(self) -> Tensor:
        """Push the return token and pick the action (model input form); the observation is in context."""
        raise NotImplementedError

    def observe_reward(self, reward: float) -> None:
        """Hook: the reward just received (e.g. a Decision Transformer lowers its target)."""

    def episode_metrics(self) -> dict[str, float]:
        """Averages of what the agent recorded per step this episode (e.g. predicted returns)."""
        if not self.step_records:
            return {}
        keys = self.step_records[0].keys()
        return {k: float(np.mean([r[k] for r in self.step_records])) for k in keys}


def to_env_action(action: Tensor, space: gym.Space) -> Any:
    if isinstance(space, gym.spaces.Discrete):
        return int(action.reshape(()).item())
    return action.reshape(space.shape).numpy().astype(space.dtype)


AgentFactory = Callable[..., Agent]
AGENTS: dict[str, AgentFactory] = {}


def register_agent(name: str) -> Callable[[AgentFactory], AgentFactory]:
    """Register a decision procedure under ``name`` for :func:`make_agent`, the CLI and the study.

    The factory is called as ``factory(simulator, **options)``."""

    def add(factory: AgentFactory) -> AgentFactory:
        if name in AGENTS and AGENTS[name] is not factory:
            raise ValueError(f"an agent named {name!r} is already registered")
        AGENTS[name] = factory
        return factory

    return add


def make_agent(name: str, simulator: Simulator, **options: Any) -> Agent:
    """Wrap ``simulator`` in the decision procedure ``name`` (see ``AGENTS`` for the names).

    Example::

        simulator = Simulator.load("runs/cartpole")
        agent = make_agent("dt", simulator, target="max")
        result = evaluate(agent, gymnasium.make("CartPole-v1"), episodes=20, seed=0)
    """
    if name not in AGENTS:
        raise SimagentsError(f"agent {name!r} is not registered; choose one of: {', '.join(sorted(AGENTS))}")
    factory = AGENTS[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted) - {"simulator"})
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        valid = [p for p in accepted if p != "simulator"]
        raise SimagentsError(
            f"agent {name!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(valid) or 'none'}"
        )
    try:
        return factory(simulator, **options)
    except (TypeError, ValueError) as exc:
        raise SimagentsError(f"agent {name!r}: {exc}") from None
