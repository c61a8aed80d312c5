"""kill -9 in the middle of training: the last checkpoint loads and --resume ends bit-identical."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import BOX_OBS, DISCRETE_ACT, random_episode
from simagents.cli import main
from simagents.data.minari_io import save_dataset
from simagents.model import Simulator

STEPS = 200


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, 15, BOX_OBS, DISCRETE_ACT) for _ in range(8)]
    out = tmp_path_factory.mktemp("data") / "ds"
    return save_dataset(episodes, out, observation_space=BOX_OBS, action_space=DISCRETE_ACT)


def options(data: Path, out: Path) -> list[str]:
    return [
        *("--data", str(data), "--out", str(out), "--steps", str(STEPS), "--batch-size", "8"),
        *("--eval-every", "5", "--log-every", "1", "--keep-checkpoints", "2", "--threads", "1"),
        *(
            "--model.context-len",
            "4",
            "--model.n-embd",
            "16",
            "--model.n-layer",
            "1",
            "--model.dropout",
            "0.1",
        ),
    ]


def checkpointed_step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def train_until_killed(data: Path, run: Path, after_step: int, resume: bool) -> int:
    """Start `simagents train` and SIGKILL it once a checkpoint past ``after_step`` exists."""
    command = [sys.executable, "-m", "simagents.cli", "train", *options(data, run)]
    process = subprocess.Popen([*command, *(["--resume"] if resume else [])], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while checkpointed_step(run) <= after_step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert process.returncode == -9, process.stderr.read() if process.stderr else ""
    step = checkpointed_step(run)
    assert after_step < step < STEPS, "the run must be killed after a new checkpoint and before it ends"
    return step


def weights_hash(run: Path) -> str:
    return hashlib.sha256(
        (run / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors").read_bytes()
    ).hexdigest()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights_and_metrics(data: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    try:
        assert main(["train", *options(data, reference)]) == 0  # uninterrupted, in this process
    finally:
        torch.set_num_threads(threads)

    run = tmp_path / "killed"
    first = train_until_killed(data, run, after_step=0, resume=False)
    assert Simulator.load(run) is not None  # the last good checkpoint loads after the kill
    second = train_until_killed(data, run, after_step=first + 20, resume=True)
    assert Simulator.load(run) is not None
    finish = subprocess.run(
        [sys.executable, "-m", "simagents.cli", "train", *options(data, run), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finish.returncode == 0, finish.stderr
    assert 0 < first < second < STEPS
    assert weights_hash(run) == weights_hash(reference)
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


STUDY = ["study", "--profile", "smoke", "--only", "gamble,twin_pd,cartpole"]


@pytest.mark.slow
def test_kill_9_during_a_study_then_resume_gives_the_uninterrupted_results(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, "-m", "simagents.cli", *STUDY, "--out", str(reference)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "simagents.cli", *STUDY, "--out", str(killed)], stderr=subprocess.DEVNULL
    )
    # Killed as soon as the last cell has begun (cells run in the study's order: twin_pd, gamble,
    # cartpole), so two cells are finished and one is half written when the kill lands. A fixed
    # sleep instead let a quiet machine finish the whole smoke study first.
    last_cell = killed / "cells" / "cartpole" / "seed0"
    deadline = time.monotonic() + 300
    while not last_cell.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert process.returncode == -9, "the study must be killed before it ends"
    assert not (killed / "results.json").exists()

    finish = subprocess.run(
        [sys.executable, "-m", "simagents.cli", *STUDY, "--out", str(killed), "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finish.returncode == 0, finish.stderr

    def text(folder: Path, path: str) -> Any:
        """The results but their wall-clock timings, with the run folder's own path written <out>."""

        def strip(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k != "timings"}
            return [strip(v) for v in value] if isinstance(value, list) else value

        return strip(json.loads((folder / path).read_text().replace(str(folder), "<out>")))

    assert text(killed, "results.json") == text(reference, "results.json")
    for cell in ("gamble", "twin_pd", "cartpole"):
        path = f"cells/{cell}/seed0/cell.json"
        assert text(killed, path) == text(reference, path)
