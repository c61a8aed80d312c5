"""The study: the main job. Data -> simulator -> every agent -> metrics -> a report a person reads.

A study is a grid of *cells*: each testbed (the decision testbeds and the control tasks)
for each seed. A cell trains its own simulator from its own data and writes its own
``results.json`` under ``cells/<testbed>/seed<k>/``, so ``resume`` skips finished cells
and a killed study loses at most the cell it was in. ``results.json`` at the top
gathers the cells: per testbed the first seed's results object, plus, over several
seeds, the mean and 95% confidence interval of every number (``over_seeds``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console

from simagents.agents import evaluate, make_agent
from simagents.agents.dt import DecisionTransformerAgent
from simagents.data.collect import CollectConfig, collect, make_env
from simagents.data.minari_io import load_dataset
from simagents.envs import get_testbed
from simagents.errors import SimagentsError, check_seed
from simagents.io import (
    LOCK_NAME,
    atomic_write_json,
    hold_lock,
    read_json,
    to_dict,
    write_run_record,
)
from simagents.model import Simulator, SimulatorConfig
from simagents.study.connect_four import run_connect_four
from simagents.study.prophecy import run_prophecy
from simagents.study.report import write_report
from simagents.study.testbed import run_testbed
from simagents.threads import set_threads
from simagents.train import TrainConfig, train


@dataclass(frozen=True)
class Profile:
    """Budget of one study run."""

    episodes: int
    """Behaviour episodes collected per control-task dataset."""
    steps: int
    """Training steps per control-task simulator."""
    eval_episodes: int
    """Evaluation episodes per agent on a control task."""
    model: SimulatorConfig
    """Control-task simulator architecture."""
    testbed_budget: str
    """Budget of each decision testbed (a name in ``simagents.study.testbed.BUDGETS``)."""
    seeds: int
    """Seeds per cell unless ``--seeds`` says otherwise; confidence intervals need two or more."""
    calibration_episodes: int
    """Episodes per prompted return for the Decision Transformer's calibration curve."""
    prophecy_budget: str
    """Budget of the Prophecy cell (a name in ``simagents.study.prophecy.BUDGETS``)."""
    connect_four_budget: str
    """Budget of the Connect Four cell (a name in ``simagents.study.connect_four.BUDGETS``)."""


PROFILES = {
    "quick": Profile(
        episodes=300,
        # 2,000 rather than 1,000 (measured 2026-12-01, training seed 0, 20-40 episodes): CartPole
        # imitation 250.9 against the data's 266.0 (406.1 at 1,000 steps: it played the strong
        # players too often), DoorKey imitation 0.43 / dt 0.57 / edt 0.66 (0.14 / 0.29 / 0.42).
        steps=2000,
        eval_episodes=20,
        model=SimulatorConfig(),
        testbed_budget="default",
        seeds=1,
        calibration_episodes=5,
        prophecy_budget="default",
        connect_four_budget="default",
    ),
    "full": Profile(
        episodes=1000,
        steps=3000,
        eval_episodes=50,
        model=SimulatorConfig(),
        testbed_budget="default",
        seeds=3,
        calibration_episodes=10,
        prophecy_budget="default",
        connect_four_budget="full",
    ),
    "smoke": Profile(
        episodes=12,
        steps=10,
        eval_episodes=2,
        model=SimulatorConfig(context_len=4, n_embd=16, n_layer=1, n_head=1),
        testbed_budget="smoke",
        seeds=1,
        calibration_episodes=1,
        prophecy_budget="smoke",
        connect_four_budget="smoke",
    ),
}

CONTROL_AGENTS = ("imitation", "dt", "edt")
DECISION_AGENTS = ("imitation", "dt", "edt", "cdt")
# Prompts of the Decision Transformer's calibration curve: percentiles of the data's returns.
DT_TARGETS = ("q10", "q50", "q90", "max")
# Prophecy: the forecast moves the outcome one step later (delay 1), so how far an agent steers
# its forecasts depends on how much it values later rewards; the sweep draws that curve.
PROPHECY_PARAMS = {"delay": 1}
PROPHECY_GAMMAS = (0.0, 0.5, 0.9, 0.99)


def calibration(simulator: Simulator, env: gym.Env, episodes: int, seed: int) -> list[dict[str, Any]]:
    """Prompted vs achieved return of ``dt`` at :data:`DT_TARGETS`: ``[{target, prompted, achieved, std}]``."""
    points = []
    for target in DT_TARGETS:
        agent = make_agent("dt", simulator, target=target)
        if not isinstance(agent, DecisionTransformerAgent):
            raise SimagentsError(f"calibration needs the built-in dt agent, got {type(agent).__name__}")
        returns = evaluate(agent, env, episodes, seed=20_000 + seed).returns
        points.append(
            {
                "target": target,
                "prompted": float(agent.initial_target),
                "achieved": float(np.mean(returns)),
                "std": float(np.std(returns)),
            }
        )
    return points


def run_control_cell(
    folder: Path, env_id: str, profile: Profile, seed: int, progress: bool
) -> dict[str, Any]:
    """Mixed-skill data on a control task; D4RL-style scores between random (0) and the best policy (100)."""
    data = folder / "data"
    if not (data / "data").is_dir():
        collect(CollectConfig(env=env_id, out=data, policy="mixed", episodes=profile.episodes, seed=seed))
    dataset = load_dataset(data)
    run = folder / "simulator"
    cfg = TrainConfig(data=(str(data),), out=run, model=profile.model, steps=profile.steps, seed=seed)
    cfg = replace(
        cfg, eval_every=max(cfg.steps // 4, 1), log_every=max(min(cfg.log_every, cfg.steps // 4), 1)
    )
    resume = (run / "checkpoints").exists()
    train(cfg, resume=resume, progress=progress)
    simulator = Simulator.load(run)
    behaviour = {
        label: float(np.mean([e.episode_return for e in dataset.episodes if e.policy == label]))
        for label in dataset.policies
    }
    low = behaviour.get("random", min(behaviour.values()))
    high = max(behaviour.values())

    def normalised(score: float) -> float:
        return 100.0 * (score - low) / (high - low) if high > low else float("nan")

    env = make_env(env_id)
    agents = {}
    for name in CONTROL_AGENTS:
        summary = evaluate(
            make_agent(name, simulator), env, profile.eval_episodes, seed=10_000 + seed
        ).summary()
        summary["normalised_score"] = normalised(summary["mean_return"])
        agents[name] = summary
    heldout = [
        line for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval/action_nll"' in line
    ]
    return {
        "testbed": env_id,
        "kind": "control",
        "seed": seed,
        "data": {
            "episodes": len(dataset.episodes),
            "steps": dataset.n_steps,
            "mean_return": float(dataset.returns.mean()),
            "behaviour_returns": behaviour,
        },
        "simulator": {"heldout": json.loads(heldout[-1]) if heldout else {}},
        "agents": agents,
        "dt_calibration": calibration(simulator, env, profile.calibration_episodes, seed),
    }


def run_decision_cell(folder: Path, name: str, profile: Profile, seed: int, progress: bool) -> dict[str, Any]:
    """One decision testbed at its default parameters: theory beside every agent's choice."""
    results = run_testbed(
        name,
        {},
        agents=DECISION_AGENTS,
        seed=seed,
        out=folder,
        budget=profile.testbed_budget,
        progress=progress,
    )
    env = get_testbed(name).make(**results["params"])
    results["kind"] = "decision"
    results["dt_calibration"] = calibration(
        Simulator.load(folder / "simulator"), env, profile.calibration_episodes, seed
    )
    env.close()
    return results


def run_prophecy_cell(folder: Path, profile: Profile, seed: int, progress: bool) -> dict[str, Any]:
    """Prophecy with the discount swept: the instrumentality index of each agent against gamma."""
    results = run_prophecy(
        PROPHECY_PARAMS,
        seed=seed,
        out=folder,
        budget=profile.prophecy_budget,
        sweep={"gamma": list(PROPHECY_GAMMAS)},
        progress=progress,
    )
    results["kind"] = "prophecy"
    return results


def run_connect_four_cell(folder: Path, profile: Profile, seed: int, progress: bool) -> dict[str, Any]:
    """Connect Four: the simulated population of players against the agents made from it."""
    results = run_connect_four(
        {}, out=folder, budget=profile.connect_four_budget, seed=seed, progress=progress
    )
    results["kind"] = "game"
    return results


@dataclass(frozen=True)
class Cell:
    """One testbed of the study: how to run it for a seed, and its rough relative cost (for the ETA)."""

    run: Callable[[Path, Profile, int, bool], dict[str, Any]]
    cost: float
    resumable: bool
    """Whether an interrupted cell continues from what it left (its training resumes) or starts over."""


def _control(env_id: str) -> Callable[[Path, Profile, int, bool], dict[str, Any]]:
    return lambda folder, profile, seed, progress: run_control_cell(folder, env_id, profile, seed, progress)


def _decision(name: str) -> Callable[[Path, Profile, int, bool], dict[str, Any]]:
    return lambda folder, profile, seed, progress: run_decision_cell(folder, name, profile, seed, progress)


# Relative costs, measured at the quick profile (one torch thread, two cells at a time, 2026-12-01):
# a decision testbed 40-80 s (1), prophecy 5 min, Connect Four 16 min (9,000 games, 6,000
# steps, 64-game PPO batches; 15.8 min in the quick study of 2026-12-02, on an Intel Xeon where
# CartPole and DoorKey took 8.5 min; its convolutional board encoder of 2026-12-04 added a
# quarter to a third to its training), CartPole and DoorKey 13-14 min (2,000 training steps).
CELLS: dict[str, Cell] = {
    **{
        name: Cell(_decision(name), cost=1.0, resumable=False)
        for name in ("newcomb", "twin_pd", "smoking_lesion", "delusion_boxes", "gamble")
    },
    "prophecy": Cell(run_prophecy_cell, cost=5.0, resumable=False),
    "connect_four": Cell(run_connect_four_cell, cost=20.0, resumable=False),
    "cartpole": Cell(_control("CartPole-v1"), cost=13.0, resumable=True),
    "doorkey": Cell(_control("simagents/DoorKey-5x5-v0"), cost=13.5, resumable=True),
}


def select_cells(only: Sequence[str] | None) -> list[str]:
    """The cells to run, in the study's order; unknown names are an error that lists the known ones."""
    if not only:
        return list(CELLS)
    unknown = [name for name in only if name not in CELLS]
    if unknown:
        raise SimagentsError(f"--only {','.join(unknown)}: unknown cell; choose from {', '.join(CELLS)}")
    return [name for name in CELLS if name in only]


# Two-sided 95% Student-t quantiles by degrees of freedom; beyond the table the normal 1.96.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci95(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% confidence interval (Student t) of per-seed values."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci95": [mean, mean], "n": len(x)}
    half = _T95.get(len(x) - 1, 1.96) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(x)}


def over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Every per-agent number (and choice rate) across seeds: mean and 95% CI."""
    agents: dict[str, dict[str, Any]] = {}
    for agent in per_seed[0]["agents"]:
        flat: dict[str, list[float]] = {}
        for result in per_seed:
            summary = result["agents"][agent]
            for key, value in summary.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    flat.setdefault(key, []).append(float(value))
            for choice, rate in summary.get("choice_rates", {}).items():
                flat.setdefault(f"choice_rate/{choice}", []).append(float(rate))
        agents[agent] = {
            key: mean_ci95(values) for key, values in flat.items() if len(values) == len(per_seed)
        }
    return {"seeds": [r["seed"] for r in per_seed], "agents": agents}


def _run_cell(name: str, folder: Path, budget: Profile, seed: int, progress: bool = False) -> dict[str, Any]:
    """One cell (in this process or a worker's: a module-level function, so it can be sent there)."""
    folder.mkdir(parents=True, exist_ok=True)
    return CELLS[name].run(folder, budget, seed, progress)


def _one_thread() -> None:
    set_threads(1)  # workers share the cores: one thread each


def _eta(done: float, total: float, elapsed: float) -> str:
    if done <= 0:
        return "estimating"
    seconds = elapsed / done * (total - done)
    return f"about {seconds / 60:.0f} min left" if seconds >= 90 else f"about {seconds:.0f} s left"


def run_study(
    profile: str = "quick",
    out: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
    seeds: int | None = None,
    only: Sequence[str] | None = None,
    workers: int = 1,
) -> Path:
    """Run every cell of the study and write results.json, report.md, report.html and figures/.

    ``workers`` > 1 runs that many cells at a time in worker processes (one torch thread each),
    with the same results as a serial run with one torch thread.

    Example (seconds: the smoke profile learns nothing)::

        from pathlib import Path
        from simagents.study.run import run_study

        folder = run_study(profile="smoke", out=Path("runs/smoke"), only=["newcomb"], progress=False)
        print((folder / "report.md").read_text())
    """
    if profile not in PROFILES:
        raise SimagentsError(f"--profile {profile!r} is not one of: {', '.join(PROFILES)}")
    budget = PROFILES[profile]
    n_seeds = budget.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise SimagentsError(f"--seeds {n_seeds}: need at least one seed")
    check_seed(seed, "study")
    if workers < 1:
        raise SimagentsError(f"--workers {workers}: must be at least 1")
    names = select_cells(only)
    seed_list = [seed + i for i in range(n_seeds)]
    folder = out or Path("runs") / f"{dt.date.today().isoformat()}-{profile}"
    with hold_lock(folder, "study"):
        return _run_study(folder, profile, budget, seed_list, names, progress, resume, workers)


def _run_study(
    folder: Path,
    profile: str,
    budget: Profile,
    seed_list: list[int],
    names: list[str],
    progress: bool,
    resume: bool,
    workers: int = 1,
) -> Path:
    config = {"profile": profile, "seeds": seed_list, "cells": names, "budget": to_dict(budget)}
    if any(p.name != LOCK_NAME for p in folder.iterdir()):
        if not resume:
            raise SimagentsError(
                f"{folder}: already exists; pass --resume to finish that study or choose another --out"
            )
        if read_json(folder / "config.json", "study config") != config:
            raise SimagentsError(
                f"{folder}/config.json: made with another profile, seed, --seeds or --only; "
                "resume with the same ones or choose another --out"
            )
    write_run_record(folder, config)

    console = Console(stderr=True)
    jobs = [(name, s) for name in names for s in seed_list]
    total = sum(CELLS[name].cost for name, _ in jobs)
    done, spent, start = 0.0, 0.0, time.perf_counter()
    cell_results: dict[tuple[str, int], dict[str, Any]] = {}
    todo: list[tuple[int, str, int, Path]] = []
    for index, (name, cell_seed) in enumerate(jobs, 1):
        cell_folder = folder / "cells" / name / f"seed{cell_seed}"
        if (cell_folder / "cell.json").is_file():
            cell_results[name, cell_seed] = read_json(cell_folder / "cell.json", "cell results")
            total -= CELLS[name].cost  # reused: not part of this run's ETA
            continue
        if cell_folder.exists() and not CELLS[name].resumable:
            shutil.rmtree(cell_folder)  # interrupted before it finished: start it again
        todo.append((index, name, cell_seed, cell_folder))
    parallel = workers > 1 and len(todo) > 1
    if parallel:
        # Cells in worker processes, one torch thread each; each cell is seeded by its own seed
        # alone, so results equal a serial one-thread run's. A finished cell is saved at once (resume keeps it).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            min(workers, len(todo)), mp_context=context, initializer=_one_thread
        ) as pool:
            # Longest cells first, so that no long cell starts last while the other workers idle
            # (measured, quick profile, 2 workers: 12.7 min, 13.1 in the listed order).
            by_cost = sorted(todo, key=lambda job: -CELLS[job[1]].cost)
            futures = {
                pool.submit(_run_cell, name, cell_folder, budget, cell_seed): (name, cell_seed, cell_folder)
                for _, name, cell_seed, cell_folder in by_cost
            }
            try:
                for future in as_completed(futures):
                    name, cell_seed, cell_folder = futures[future]
                    cell_results[name, cell_seed] = future.result()
                    atomic_write_json(cell_folder / "cell.json", cell_results[name, cell_seed])
                    done += CELLS[name].cost
                    if progress:
                        elapsed = time.perf_counter() - start
                        console.rule(f"{name}, seed {cell_seed} done · study {_eta(done, total, elapsed)}")
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    for index, name, cell_seed, cell_folder in [] if parallel else todo:
        if progress:
            console.rule(f"[{index}/{len(jobs)}] {name}, seed {cell_seed} · study {_eta(done, total, spent)}")
        tick = time.perf_counter()
        cell_results[name, cell_seed] = _run_cell(name, cell_folder, budget, cell_seed, progress)
        atomic_write_json(cell_folder / "cell.json", cell_results[name, cell_seed])
        spent += time.perf_counter() - tick
        done += CELLS[name].cost
    if progress:
        console.rule(f"study done in {(time.perf_counter() - start) / 60:.1f} min")
    per_cell = {name: [cell_results[name, s] for s in seed_list] for name in names}

    results: dict[str, Any] = {"version": 1, "profile": profile, "seeds": seed_list, "testbeds": {}}
    for name, per_seed in per_cell.items():
        results["testbeds"][name] = dict(per_seed[0])
        if len(per_seed) > 1:
            results["testbeds"][name]["over_seeds"] = over_seeds(per_seed)
    atomic_write_json(folder / "results.json", results)
    write_report(folder, results)
    return folder
