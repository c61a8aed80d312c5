"""Agents: decision procedures over one simulator, one small file each."""

from simagents.agents import dt, imitation, myopic, planner, rl  # noqa: F401  (registers the built-in agents)
from simagents.agents.base import AGENTS, Agent, SimulatorAgent, make_agent, register_agent
from simagents.agents.evaluate import Evaluation, evaluate

__all__ = ["AGENTS", "Agent", "Evaluation", "SimulatorAgent", "evaluate", "make_agent", "register_agent"]
