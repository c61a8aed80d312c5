import json
from pathlib import Path

import pytest

from simagents.errors import SimagentsError
from simagents.study.report import fmt, headline_cell
from simagents.study.run import mean_ci95, run_study


def test_smoke_study_writes_a_self_describing_folder(tmp_path: Path):
    folder = run_study(profile="smoke", out=tmp_path / "study", progress=False, only=["newcomb", "cartpole"])
    results = json.loads((folder / "results.json").read_text())
    assert results["version"] == 1 and results["profile"] == "smoke" and results["seeds"] == [0]
    assert list(results["testbeds"]) == ["newcomb", "cartpole"]
    cartpole = results["testbeds"]["cartpole"]
    assert set(cartpole["agents"]) == {"imitation", "dt", "edt"}
    for summary in cartpole["agents"].values():
        assert summary["episodes"] == 2 and summary["mean_return"] > 0
    newcomb = results["testbeds"]["newcomb"]
    assert newcomb["kind"] == "decision" and set(newcomb["agents"]) == {"imitation", "dt", "edt", "cdt"}
    assert newcomb["theory"]["cdt"]["choice"] == "two_box"
    assert [p["target"] for p in newcomb["dt_calibration"]] == ["q10", "q50", "q90", "max"]
    report = (folder / "report.md").read_text()
    assert "## Headline" in report and "| theory: EDT | one_box |" in report
    assert "CartPole-v1" in report and "figures/cartpole_returns.png" in report
    html = (folder / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    for name in ("config.json", "command.txt", "figures/newcomb_choices.png", "figures/dt_calibration.png"):
        assert (folder / name).is_file()


def test_resume_reuses_finished_cells_and_refuses_without_flag(tmp_path: Path):
    folder = run_study(profile="smoke", out=tmp_path / "study", progress=False, only=["gamble", "cartpole"])
    first = (folder / "results.json").read_text()
    with pytest.raises(SimagentsError, match="--resume"):
        run_study(profile="smoke", out=folder, progress=False, only=["gamble", "cartpole"])
    (folder / "results.json").unlink()
    (folder / "cells" / "cartpole" / "seed0" / "cell.json").unlink()  # as if killed during evaluation
    run_study(profile="smoke", out=folder, progress=False, resume=True, only=["gamble", "cartpole"])
    assert (folder / "results.json").read_text() == first
    with pytest.raises(SimagentsError, match="another profile"):
        run_study(
            profile="smoke", out=folder, seed=1, progress=False, resume=True, only=["gamble", "cartpole"]
        )


def test_several_seeds_give_means_and_confidence_intervals(tmp_path: Path):
    folder = run_study(profile="smoke", out=tmp_path / "study", progress=False, seeds=2, only=["twin_pd"])
    results = json.loads((folder / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    spread = results["testbeds"]["twin_pd"]["over_seeds"]
    assert spread["seeds"] == [0, 1]
    per_seed = [
        json.loads((folder / "cells" / "twin_pd" / f"seed{s}" / "cell.json").read_text()) for s in (0, 1)
    ]
    returns = [r["agents"]["edt"]["mean_return"] for r in per_seed]
    stat = spread["agents"]["edt"]["mean_return"]
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(sum(returns) / 2)
    assert stat["ci95"][0] <= min(returns) + 1e-9 and stat["ci95"][1] >= max(returns) - 1e-9
    assert "Mean and 95% CI over seeds [0, 1]" in (folder / "report.md").read_text()


def test_report_numbers_read_as_numbers():
    assert [fmt(x) for x in (0.1234, 241.9, 1000.0, 31664.2, -957098.0)] == [
        "0.123",
        "242",
        "1,000",
        "31,664",
        "-957,098",
    ]
    assert fmt(500.0, [480.25, 1999.5]) == "500 [480, 2,000]"


def test_mean_ci95_uses_student_t():
    stat = mean_ci95([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / 3**0.5
    assert stat["mean"] == 2.0 and stat["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert mean_ci95([5.0])["ci95"] == [5.0, 5.0]


def test_unknown_cell_is_named_with_the_known_ones(tmp_path: Path):
    with pytest.raises(SimagentsError, match=r"--only nope: unknown cell; choose from .*newcomb"):
        run_study(profile="smoke", out=tmp_path / "s", only=["nope"], progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("choice", "mark"), [("one_box", "✓"), ("two_box", "✗ (theory one_box)")])
def test_headline_marks_agreement_with_theory(choice: str, mark: str):
    result = {
        "kind": "decision",
        "theory": {"edt": {"choice": "one_box", "expected_return": 9.0, "deployment_return": 9.0}},
        "agents": {
            "edt": {
                "choice": choice,
                "choice_rates": {"one_box": 0.9 if choice == "one_box" else 0.1, "two_box": 0.1},
                "theory_choice": "one_box",
            }
        },
    }
    result["agents"]["edt"]["choice_rates"][choice] = 0.9
    assert headline_cell(result, "edt") == f"{choice} 0.90 {mark}"


def test_cells_in_two_worker_processes_give_the_serial_results(tmp_path: Path, one_torch_thread: None):
    cells = ["gamble", "cartpole"]
    serial = run_study(profile="smoke", out=tmp_path / "serial", progress=False, only=cells)
    parallel = run_study(profile="smoke", out=tmp_path / "parallel", progress=False, only=cells, workers=2)

    def comparable(folder: Path) -> dict:
        # Wall-clock timings differ between any two runs, and data paths name their study folder.
        text = (folder / "results.json").read_text().replace(str(folder), "STUDY")
        return json.loads(text, object_hook=lambda d: {k: v for k, v in d.items() if k != "timings"})

    assert comparable(parallel) == comparable(serial)
    for cell in cells:  # each cell saved as it finished, for resume
        assert (parallel / "cells" / cell / "seed0" / "cell.json").is_file()
