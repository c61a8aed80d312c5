"""The study: the main job. Data -> simulator -> every agent -> metrics -> a report a person reads.

For now it runs the CartPole control cell (mixed-skill data, one simulator, the
imitation / Decision Transformer / evidential planner routes); the decision
testbeds join as cells as they land. Each cell writes its own results.json, so
``resume`` skips finished cells.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simagents.agents import evaluate, make_agent
from simagents.data.collect import CollectConfig, collect, make_env
from simagents.data.minari_io import load_dataset
from simagents.errors import SimagentsError
from simagents.io import atomic_write_json, atomic_write_text, read_json, to_dict
from simagents.model import Simulator, SimulatorConfig
from simagents.study.report import write_report
from simagents.train import TrainConfig, train


@dataclass(frozen=True)
class Profile:
    """Budget of one study run."""

    episodes: int
    """Behaviour episodes collected per dataset."""
    steps: int
    """Training steps per simulator."""
    eval_episodes: int
    """Evaluation episodes per agent."""
    model: SimulatorConfig
    """Simulator architecture."""


PROFILES = {
    "quick": Profile(episodes=300, steps=1000, eval_episodes=20, model=SimulatorConfig()),
    "smoke": Profile(
        episodes=12,
        steps=10,
        eval_episodes=2,
        model=SimulatorConfig(context_len=4, n_embd=16, n_layer=1, n_head=1),
    ),
}

CONTROL_AGENTS = ("imitation", "dt", "edt")


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
    }


def cartpole_cell(folder: Path, profile: Profile, seed: int, progress: bool) -> dict[str, Any]:
    return run_control_cell(folder, "CartPole-v1", profile, seed, progress)


CELLS = {"cartpole": cartpole_cell}


def run_study(
    profile: str = "quick",
    out: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Run every cell of the study and write results.json, report.md, report.html and figures/."""
    if profile not in PROFILES:
        raise SimagentsError(f"--profile {profile!r} is not one of: {', '.join(PROFILES)}")
    folder = out or Path("runs") / f"{dt.date.today().isoformat()}-{profile}"
    budget = PROFILES[profile]
    config = {"profile": profile, "seed": seed, "budget": to_dict(budget)}
    if folder.exists() and any(folder.iterdir()):
        if not resume:
            raise SimagentsError(
                f"{folder}: already exists; pass --resume to finish that study or choose another --out"
            )
        if read_json(folder / "config.json", "study config") != config:
            raise SimagentsError(
                f"{folder}/config.json: made with another profile or seed; resume with the same ones"
            )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", config)
    atomic_write_text(folder / "command.txt", shlex.join(sys.argv) + "\n")
    results: dict[str, Any] = {"version": 1, "profile": profile, "seeds": [seed], "testbeds": {}}
    for name, cell in CELLS.items():
        cell_folder = folder / "cells" / name
        done = cell_folder / "results.json"
        if done.is_file():
            results["testbeds"][name] = read_json(done, "cell results")
            continue
        cell_folder.mkdir(parents=True, exist_ok=True)
        cell_result = cell(cell_folder, budget, seed, progress)
        atomic_write_json(done, cell_result)
        results["testbeds"][name] = cell_result
    atomic_write_json(folder / "results.json", results)
    write_report(folder, results)
    return folder
