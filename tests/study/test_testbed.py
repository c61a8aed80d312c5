"""The testbed runner: EDT and CDT built from one simulator follow each testbed's theory.

Fast tests run the one-step testbeds at two settings on either side of the theory's
threshold with a reduced budget (edt and cdt only) and compare each agent's choice with
the theory's choice at that setting. Slow tests (--runslow) check issue 5's targets at
the default parameters with the default budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from simagents.cli import main
from simagents.data.minari_io import load_dataset
from simagents.envs import get_testbed
from simagents.errors import SimagentsError
from simagents.study.testbed import run_testbed

# Two settings per testbed, on either side of EDT's threshold. Newcomb uses small=200,000:
# at the default small=1,000 CDT's margin, E[R | do(two_box)] - E[R | do(one_box)] = small,
# is 0.1% of the return range, far below what any feasible amount of interventional data
# resolves (its sampling noise is about big/sqrt(episodes)).
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "newcomb": ({"small": 200_000, "accuracy": 0.9}, {"small": 200_000, "accuracy": 0.4}),
    "twin_pd": ({"fidelity": 0.95}, {"fidelity": 0.3}),
    "smoking_lesion": ({}, {"smoke_utility": 100.0}),
}
CASES = [(name, params) for name, pair in SETTINGS.items() for params in pair]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_straddle_the_theory_threshold(name: str):
    theory = get_testbed(name).theory
    first, second = (theory(**params) for params in SETTINGS[name])
    assert first["edt"]["choice"] != second["edt"]["choice"]
    assert first["cdt"]["choice"] == second["cdt"]["choice"]  # CDT ignores the evidential link


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_edt_and_cdt_choose_as_theory_says(name: str, params: dict[str, Any], tmp_path: Path):
    results = run_testbed(name, params, agents=("edt", "cdt"), out=tmp_path / "run", budget="fast")
    theory = results["theory"]
    for agent in ("edt", "cdt"):
        summary = results["agents"][agent]
        assert summary["theory_choice"] == theory[agent]["choice"]
        assert summary["choice"] == theory[agent]["choice"], (agent, summary, theory)
        assert summary["choice_rates"][theory[agent]["choice"]] >= 0.9


def test_cli_writes_data_simulator_and_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    threads = torch.get_num_threads()
    out = tmp_path / "run"
    argv = ["testbed", "delusion_boxes", "--param", "max_steps=3", "--budget", "smoke", "--out", str(out)]
    assert main(argv) == 0
    assert "results.json" in capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the runner restores torch's threads
    results = json.loads((out / "results.json").read_text())
    assert results["testbed"] == "delusion_boxes" and results["seed"] == 0
    assert results["params"] == {"max_steps": 3, "prize": 1.0, "p_left": 0.5}
    assert results["theory"]["self_delusion_gap"] == {"left": 0.5, "right": 0.5}
    assert list(results["agents"]) == ["imitation", "dt", "edt", "cdt"]
    for summary in results["agents"].values():
        assert set(summary["choice_rates"]) == {"left", "right"}
        assert sum(summary["choice_rates"].values()) == pytest.approx(1.0)
        assert summary["episodes"] == 3 and 1 <= summary["mean_steps"] <= 3
        assert "delusion_gap" in summary
    assert results["agents"]["edt"]["theory_choice"] == results["theory"]["edt"]["choice"]
    assert results["agents"]["imitation"]["theory_choice"] is None
    assert "prompted_return" in results["agents"]["dt"]
    observational = load_dataset(out / "data" / "observational")
    interventional = load_dataset(out / "data" / "interventional")
    assert not any(e.interventions.any() for e in observational.episodes)
    assert all(e.interventions.all() for e in interventional.episodes)
    assert observational.env_kwargs["max_steps"] == 3
    assert (out / "simulator" / "checkpoints").is_dir() and (out / "config.json").is_file()


def test_agents_take_options_in_brackets(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    agents = "dt[target=123],dt[target=456,temperature=0],edt[horizon=1]"
    argv = ["testbed", "newcomb", "--param", "big=1e6", "--agents", agents, "--budget", "smoke"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "big=1,000,000" in printed and "1e+06" not in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["agents"]) == ["dt[target=123]", "dt[target=456,temperature=0]", "edt[horizon=1]"]
    assert results["agents"]["dt[target=123]"]["prompted_return"] == 123
    assert results["agents"]["dt[target=456,temperature=0]"]["prompted_return"] == 456
    # An agent with options answers to its planner's theory.
    assert results["agents"]["edt[horizon=1]"]["theory_choice"] == results["theory"]["edt"]["choice"]


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ("edt[hrizon=3]", "agent 'edt' has no option(s) hrizon; its options are: "),
        ("edt[horizon]", "options go as edt[KEY=VALUE,...]"),
        ("edt[horizon=3", "options go as NAME[KEY=VALUE,...]"),
        ("edt,edt", "each agent once"),
    ],
)
def test_bad_agent_options_fail_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agents: str, message: str
):
    out = tmp_path / "run"
    assert main(["testbed", "newcomb", "--agents", agents, "--budget", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_bad_param_lists_valid_names_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    assert main(["testbed", "newcomb", "--param", "acuracy=0.3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "acuracy" in err and "accuracy" in err and "small" in err and len(err.strip().splitlines()) == 1
    assert main(["testbed", "newcomb", "--param", "accuracy", "--out", str(out)]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["testbed", "newcomb", "--agents", "edt,oracle", "--out", str(out)]) == 2
    assert "oracle" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SimagentsError, match="unknown testbed"):
        run_testbed("newcombe", out=out)


def test_refuses_a_non_empty_out_folder(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(SimagentsError, match="not empty"):
        run_testbed("gamble", out=tmp_path / "run", budget="smoke")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- issue 5's targets


def default_run(name: str, tmp_path: Path) -> dict[str, Any]:
    return run_testbed(name, {}, out=tmp_path / name)


def rate(results: dict[str, Any], agent: str, choice: str) -> float:
    return results["agents"][agent]["choice_rates"][choice]


@pytest.mark.slow
def test_newcomb_edt_one_boxes_cdt_two_boxes(tmp_path: Path):
    # At small=1,000 beside big=1,000,000 CDT's margin is 0.1% of the return range.
    results = default_run("newcomb", tmp_path)
    assert results["theory"]["edt"]["choice"] == "one_box" and results["theory"]["cdt"]["choice"] == "two_box"
    assert rate(results, "edt", "one_box") >= 0.9 and rate(results, "cdt", "two_box") >= 0.9
    assert results["agents"]["edt"]["mean_return"] > results["agents"]["cdt"]["mean_return"]


@pytest.mark.slow
def test_twin_pd_edt_cooperates_cdt_defects(tmp_path: Path):
    results = default_run("twin_pd", tmp_path)
    assert rate(results, "edt", "cooperate") >= 0.9 and rate(results, "cdt", "defect") >= 0.9


@pytest.mark.slow
def test_smoking_lesion_edt_abstains_cdt_smokes_and_earns_more(tmp_path: Path):
    results = default_run("smoking_lesion", tmp_path)
    assert rate(results, "edt", "abstain") >= 0.9 and rate(results, "cdt", "smoke") >= 0.9
    assert results["agents"]["cdt"]["mean_return"] > results["agents"]["edt"]["mean_return"]


@pytest.mark.slow
def test_delusion_boxes_evidential_gap_and_switching(tmp_path: Path):
    results = default_run("delusion_boxes", tmp_path)
    edt, cdt = results["agents"]["edt"], results["agents"]["cdt"]
    assert edt["delusion_gap"] >= 0.3
    assert abs(cdt["delusion_gap"]) <= 0.1
    assert cdt["mean_steps"] < edt["mean_steps"]


@pytest.mark.slow
def test_gamble_dt_bets_on_luck_edt_takes_the_sure_thing(tmp_path: Path):
    results = default_run("gamble", tmp_path)
    dt, edt = results["agents"]["dt"], results["agents"]["edt"]
    assert dt["prompted_return"] == pytest.approx(results["theory"]["dt"]["prompt"], abs=0.5)
    assert dt["choice"] == "risky" and edt["choice"] == "sure"
    assert dt["mean_return"] < edt["mean_return"]
