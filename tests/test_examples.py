"""The worked examples in examples/: each runs as a script, and its printed answers follow theory.

Each script runs in a subprocess, as a user would run it; its JSON output is checked against
what the decision rule or the testbed's theory says, at settings where the answer differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import tiny_model
from simagents.plugins import load_plugin

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def simagents_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "simagents.cli", *args, env=env)


# --------------------------------------------------------------------------- custom agent


@pytest.fixture(scope="module")
def gamble_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """examples/custom_agent.py run once; its run folder and its printed rows."""
    out = tmp_path_factory.mktemp("custom_agent") / "gamble"
    result = run(str(EXAMPLES / "custom_agent.py"), "--out", str(out), "--quantiles", "0.1", "0.9")
    return out, json_lines(result.stdout)


def test_custom_agent_takes_the_bet_its_quantile_prefers(gamble_run: tuple[Path, list[dict[str, Any]]]):
    _, rows = gamble_run
    by_quantile = {row["quantile"]: row for row in rows if row["agent"] == "risk_averse"}
    # The risky bet (+30 or -15) has the best mean and the best 0.9-quantile, the sure +1 the best 0.1-quantile.
    assert by_quantile[0.1]["theory_choice"] == "sure" and by_quantile[0.9]["theory_choice"] == "risky"
    for row in rows:
        assert row["choice"] == row["theory_choice"], row
    assert by_quantile[0.1]["mean_return"] == pytest.approx(1.0)


def test_custom_agent_from_the_command_line(gamble_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path):
    out, _ = gamble_run
    returns = {}
    for quantile, how in ((0.1, "flag"), (0.9, "environment")):
        plugin = str(EXAMPLES / "custom_agent.py")
        args = ["eval", str(out / "simulator"), "--agent", "risk_averse", "--env", "simagents/Gamble-v0"]
        args += [
            "--episodes",
            "6",
            "--option",
            f"quantile={quantile}",
            "--out",
            str(tmp_path / f"{quantile}.json"),
        ]
        if how == "flag":
            simagents_cli("--plugin", plugin, *args)
        else:
            simagents_cli(*args, env={"SIMAGENTS_PLUGINS": plugin})
        returns[quantile] = json.loads((tmp_path / f"{quantile}.json").read_text())["returns"]
    # The env has default payoffs: the sure bet pays 1, the risky one +5 or -15.
    assert set(returns[0.1]) == {1.0}
    assert set(returns[0.9]) <= {5.0, -15.0}


def test_return_quantile_reads_the_distribution():
    module = load_plugin(str(EXAMPLES / "custom_agent.py"))
    model = tiny_model()
    bins = model.return_bins
    logits = torch.full((2, bins.numel()), -1e9)
    logits[0, [0, -1]] = 0.0  # half the mass on the lowest return, half on the highest
    logits[1, bins.numel() // 2] = 0.0  # all of it in the middle
    low = module.return_quantile(model, logits, 0.25)
    high = module.return_quantile(model, logits, 0.75)
    assert low.tolist() == pytest.approx([float(bins[0]), float(bins[bins.numel() // 2])])
    assert high.tolist() == pytest.approx([float(bins[-1]), float(bins[bins.numel() // 2])])


# --------------------------------------------------------------------------- custom testbed


def test_custom_testbed_theory_matches_its_data_and_env():
    """Each belief column of the theory equals the mean reward in the data (or env) it stands for."""
    module = load_plugin(str(EXAMPLES / "custom_testbed.py"))
    for params in module.SETTINGS.values():
        theory = module.theory(**params)["expected_return"]
        rng = np.random.default_rng(0)
        for belief, intervene in (("evidential", False), ("interventional", True)):
            episodes = module.demonstrations(params, 40_000, rng, intervene=intervene)
            for index, choice in enumerate(module.ACTION_NAMES):
                rewards = [e.rewards[0] for e in episodes if e.actions[0] == index]
                assert np.mean(rewards) == pytest.approx(theory[choice][belief], abs=1.5), (belief, choice)
        env = module.TESTBED.make(**params)
        for index, choice in enumerate(module.ACTION_NAMES):
            rewards = []
            for seed in range(4000):
                env.reset(seed=seed)
                rewards.append(env.step(index)[1])
            assert np.mean(rewards) == pytest.approx(theory[choice]["deployment"], abs=1.5), choice


@pytest.mark.slow
def test_custom_testbed_choices_follow_theory_where_cdt_flips():
    result = run(str(EXAMPLES / "custom_testbed.py"))
    rows = json_lines(result.stdout)
    choices = {(row["setting"], row["agent"]): row for row in rows}
    assert len(choices) == 4
    for row in rows:
        assert row["choice"] == row["theory_choice"], row
    # The theory itself differs between the settings: CDT flees only where Death is expected in Damascus.
    assert choices[("most stay", "cdt")]["theory_choice"] == "flee"
    assert choices[("most flee", "cdt")]["theory_choice"] == "stay"


def test_custom_testbed_from_the_command_line(tmp_path: Path):
    out = tmp_path / "dd"
    plugin = str(EXAMPLES / "custom_testbed.py")
    simagents_cli(
        "--plugin", plugin, "testbed", "death_in_damascus", "--param", "stayers=0.1", "fleers=0.7",
        "--agents", "edt,cdt", "--budget", "smoke", "--out", str(out),
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["testbed"] == "death_in_damascus"
    assert results["params"]["stayers"] == 0.1 and results["params"]["fleers"] == 0.7
    assert results["theory"]["cdt"]["choice"] == "stay"
    assert set(results["agents"]) == {"edt", "cdt"}


# --------------------------------------------------------------------------- own dataset


def test_own_dataset_is_read_back_whole():
    result = run(
        str(EXAMPLES / "own_dataset.py"), "--episodes-per-player", "2", "--steps", "2", "--eval-episodes", "1"
    )
    report = json.loads(result.stdout)
    assert report["episodes"] == 6
    # Every step the players took is in the dataset simagents read: steady (500 each) plus the rest.
    players = report["player_returns"]
    assert report["steps"] == pytest.approx(2 * sum(players.values()))
    assert set(report["agent_returns"]) == {"dt", "edt"}


@pytest.mark.slow
def test_own_dataset_trains_and_evaluates_dt_and_edt():
    result = run(str(EXAMPLES / "own_dataset.py"))
    report = json.loads(result.stdout)
    assert report["episodes"] == 90
    players = report["player_returns"]
    assert players["steady"] > players["shaky"] > players["random"]
    agents = report["agent_returns"]
    assert set(agents) == {"dt", "edt"}
    # Prompted with the best return in the data, the Decision Transformer plays far above the random player.
    assert agents["dt"] > 3 * players["random"]
