import json
from pathlib import Path

import pytest

from simagents.errors import SimagentsError
from simagents.study.run import run_study


def test_smoke_study_writes_a_self_describing_folder(tmp_path: Path):
    folder = run_study(profile="smoke", out=tmp_path / "study", progress=False)
    results = json.loads((folder / "results.json").read_text())
    assert results["version"] == 1 and results["profile"] == "smoke" and results["seeds"] == [0]
    cartpole = results["testbeds"]["cartpole"]
    assert set(cartpole["agents"]) == {"imitation", "dt", "edt"}
    for summary in cartpole["agents"].values():
        assert summary["episodes"] == 2 and summary["mean_return"] > 0
    report = (folder / "report.md").read_text()
    assert "CartPole-v1" in report and "figures/cartpole_returns.png" in report
    html = (folder / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    for name in ("config.json", "command.txt", "figures/cartpole_returns.png"):
        assert (folder / name).is_file()


def test_resume_reuses_finished_cells_and_refuses_without_flag(tmp_path: Path):
    folder = run_study(profile="smoke", out=tmp_path / "study", progress=False)
    first = (folder / "results.json").read_text()
    with pytest.raises(SimagentsError, match="--resume"):
        run_study(profile="smoke", out=folder, progress=False)
    (folder / "results.json").unlink()
    (folder / "cells" / "cartpole" / "results.json").unlink()  # as if killed during evaluation
    run_study(profile="smoke", out=folder, progress=False, resume=True)
    assert (folder / "results.json").read_text() == first
    with pytest.raises(SimagentsError, match="another profile or seed"):
        run_study(profile="smoke", out=folder, seed=1, progress=False, resume=True)
