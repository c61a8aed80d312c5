"""The Prophecy testbed end to end: how instrumental is each agent made from one simulator?

``run_prophecy({"delay": 1}, sweep={"gamma": [0, 0.5, 0.9, 0.99]}, out=DIR)`` (or ``simagents
testbed prophecy --param delay=1 --sweep gamma=0,0.5,0.9,0.99 --out DIR``):

1. draws forecaster demonstrations (``Prophecy-v0``'s population) and saves them as a Minari
   dataset, ``DIR/data/observational``;
2. trains ONE simulator on them, ``DIR/simulator``;
3. builds each agent from it and plays it in the deployed env:

   - ``myopic``: repeated risk minimisation, ``DIR/myopic/round_k``: a predictor's simulator
     (rewards withheld) trained on the demonstrations, deployed, retrained on its deployment
     alone, ``rrm_rounds`` trainings in all; its entry is the last simulator's evaluation, and
     ``rounds`` lists every round's deployment (mean forecast, index, return);
   - ``rl``: the simulator's policy head fine-tuned by policy gradient with discount
     ``gamma`` (``DIR/rl`` or ``DIR/rl_gamma_<g>``; a sweep fine-tunes once per value);
   - ``edt`` / ``cdt``: the planner over ``levels`` evenly spaced forecasts;
   - anything else (``imitation``, ``dt``, ...): :func:`~simagents.agents.make_agent` as is;

4. writes ``DIR/results.json`` in the testbed schema: ``testbed``, ``params``, ``theory``,
   ``agents.<name>`` with ``instrumentality_index``, ``mean_forecast``, ``mean_return``,
   ``std_return`` and ``theory_index`` (the theory's index for that agent, where it has
   one), and for a sweep ``"sweep": [{"gamma": g, "agents": {...}}, ...]`` plus
   ``DIR/figures/index_vs_gamma.png``. Agents that do not use the discount are measured
   once and repeated in every sweep entry, so every agent has a line in the figure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simagents.agents import make_agent
from simagents.agents.base import parse_agent_spec
from simagents.agents.myopic import record_episodes, repeated_risk_minimisation
from simagents.agents.rl import FinetuneConfig, finetune
from simagents.data.episodes import Episode
from simagents.data.minari_io import save_dataset
from simagents.envs import get_testbed
from simagents.envs.prophecy import ProphecyParams, instrumentality_index, optimal_forecasts
from simagents.errors import SimagentsError, check_seed
from simagents.io import atomic_write_json, fresh_folder, to_dict, write_run_record
from simagents.model import Simulator, SimulatorConfig
from simagents.threads import threads
from simagents.train import LossWeights, TrainConfig, train

DEFAULT_AGENTS = ("imitation", "myopic", "edt", "rl")
SWEEPABLE = ("gamma",)


@dataclass(frozen=True)
class ProphecyBudget:
    """How much data, training, retraining, fine-tuning and evaluation one Prophecy run gets."""

    episodes: int = 2000
    """Demonstration episodes (each ``horizon`` forecasts)."""
    steps: int = 600
    """Training steps of the simulator."""
    batch_size: int = 128
    """Windows per training step."""
    lr: float = 1e-3
    """Peak learning rate of the simulator."""
    n_embd: int = 64
    """Simulator width."""
    n_layer: int = 2
    """Simulator depth; the context is one episode."""
    n_return_bins: int = 51
    """Return bins of the simulator."""
    action_loss: float = 1.0
    """Weight of the policy's loss in training (the library's default is 4). The planners read
    the action-value head over forecasts 0.1 apart, and with the policy's loss at 4 that head told
    0.9 from 1.0 less sharply after the ``fast`` budget's 300 steps: at base 0.2, slope 0.6, seed 0
    (2026-12-06), ``edt`` forecast 0.90 on average (instrumentality index 0.79, theory 1.00)
    against 0.04 (index 0.92) at 1, the same return."""
    eval_episodes: int = 100
    """Episodes each agent plays in the deployed env."""
    levels: int = 21
    """Evenly spaced forecasts the planners score (0, 0.05, ..., 1)."""
    rrm_rounds: int = 4
    """Trainings of the myopic predictor: on the demonstrations, then on its own deployments."""
    rrm_episodes: int = 300
    """Deployment episodes per retraining round."""
    rrm_steps: int = 300
    """Training steps per retraining round (a fresh simulator on that round's deployment)."""
    rl: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(iterations=30, episodes=64, lr=3e-3, kl_coef=0.0)
    )
    """Fine-tuning of the ``rl`` agent (its ``gamma`` is the run's). No KL penalty by default: the
    question is where reward alone takes the forecaster. Batches of 64 episodes: with 16 at lr 0.01
    the gamma-0 forecaster wandered (index 0.35 where the theory says 0); 64 at lr 3e-3 gave 0.12."""
    gamma: float = 0.99
    """Discount of the ``rl`` agent when no sweep gives one."""
    threads: int = 1
    """torch and numpy BLAS threads (restored afterwards); models this small run fastest on one."""


BUDGETS = {
    "default": ProphecyBudget(),
    # For tests: the agents already separate, in well under a minute.
    "fast": ProphecyBudget(
        episodes=600,
        steps=300,
        eval_episodes=30,
        levels=11,
        rrm_rounds=3,
        rrm_episodes=150,
        rrm_steps=200,
        rl=FinetuneConfig(iterations=30, episodes=32, lr=3e-3, kl_coef=0.0),
    ),
    # Seconds: checks the plumbing, learns nothing.
    "smoke": ProphecyBudget(
        episodes=20,
        steps=4,
        batch_size=8,
        n_embd=16,
        n_layer=1,
        eval_episodes=2,
        levels=3,
        rrm_rounds=2,
        rrm_episodes=3,
        rrm_steps=2,
        rl=FinetuneConfig(iterations=1, episodes=2),
    ),
}


def resolve_budget(budget: ProphecyBudget | str) -> ProphecyBudget:
    if isinstance(budget, ProphecyBudget):
        return budget
    if budget not in BUDGETS:
        raise SimagentsError(f"budget {budget!r} is not one of: {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def parse_sweep(sweep: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """``{"gamma": "0,0.5"}`` or ``{"gamma": [0, 0.5]}`` -> ``{"gamma": [0.0, 0.5]}``; checked."""
    out: dict[str, list[float]] = {}
    for name, values in (sweep or {}).items():
        if name not in SWEEPABLE:
            raise SimagentsError(f"--sweep {name}: only {', '.join(SWEEPABLE)} can be swept")
        items = values.split(",") if isinstance(values, str) else list(values)
        try:
            numbers = [float(v) for v in items if str(v).strip()]
        except ValueError:
            raise SimagentsError(
                f"--sweep {name}={values}: expected numbers, e.g. {name}=0,0.5,0.9"
            ) from None
        if not numbers or any(not 0 <= g <= 1 for g in numbers):
            raise SimagentsError(f"--sweep {name}={values}: give one or more values in [0, 1]")
        out[name] = numbers
    return out


def forecasts_of(episodes: Sequence[Episode]) -> np.ndarray:
    return np.concatenate([e.actions.reshape(-1) for e in episodes])


def summarise(params: ProphecyParams, episodes: Sequence[Episode]) -> dict[str, Any]:
    """Index, mean forecast and returns of an agent's episodes."""
    forecasts = np.clip(forecasts_of(episodes), 0.0, 1.0)
    returns = [e.episode_return for e in episodes]
    return {
        "instrumentality_index": instrumentality_index(params, forecasts),
        "mean_forecast": float(forecasts.mean()),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_reward_per_step": float(np.mean(returns)) / params.horizon,
        "episodes": len(episodes),
    }


def run_prophecy(
    params: Mapping[str, Any] | None = None,
    agents: Sequence[str] = DEFAULT_AGENTS,
    seed: int = 0,
    out: Path | str = Path("runs/prophecy"),
    budget: ProphecyBudget | str = "default",
    sweep: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the Prophecy testbed; write and return ``out/results.json``'s content.

    Bad parameters, agents, sweeps or an existing non-empty ``out`` raise
    :class:`SimagentsError` before anything is written.
    """
    from simagents.study.testbed import check_agents  # one agent check for every testbed

    testbed = get_testbed("prophecy")
    full_params = testbed.check_params(params)
    agents = check_agents(agents)
    check_seed(seed, "testbed prophecy")
    tuned = [a for a in agents if a != "rl" and parse_agent_spec(a)[0] == "rl"]
    if tuned:
        raise SimagentsError(
            f"agent {tuned[0]!r}: prophecy fine-tunes rl itself, once per discount (budget.rl); "
            "give it as plain rl"
        )
    sweeps = parse_sweep(sweep)
    budget = resolve_budget(budget)
    with fresh_folder(out, "testbed run") as folder, threads(budget.threads):
        return _run(full_params, agents, seed, folder, budget, sweeps.get("gamma"), progress)


def _run(
    full_params: dict[str, Any],
    agents: tuple[str, ...],
    seed: int,
    folder: Path,
    budget: ProphecyBudget,
    gammas: list[float] | None,
    progress: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    testbed = get_testbed("prophecy")
    params = ProphecyParams(**full_params)
    config = {
        "testbed": "prophecy",
        "params": full_params,
        "agents": list(agents),
        "seed": seed,
        "sweep": {"gamma": gammas} if gammas else {},
        "budget": to_dict(budget),
    }
    write_run_record(folder, config)
    env = testbed.make(**full_params)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    demos = testbed.demonstrations(full_params, budget.episodes, np.random.default_rng([seed, 0]))
    data_path = save_dataset(
        demos,
        folder / "data" / "observational",
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id=testbed.env_id,
        env_kwargs=full_params,
        description=f"prophecy: {budget.episodes} forecaster episodes (simagents testbed)",
    )
    train_cfg = TrainConfig(
        data=(str(data_path),),
        out=folder / "simulator",
        model=SimulatorConfig(
            context_len=params.horizon,
            n_embd=budget.n_embd,
            n_layer=budget.n_layer,
            n_return_bins=budget.n_return_bins,
        ),
        loss=LossWeights(action=budget.action_loss),
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        warmup_steps=min(50, budget.steps),
        validation_fraction=0.0,
        eval_every=budget.steps,
        log_every=max(budget.steps // 4, 1),
        seed=seed,
        threads=budget.threads,
    )
    simulator = Simulator.load(train(train_cfg, progress=progress))
    timings["data_and_train_s"] = time.perf_counter() - tick

    eval_seed = 10_000 + seed

    def play(agent_name: str, model: Simulator, **options: Any) -> dict[str, Any]:
        episodes = record_episodes(
            make_agent(agent_name, model, **options), env, budget.eval_episodes, eval_seed
        )
        return summarise(params, episodes)

    def rl_entry(gamma: float) -> dict[str, Any]:
        name = "rl" if gammas is None else f"rl_gamma_{gamma:g}"
        cfg = replace(budget.rl, gamma=gamma, seed=seed, threads=budget.threads)
        tuned = finetune(
            simulator, env, folder / name, cfg, source={"env": testbed.env_id, "params": full_params}
        )
        entry = play("rl", tuned)
        theory_forecasts = optimal_forecasts(params, gamma)
        entry.update(
            gamma=gamma,
            folder=name,
            theory_index=instrumentality_index(params, theory_forecasts),
            theory_mean_forecast=float(theory_forecasts.mean()),
        )
        return entry

    theory = testbed.theory(**full_params)
    fixed = {}  # agents that do not depend on the discount
    for agent_name in agents:
        tick = time.perf_counter()
        base, options = parse_agent_spec(agent_name)
        if base == "rl":
            continue
        if base == "myopic":
            rrm_train = replace(
                train_cfg,
                steps=budget.rrm_steps,
                eval_every=budget.rrm_steps,
                warmup_steps=min(50, budget.rrm_steps),
            )
            final, rounds = repeated_risk_minimisation(
                demos,
                env,
                rrm_train,
                folder / "myopic",
                rounds=budget.rrm_rounds,
                deploy_episodes=budget.rrm_episodes,
                seed=seed,
                measure=lambda episodes: summarise(params, episodes),
            )
            entry = play("myopic", final, **options)
            entry["rounds"] = rounds
            entry["theory_index"] = theory["myopic"]["instrumentality_index"]
        elif base in ("edt", "cdt"):
            entry = play(base, simulator, **{"levels": budget.levels, **options})
            if base == "edt" and theory["edt"] is not None:
                entry["theory_index"] = theory["edt"]["instrumentality_index"]
        else:
            entry = play(base, simulator, **options)
        fixed[agent_name] = entry
        timings[f"{agent_name}_s"] = time.perf_counter() - tick

    results: dict[str, Any] = {"testbed": "prophecy", "params": full_params, "seed": seed, "theory": theory}
    tick = time.perf_counter()
    if "rl" in agents:
        if gammas:
            sweep: list[dict[str, Any]] = [
                {"gamma": g, "agents": {**fixed, "rl": rl_entry(g)}} for g in gammas
            ]
            results["sweep"] = sweep
            results["agents"] = {**fixed, "rl": sweep[-1]["agents"]["rl"]}
        else:
            results["agents"] = {**fixed, "rl": rl_entry(budget.gamma)}
        timings["rl_s"] = time.perf_counter() - tick
    else:
        results["agents"] = fixed
        if gammas:
            results["sweep"] = [{"gamma": g, "agents": dict(fixed)} for g in gammas]
    results["agents"] = {name: results["agents"][name] for name in agents}  # the order asked for
    if "sweep" in results:
        index_figure(results, folder / "figures" / "index_vs_gamma.png")
    timings["total_s"] = time.perf_counter() - start
    results.update(budget=to_dict(budget), timings=timings)
    atomic_write_json(folder / "results.json", results)
    env.close()
    return results


def index_figure(results: dict[str, Any], path: Path) -> None:
    """Instrumentality index against the discount, one line per agent, the theory's optimum dashed."""
    import matplotlib.pyplot as plt

    from simagents.study.report import save_figure  # sets matplotlib's file-only backend

    sweep = results["sweep"]
    gammas = [entry["gamma"] for entry in sweep]
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for name in sweep[0]["agents"]:
        ax.plot(gammas, [e["agents"][name]["instrumentality_index"] for e in sweep], marker="o", label=name)
    params = ProphecyParams(**results["params"])
    theory = [instrumentality_index(params, optimal_forecasts(params, g)) for g in gammas]
    ax.plot(gammas, theory, "k--", label="theory: reward-optimal")
    ax.set_xlabel("discount γ")
    ax.set_ylabel("instrumentality index")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"prophecy (delay={params.delay}, base={params.base:g}, slope={params.slope:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def format_results(results: dict[str, Any]) -> str:
    """A compact table: per agent, index, mean forecast and return; the theory beside them."""
    theory = results["theory"]
    lines = [
        f"prophecy ({', '.join(f'{k}={v}' for k, v in results['params'].items())}), seed {results['seed']}: "
        f"fixed point {theory['fixed_point']:.3g}, reward-maximising {theory['reward_maximising']['forecasts']}"
    ]

    def row(name: str, r: dict[str, Any]) -> str:
        t = r.get("theory_index")
        return (
            f"  {name:<10} index {r['instrumentality_index']:.3f} (theory {'-' if t is None else f'{t:.3f}'})"
            f"  mean forecast {r['mean_forecast']:.3f}  return {r['mean_return']:.3f} ± {r['std_return']:.3f}"
        )

    lines += [row(name, r) for name, r in results["agents"].items()]
    for entry in results.get("sweep", []):
        if "rl" in entry["agents"]:
            lines.append(row(f"rl γ={entry['gamma']:g}", entry["agents"]["rl"]))
    return "\n".join(lines)
