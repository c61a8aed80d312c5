"""Data-parallel training: torchrun with 2 processes follows the one-process loss curve at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from helpers import BOX_OBS, DISCRETE_ACT, random_episode, tiny_model
from simagents.cli import main
from simagents.data.minari_io import save_dataset
from simagents.data.windows import WindowSampler
from simagents.errors import SimagentsError
from simagents.train import DataParallel, TrainConfig, _LossOf, data_parallel, to_batch

STEPS = 50


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, int(n), BOX_OBS, DISCRETE_ACT) for n in rng.integers(2, 20, 10)]
    out = tmp_path_factory.mktemp("data") / "ds"
    return save_dataset(episodes, out, observation_space=BOX_OBS, action_space=DISCRETE_ACT)


@pytest.mark.parametrize("world", [2, 4])
def test_rank_slices_weighted_by_tokens_add_up_to_the_global_batch_loss(world: int) -> None:
    # Episodes shorter than the window give padding, interventions and return dropout vary per
    # row, so each head counts different tokens on each rank: a plain mean of rank means differs.
    rng = np.random.default_rng(1)
    episodes = [random_episode(rng, int(n), BOX_OBS, DISCRETE_ACT) for n in rng.integers(1, 8, 12)]
    batch = to_batch(WindowSampler(episodes, 6).sample(rng, 8), rng.random(8) < 0.5)
    model = tiny_model(BOX_OBS, DISCRETE_ACT, context_len=6)
    whole = model.loss(batch)
    per_rank = [
        DataParallel(r, world, _LossOf(model)).losses(model, batch, model.loss_heads) for r in range(world)
    ]
    for head, value in whole.items():
        combined = sum(losses[head] for losses in per_rank) / world  # what DDP's gradient average sees
        torch.testing.assert_close(combined, value, rtol=1e-5, atol=1e-6, msg=head)
    plain = sum(model.loss({k: v[r::world] for k, v in batch.items()})["action"] for r in range(world))
    assert not torch.isclose(plain / world, whole["action"], rtol=1e-4)  # the weighting matters here


def test_a_batch_that_does_not_split_over_the_processes_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    refused = pytest.raises(SimagentsError, match="--batch-size 8 does not split over 3 processes")
    with refused, data_parallel(TrainConfig(data=("d",), out=tmp_path, batch_size=8)):
        pass


def options(data: Path, out: Path) -> list[str]:
    return [
        *("--data", str(data), "--out", str(out), "--steps", str(STEPS), "--batch-size", "8"),
        *("--eval-every", "25", "--log-every", "1", "--threads", "1", "--warmup-steps", "10"),
        *("--model.context-len", "4", "--model.n-embd", "16", "--model.n-layer", "1", "--model.n-head", "2"),
    ]


def read_metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(data: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["train", *options(data, tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*launch, "-m", "simagents", "train", *options(data, two)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    one_metrics, two_metrics = read_metrics(tmp_path / "one"), read_metrics(two)
    # Only rank 0 writes: one line per step, no duplicates.
    assert [m["step"] for m in two_metrics] == list(range(1, STEPS + 1))
    for a, b in zip(one_metrics, two_metrics, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-4, (a["step"], key, a[key], b[key])
    files = sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.name != "command.txt")
    assert files == sorted(
        str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*") if p.name != "command.txt"
    )
    weights = [
        safetensors.torch.load_file(run / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors")
        for run in (tmp_path / "one", two)
    ]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5, msg=name)
