"""One decision testbed end to end: data -> one simulator -> every agent -> theory beside measurement.

``run_testbed("newcomb", {"accuracy": 0.6}, out=DIR)`` (or ``simagents testbed newcomb
--param accuracy=0.6 --out DIR``):

1. draws observational demonstrations and interventional data (the acting choice drawn
   independently of every hidden variable) from the testbed's own ``demonstrations`` and
   saves both as Minari datasets, ``DIR/data/observational`` and ``DIR/data/interventional``;
2. trains ONE simulator on both (counterfactual teaching), ``DIR/simulator``;
3. wraps it into each agent (imitation, dt, edt, cdt, ...: none of them is told which
   testbed it is in) and plays it in the deployed env, ``Testbed.make(**params)``;
4. writes ``DIR/results.json``: the testbed's theory and, per agent, its returns, the
   frequencies of its first action by name (``choice_rates``), and generic first-step
   metrics: what the simulator predicted the first action would earn, what it earned,
   and their difference (``delusion_gap``), and the steps per episode (``mean_steps``).

Every agent's entry also carries ``choice`` (its most frequent first action) and
``theory_choice`` (the theory's choice for the agent of that name, where the theory has
one: ``edt``, ``cdt``, and ``dt`` for the gamble), so a reader, a test or the report can
compare the two without knowing the testbed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from simagents.agents import AGENTS, Agent, evaluate, make_agent
from simagents.agents.base import parse_agent_spec
from simagents.data.minari_io import save_dataset
from simagents.envs import Testbed, get_testbed
from simagents.errors import SimagentsError, check_seed
from simagents.io import atomic_write_json, fresh_folder, to_dict, write_run_record
from simagents.model import Context, Simulator, SimulatorConfig
from simagents.threads import threads
from simagents.train import TrainConfig, train

DEFAULT_AGENTS = ("imitation", "dt", "edt", "cdt")


@dataclass(frozen=True)
class TestbedBudget:
    """How much data, training and evaluation one testbed run gets."""

    __test__ = False  # not a pytest test class, despite the name

    episodes: int = 2000
    """Observational demonstrations (episodes)."""
    interventional_episodes: int = 2000
    """Interventional episodes (the acting choice drawn at random)."""
    steps: int = 2000
    """Training steps of the simulator. Many, because the causal effects the planners compare can
    be small beside the returns: Newcomb's 1,000 next to 1,000,000 needs the interventional action
    values right to 0.1%, and what stands between them at a few hundred steps is convergence, not
    data (every interventional draw is played with both actions). Measured (Newcomb, default
    params, CDT margin E[R|do(two_box)] − E[R|do(one_box)], true +1,000, seeds 0-7): at 600 steps
    −5,952 to +4,656 (cosine to 0.1 of lr) and −2,650 to +1,134 (to 0.01), half of them negative;
    at 2,000 steps (to 0.01) +442 to +1,845, mean +1,033, at seeds 0-11: every one positive."""
    batch_size: int = 128
    """Windows per training step."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.01
    """The cosine schedule decays to this fraction of ``lr``."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    eval_episodes: int = 200
    """Episodes each agent plays in the deployed env."""
    n_embd: int = 64
    """Simulator width."""
    n_layer: int = 2
    """Simulator depth. The context is the longest episode in the data."""
    n_return_bins: int = 51
    """Return bins. The testbeds' returns take few values; with 201 bins (the CartPole default) the
    evidential planner in DelusionBoxes also switches boxes after a miss (measured: equal mean
    steps, 1.465), so its off-distribution behaviour depends on the return head's resolution."""
    threads: int = 1
    """torch and numpy BLAS threads for training and acting (restored afterwards). One is fastest
    for models this small: two threads spend more time synchronising than computing, and on a
    busy machine much more (measured: 13 ms against 300-600 ms per training step)."""


BUDGETS = {
    # Every testbed in under 2 minutes on 2 cores, data to results (see the module docstring).
    "default": TestbedBudget(),
    # For tests: EDT and CDT still follow theory on the one-step testbeds, in about 10 s a run.
    "fast": TestbedBudget(
        episodes=500, interventional_episodes=500, steps=200, batch_size=64, eval_episodes=10
    ),
    # Seconds: checks the plumbing, learns nothing.
    "smoke": TestbedBudget(
        episodes=20, interventional_episodes=20, steps=4, batch_size=8, eval_episodes=3, n_embd=16, n_layer=1
    ),
}


def resolve_budget(budget: TestbedBudget | str) -> TestbedBudget:
    if isinstance(budget, TestbedBudget):
        return budget
    if budget not in BUDGETS:
        raise SimagentsError(f"budget {budget!r} is not one of: {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def check_agents(agents: Sequence[str]) -> tuple[str, ...]:
    """The agents (``NAME`` or ``NAME[KEY=VALUE,...]``), checked against the registry and its
    options before anything is written."""
    names = tuple(agents)
    if not names:
        raise SimagentsError("no agents given; pass e.g. --agents imitation,dt,edt,cdt")
    unknown = [a for a in names if parse_base_name(a) not in AGENTS]
    if unknown:
        raise SimagentsError(
            f"unknown agent(s) {', '.join(unknown)}; choose from: {', '.join(sorted(AGENTS))}"
            " (options as NAME[KEY=VALUE,...], e.g. edt[horizon=3])"
        )
    for name in names:
        parse_agent_spec(name)
    if len(set(names)) < len(names):
        raise SimagentsError(f"agents {', '.join(names)}: each agent once")
    return names


def parse_base_name(spec: str) -> str:
    """``edt[horizon=3]`` -> ``edt``: the registered agent a spec builds, whose theory applies."""
    return spec.split("[", 1)[0].strip()


# --------------------------------------------------------------------------- data


def make_datasets(
    testbed: Testbed, params: dict[str, Any], budget: TestbedBudget, seed: int, folder: Path
) -> dict[str, dict[str, Any]]:
    """Observational and interventional data from the testbed's demonstrators, as Minari datasets.

    Returns, per kind, the dataset's path and a summary of its episodes.
    """
    env = testbed.make(**params)
    out = {}
    kinds = (
        ("observational", budget.episodes, False),
        ("interventional", budget.interventional_episodes, True),
    )
    for index, (kind, n_episodes, intervene) in enumerate(kinds):
        rng = np.random.default_rng([seed, index])
        episodes = testbed.demonstrations(params, n_episodes, rng, intervene=intervene)
        path = save_dataset(
            episodes,
            folder / kind,
            observation_space=env.observation_space,
            action_space=env.action_space,
            env_id=testbed.env_id,
            env_kwargs=params,
            description=f"{testbed.name}: {n_episodes} {kind} episodes (simagents testbed)",
        )
        first = np.bincount([int(e.actions[0]) for e in episodes], minlength=len(testbed.action_names))
        out[kind] = {
            "path": str(path),
            "episodes": len(episodes),
            "first_choice_rates": {
                name: float(first[i] / len(episodes)) for i, name in enumerate(testbed.action_names)
            },
            "steps": sum(len(e) for e in episodes),
            "mean_return": float(np.mean([e.episode_return for e in episodes])),
            "max_length": max(len(e) for e in episodes),
        }
    env.close()
    return out


# --------------------------------------------------------------------------- evaluation


class FirstStepRecorder(gym.Wrapper):
    """Records each episode's first action and first reward, whatever the env."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.first_actions: list[Any] = []
        self.first_rewards: list[float] = []
        self._steps = 0

    def reset(self, **kwargs: Any) -> Any:
        self._steps = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        result = self.env.step(action)
        if self._steps == 0:
            self.first_actions.append(action)
            self.first_rewards.append(float(result[1]))
        self._steps += 1
        return result


class FirstPrediction:
    """Delegates to an agent; after its first action, reads the simulator's predicted reward.

    For an agent that acts through a simulator's :class:`~simagents.model.Context` the
    prediction is the reward head at the agent's own action token, flagged as the agent
    flags it (evidence or intervention). Other agents give NaN.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.predictions: list[float] = []
        self._first = True

    def reset(self, seed: int | None = None) -> None:
        self.agent.reset(seed=seed)
        self._first = True

    def act(self, observation: Any, reward: float = 0.0, action_mask: np.ndarray | None = None) -> Any:
        # Like evaluate: only a mask is passed on, so agents written before masks still run.
        if action_mask is None:
            action = self.agent.act(observation, reward)
        else:
            action = self.agent.act(observation, reward, action_mask=action_mask)
        if self._first:
            self._first = False
            self.predictions.append(self._predicted_reward())
        return action

    @torch.no_grad()
    def _predicted_reward(self) -> float:
        simulator = getattr(self.agent, "simulator", None)
        context = getattr(self.agent, "context", None)
        if not isinstance(simulator, Simulator) or not isinstance(context, Context):
            return math.nan
        hidden = context.hidden()  # runs the pending action token: the state at a_t
        return float(simulator.predicted_reward(hidden).reshape(-1)[0])

    def episode_metrics(self) -> dict[str, float]:
        metrics = getattr(self.agent, "episode_metrics", None)
        return metrics() if metrics else {}


def evaluate_agent(
    agent: Agent, env: gym.Env, action_names: Sequence[str], episodes: int, seed: int
) -> dict[str, Any]:
    """``evaluate``'s summary plus first-step metrics: choice rates by name, predicted vs realised reward."""
    recorder = FirstStepRecorder(env)
    wrapped = FirstPrediction(agent)
    summary: dict[str, Any] = evaluate(wrapped, recorder, episodes, seed=seed).summary()
    firsts = [int(np.asarray(a)) for a in recorder.first_actions]
    counts = np.bincount(firsts, minlength=len(action_names))
    summary["choice_rates"] = {name: float(counts[i] / len(firsts)) for i, name in enumerate(action_names)}
    summary["choice"] = action_names[int(np.argmax(counts))]
    predicted = np.array(wrapped.predictions, dtype=np.float64)
    realised = np.array(recorder.first_rewards, dtype=np.float64)
    summary["mean_steps"] = summary["mean_length"]
    summary["first_reward"] = float(realised.mean())
    if not np.all(np.isnan(predicted)):
        summary["first_predicted_reward"] = float(np.nanmean(predicted))
        summary["delusion_gap"] = float(np.nanmean(predicted - realised))
    return summary


# --------------------------------------------------------------------------- the run


def run_testbed(
    name: str,
    params: Mapping[str, Any] | None = None,
    agents: Sequence[str] = DEFAULT_AGENTS,
    seed: int = 0,
    out: Path | str = Path("runs/testbed"),
    budget: TestbedBudget | str = "default",
    progress: bool = False,
) -> dict[str, Any]:
    """Run testbed ``name`` with ``params`` for ``agents``; write and return ``out/results.json``'s content.

    Bad names, parameters, agents or an existing non-empty ``out`` raise
    :class:`SimagentsError` before anything is written.

    Example (``simagents testbed newcomb --param accuracy=0.9 --budget smoke --out runs/newcomb``;
    the ``smoke`` budget checks the plumbing in seconds, ``default`` trains planners that follow
    the theory):

    >>> from simagents import run_testbed
    >>> results = run_testbed("newcomb", {"accuracy": 0.9}, agents=["edt", "cdt"], budget="smoke", out="runs/newcomb")
    >>> results["theory"]["edt"]["choice"], results["theory"]["cdt"]["choice"]
    ('one_box', 'two_box')
    >>> sorted(results["agents"])
    ['cdt', 'edt']
    """
    testbed = get_testbed(name)
    full_params = testbed.check_params(params)
    agents = check_agents(agents)
    check_seed(seed, f"testbed {testbed.name}")
    budget = resolve_budget(budget)
    theory = testbed.theory(**full_params)
    with fresh_folder(out, "testbed run") as folder, threads(budget.threads):
        return _run(testbed, full_params, theory, agents, seed, folder, budget, progress)


def _run(
    testbed: Testbed,
    full_params: dict[str, Any],
    theory: dict[str, Any],
    agents: tuple[str, ...],
    seed: int,
    folder: Path,
    budget: TestbedBudget,
    progress: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    config = {
        "testbed": testbed.name,
        "params": full_params,
        "agents": list(agents),
        "seed": seed,
        "budget": to_dict(budget),
    }
    write_run_record(folder, config)

    timings: dict[str, float] = {}
    tick = time.perf_counter()
    data = make_datasets(testbed, full_params, budget, seed, folder / "data")
    timings["data_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    context_len = max(d["max_length"] for d in data.values())
    cfg = TrainConfig(
        data=tuple(d["path"] for d in data.values()),
        out=folder / "simulator",
        model=SimulatorConfig(
            context_len=context_len,
            n_embd=budget.n_embd,
            n_layer=budget.n_layer,
            n_return_bins=budget.n_return_bins,
        ),
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        warmup_steps=min(budget.warmup_steps, budget.steps),
        min_lr_ratio=budget.min_lr_ratio,
        # No held-out split: the interventional data are blocked (every hidden draw played with
        # every action), and dropping a random tenth of the episodes would break the blocks,
        # adding sampling noise larger than a small causal effect (Newcomb's 1,000 in 1,000,000).
        validation_fraction=0.0,
        seed=seed,
        threads=budget.threads,
    )
    cfg = replace(cfg, eval_every=budget.steps, log_every=max(budget.steps // 4, 1))
    train(cfg, progress=progress)
    simulator = Simulator.load(cfg.out)
    timings["train_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    env = testbed.make(**full_params)
    results_per_agent = {}
    for agent_name in agents:
        base, options = parse_agent_spec(agent_name)
        agent = make_agent(base, simulator, **options)
        summary = evaluate_agent(agent, env, testbed.action_names, budget.eval_episodes, 10_000 + seed)
        expected = theory.get(base)
        summary["theory_choice"] = expected.get("choice") if isinstance(expected, dict) else None
        results_per_agent[agent_name] = summary
    env.close()
    timings["evaluate_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - start

    results = {
        "testbed": testbed.name,
        "params": full_params,
        "seed": seed,
        "theory": theory,
        "agents": results_per_agent,
        "data": data,
        "budget": to_dict(budget),
        "timings": timings,
    }
    atomic_write_json(folder / "results.json", results)
    return results
