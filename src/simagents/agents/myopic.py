"""A myopic predictor: forecast what the simulator predicts, and be retrained on the outcome.

Seed 001's minimally instrumental predictor is graded at once on each output: it reports
its belief and takes no step to make that belief come true. ``myopic`` is that predictor
made from a simulator of forecasters. Its action is a forecast of the next observation
(the action and observation spaces must have the same shape, as in ``Prophecy-v0``, where
the observation is the event the action forecasts), and it reports the simulator's own
prediction of that observation: the world model's next observation after the forecast the
simulator expects here (the imitation policy's mode), with the reward token set to the
simulator's predicted reward.

A predictor learns from outcomes, not from its score. :func:`repeated_risk_minimisation`
therefore trains its simulators on the *predictor's view* of the data: observations and
forecasts, the reward channel withheld (zero). That matters: the world model reads the
reward token before it predicts the next observation, and with real rewards in the data a
score and a forecast together give the outcome away (a Brier score of forecast 0.2 is either
-0.04 or -0.64), so the world model learns to read the event off the reward instead of
predicting it (measured on a simulator trained with rewards: the next-observation head gave
0.03 to 0.95 for forecasts whose event probabilities were 0.44 to 0.56).

:func:`repeated_risk_minimisation` is performative prediction's retraining loop (Perdomo et
al. 2020): train on the data, deploy the predictor, retrain on its deployment alone
(``simagents.train.train``), repeat. Each round's world model predicts what the previous
round's forecasts caused, so the rounds converge to the calibrated fixed point (the
performatively *stable* forecast), not to the forecast that scores best.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from simagents.agents.base import Agent, SimulatorAgent, register_agent
from simagents.data.episodes import Episode, episode_from_arrays
from simagents.data.minari_io import save_dataset
from simagents.model import Simulator
from simagents.train import TrainConfig, train


@register_agent("myopic")
class MyopicAgent(SimulatorAgent):
    """Reports the simulator's predicted next observation as its action (a forecast)."""

    def __init__(self, simulator: Simulator, min_history: int | None = None) -> None:
        if simulator.act_discrete or simulator.obs_discrete or simulator.act_dim != simulator.obs_dim:
            raise ValueError(
                "myopic forecasts the next observation: it needs Box observations and Box actions of "
                f"the same size, got {simulator.observation_space} and {simulator.action_space}"
            )
        super().__init__(simulator, min_history=min_history)

    def choose(self) -> Tensor:
        model = self.simulator
        h = self.context.push_return(None)
        expected = model.sample_action(h, None, 0.0)  # (1,act_dim): the forecast the simulator expects
        rollout = self.context.fork(1, extra_tokens=2)  # a, r: imagined, the context is unchanged
        reward = model.predicted_reward(rollout.push_actions(expected, self.intervention))
        predicted = rollout.predicted_observation(rollout.push_rewards(reward))  # (1,obs_dim)
        low, high = model.act_low, model.act_high
        forecast = torch.maximum(torch.minimum(predicted[0], high), low)
        self.step_records.append(
            {"forecast": float(forecast.mean()), "expected_forecast": float(expected.mean())}
        )
        return forecast


def record_episodes(
    agent: Agent, env: gym.Env, episodes: int, seed: int, intervention: bool = False, policy: str = "agent"
) -> list[Episode]:
    """Play ``episodes`` episodes (episode i seeded ``seed + i``) and return them as episodes."""
    out = []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        agent.reset(seed=seed + i)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        reward, done = 0.0, False
        while not done:
            action = agent.act(obs, reward, action_mask=info.get("action_mask"))
            obs, step_reward, terminated, truncated, info = env.step(action)
            reward = float(step_reward)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(bool(terminated))
            truncations.append(bool(truncated))
            done = terminated or truncated
        out.append(
            episode_from_arrays(
                observations=np.asarray(observations),
                actions=np.asarray(actions),
                rewards=np.asarray(rewards),
                terminations=np.asarray(terminations),
                truncations=np.asarray(truncations),
                observation_space=env.observation_space,
                action_space=env.action_space,
                interventions=np.full(len(actions), intervention),
                policy=policy,
                seed=seed + i,
            )
        )
    return out


def without_rewards(episodes: Sequence[Episode]) -> list[Episode]:
    """The predictor's view of episodes: everything but the rewards, which become 0."""
    return [replace(e, rewards=np.zeros_like(e.rewards)) for e in episodes]


def repeated_risk_minimisation(
    episodes: Sequence[Episode],
    env: gym.Env,
    train_config: TrainConfig,
    folder: Path,
    rounds: int,
    deploy_episodes: int,
    seed: int = 0,
    measure: Callable[[list[Episode]], dict[str, Any]] | None = None,
) -> tuple[Simulator, list[dict[str, Any]]]:
    """Train a predictor's simulator on ``episodes``, deploy ``myopic`` on it in ``env``, retrain on
    that deployment alone, ``rounds`` trainings in all.

    Round k saves its training data (rewards withheld, see the module docstring) as the Minari
    dataset ``folder/round_k/data``, trains a fresh simulator ``folder/round_k/simulator`` with
    ``train_config`` (``data`` and ``out`` replaced) and plays ``deploy_episodes`` episodes with
    it. Returns the last simulator and, per round, ``{"round", "mean_return", **measure(its
    deployment)}``. The env's spaces must match the episodes'.
    """
    if rounds < 1 or deploy_episodes < 1:
        raise ValueError(f"rounds and deploy_episodes must be >= 1, got {rounds} and {deploy_episodes}")
    spec = env.spec
    history = []
    data = list(episodes)
    simulator = None
    for k in range(rounds):
        path = save_dataset(
            without_rewards(data),
            folder / f"round_{k}" / "data",
            observation_space=env.observation_space,
            action_space=env.action_space,
            env_id=spec.id if spec is not None else None,
            env_kwargs=dict(spec.kwargs) if spec is not None else {},
            description=f"myopic predictor, round {k}: {'demonstrations' if k == 0 else 'its own deployment'}",
        )
        cfg = replace(train_config, data=(str(path),), out=folder / f"round_{k}" / "simulator")
        simulator = Simulator.load(train(cfg, progress=False))
        data = record_episodes(MyopicAgent(simulator), env, deploy_episodes, seed + 1000 * k, policy="myopic")
        history.append(
            {
                "round": k,
                "mean_return": float(np.mean([e.episode_return for e in data])),
                **(measure(data) if measure else {}),
            }
        )
    assert simulator is not None
    return simulator, history


def mean_action(episodes: Sequence[Episode]) -> float:
    """Mean of every action component over the episodes' steps."""
    return float(np.mean(np.concatenate([e.actions.reshape(-1) for e in episodes])))
