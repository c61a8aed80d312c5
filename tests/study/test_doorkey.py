import json
from pathlib import Path

from simagents.envs.minigrid import ENV_ID
from simagents.study.run import CELLS, run_study


def test_doorkey_is_a_control_cell_of_the_study() -> None:
    assert "doorkey" in CELLS and CELLS["doorkey"].resumable


def test_smoke_study_runs_the_doorkey_cell(tmp_path: Path) -> None:
    folder = run_study(profile="smoke", out=tmp_path / "study", progress=False, only=["doorkey"])
    results = json.loads((folder / "results.json").read_text())
    doorkey = results["testbeds"]["doorkey"]
    assert doorkey["kind"] == "control" and doorkey["testbed"] == ENV_ID
    behaviour = doorkey["data"]["behaviour_returns"]
    # The smoke budget collects 12 episodes from the mixed population; random is in it, and
    # the expert policies score above random, which the normalised score is measured from.
    assert "random" in behaviour and max(behaviour.values()) > behaviour["random"]
    assert set(doorkey["agents"]) == {"imitation", "dt", "edt"}
    for summary in doorkey["agents"].values():
        low, high = behaviour["random"], max(behaviour.values())
        expected = 100 * (summary["mean_return"] - low) / (high - low)
        assert abs(summary["normalised_score"] - expected) < 1e-6
    assert ENV_ID in (folder / "report.md").read_text()
