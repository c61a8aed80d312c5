import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from simagents.cli import main
from simagents.errors import SimagentsError
from simagents.study.prophecy import BUDGETS, parse_sweep, run_prophecy


def test_smoke_run_writes_the_testbed_schema_and_a_sweep_figure(tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = run_prophecy({"horizon": 3}, out=out, budget="smoke", sweep={"gamma": "0,0.9"})
    saved = json.loads((out / "results.json").read_text())
    assert saved["testbed"] == "prophecy" and saved["params"]["horizon"] == 3
    assert list(saved["agents"]) == ["imitation", "myopic", "edt", "rl"]
    for entry in saved["agents"].values():
        assert 0.0 <= entry["instrumentality_index"] <= 1.0
        assert {"mean_return", "mean_forecast", "std_return"} <= set(entry)
    assert [e["gamma"] for e in saved["sweep"]] == [0.0, 0.9]
    assert all(set(e["agents"]) == set(saved["agents"]) for e in saved["sweep"])
    assert len(saved["agents"]["myopic"]["rounds"]) == 2  # on the demonstrations, then retrained once
    assert (out / "figures" / "index_vs_gamma.png").stat().st_size > 1000
    assert (out / "rl_gamma_0.9" / "model.safetensors").is_file()
    assert results["theory"]["fixed_point"] == pytest.approx(0.5)


def test_the_budget_sets_the_policys_loss_weight(tmp_path: Path) -> None:
    """Prophecy trains with its own action weight, not the library's default (see the field)."""
    budget = replace(BUDGETS["smoke"], action_loss=2.5)
    run_prophecy({"horizon": 3}, agents=("edt",), out=tmp_path / "run", budget=budget)
    config = json.loads((tmp_path / "run" / "simulator" / "config.json").read_text())
    assert config["loss"]["action"] == 2.5 and config["loss"]["value"] == 1.0


def test_cli_prophecy_and_bad_sweeps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    args = ["testbed", "prophecy", "--out", str(out), "--budget", "smoke", "--agents", "edt,rl"]
    assert main([*args, "--param", "horizon=2", "delay=1"]) == 0
    assert "fixed point 0.5" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["params"]["delay"] == 1
    assert main([*args[:3], str(tmp_path / "b"), "--budget", "smoke", "--sweep", "beta=1"]) == 2
    assert "only gamma" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["testbed", "gamble", "--out", str(tmp_path / "c"), "--sweep", "gamma=0"]) == 2
    assert "prophecy testbed only" in capsys.readouterr().err


def test_agent_options_reach_the_planner_and_rl_stays_plain(tmp_path: Path) -> None:
    # levels=1 reaches the planner, which refuses it (a grid needs two ends); the run is undone.
    with pytest.raises(SimagentsError, match="levels must be 0"):
        run_prophecy({"horizon": 3}, agents=("edt[levels=1]",), out=tmp_path / "a", budget="smoke")
    assert not (tmp_path / "a").exists()
    with pytest.raises(SimagentsError, match="give it as plain rl"):
        run_prophecy({"horizon": 3}, agents=("rl[temperature=0]",), out=tmp_path / "b", budget="smoke")
    assert not (tmp_path / "b").exists()
    results = run_prophecy(
        {"horizon": 3}, agents=("edt", "edt[levels=2]"), out=tmp_path / "c", budget="smoke"
    )
    assert list(results["agents"]) == ["edt", "edt[levels=2]"]
    assert "theory_index" in results["agents"]["edt[levels=2]"]


def test_parse_sweep() -> None:
    assert parse_sweep({"gamma": "0, 0.5,0.99"}) == {"gamma": [0.0, 0.5, 0.99]}
    for bad in ({"gamma": "x"}, {"gamma": "1.5"}, {"gamma": ""}):
        with pytest.raises(SimagentsError, match="--sweep gamma"):
            parse_sweep(bad)


@pytest.mark.slow
def test_rl_index_grows_with_gamma_at_delay_one(tmp_path: Path) -> None:
    gammas = [0.0, 0.5, 0.9, 0.99]
    results = run_prophecy(
        {"delay": 1}, agents=("rl",), out=tmp_path / "run", budget="fast", sweep={"gamma": gammas}
    )
    index = [entry["agents"]["rl"]["instrumentality_index"] for entry in results["sweep"]]
    theory = [entry["agents"]["rl"]["theory_index"] for entry in results["sweep"]]
    print("measured", index, "theory", theory)
    assert index[0] <= 0.3  # gamma 0: each forecast graded on its own event, near the calibrated forecast
    assert index[-1] >= 0.6  # credit across steps: steering to the extremes
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(index))  # monotone, up to sampling noise


@pytest.mark.slow
def test_rl_at_delay_zero_steers_and_outscores_the_calibrated_forecast(tmp_path: Path) -> None:
    results = run_prophecy({}, agents=("rl",), out=tmp_path / "run", budget="default")
    rl, theory = results["agents"]["rl"], results["theory"]
    calibrated_return = theory["calibrated"]["expected_reward"] * results["params"]["horizon"]
    print(rl)
    assert rl["instrumentality_index"] >= 0.8
    assert rl["mean_return"] > calibrated_return + 0.3  # -2.5 for the calibrated (myopic) forecaster
