"""Run-folder locking and option checks: a second writer is refused, a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from helpers import BOX_OBS, DISCRETE_ACT, random_episode
from simagents.cli import main
from simagents.data.minari_io import dataset_lock, save_dataset
from simagents.errors import SimagentsError
from simagents.io import LOCK_NAME, fresh_folder, hold_lock
from simagents.train import TrainConfig, train

HOLDER = """
import sys, time
from simagents.io import hold_lock
from simagents.data.minari_io import dataset_lock
lock = dataset_lock(sys.argv[1]) if sys.argv[2] == "dataset" else hold_lock(sys.argv[1], "training run")
lock.__enter__()
print("held", flush=True)
time.sleep(120)
"""


@contextmanager
def held_elsewhere(folder: Path, kind: str = "run") -> Iterator[subprocess.Popen]:
    """Another process holding the lock on ``folder``; killed with SIGKILL at the end."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, 6, BOX_OBS, DISCRETE_ACT) for _ in range(4)]
    out = tmp_path_factory.mktemp("data") / "ds"
    return save_dataset(episodes, out, observation_space=BOX_OBS, action_space=DISCRETE_ACT)


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--model.context-len",
        "3",
        "--model.n-embd",
        "8",
        "--model.n-layer",
        "1",
        *extra,
    ]


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_stale_lock(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with held_elsewhere(run) as holder:
        assert main(tiny_args(tiny_data, run)) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err]
        assert f"{run}: another process (pid {holder.pid}) is writing this training run" in err
        assert not (run / "checkpoints").exists()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_NAME).exists()  # the killed holder's file is still there, but not locked
    assert main(tiny_args(tiny_data, run)) == 0
    assert (run / "checkpoints" / "latest.json").is_file()
    assert not (run / LOCK_NAME).exists()  # released and removed at the end


def test_the_lock_is_reentrant_in_one_process_and_cleans_up(tmp_path: Path) -> None:
    folder = tmp_path / "new"
    with hold_lock(folder, "run"):
        with hold_lock(folder, "run"):
            assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert (folder / LOCK_NAME).exists()  # still held by the outer block
    assert not folder.exists()  # made by the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    with hold_lock(tmp_path / "kept", "run"):
        pass
    assert (tmp_path / "kept").is_dir()  # existed before: kept


def test_a_second_dataset_writer_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    episodes = [random_episode(np.random.default_rng(1), 4, BOX_OBS, DISCRETE_ACT)]
    with held_elsewhere(out, "dataset"):
        with pytest.raises(SimagentsError, match=r"ds: another process \(pid \d+\) is writing this dataset"):
            save_dataset(episodes, out, observation_space=BOX_OBS, action_space=DISCRETE_ACT)
        assert not out.exists()
    with dataset_lock(out):  # the holder is gone; our own lock does not stop our own save
        save_dataset(episodes, out, observation_space=BOX_OBS, action_space=DISCRETE_ACT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--eval-every", "0"),
        ("--log-every", "0"),
        ("--batch-size", "0"),
        ("--steps", "-1"),
        ("--keep-checkpoints", "0"),
        ("--seed", "-1"),
        ("--threads", "-2"),
        ("--lr", "-0.1"),
        ("--validation-fraction", "2"),
        ("--return-dropout", "nan"),
    ],
)
def test_an_option_that_cannot_make_a_run_is_named(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    assert main([*tiny_args(tiny_data, tmp_path / "run"), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith(f"error: {option} ") and "must be" in err and option[2:].replace("-", "_") in err
    assert not (tmp_path / "run").exists()


def test_valid_edge_values_are_accepted(tiny_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=(str(tiny_data),), out=tmp_path / "run", steps=1, batch_size=2, warmup_steps=0)
    cfg.check()
    train(cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step_00000001").is_dir()


def test_a_second_study_or_testbed_run_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    from simagents.study.connect_four import run_connect_four
    from simagents.study.prophecy import run_prophecy
    from simagents.study.run import run_study
    from simagents.study.testbed import run_testbed

    for out, start in (
        (
            tmp_path / "study",
            lambda out: run_study(profile="smoke", out=out, only=["gamble"], progress=False),
        ),
        (tmp_path / "testbed", lambda out: run_testbed("gamble", out=out, budget="smoke")),
        (tmp_path / "prophecy", lambda out: run_prophecy(out=out, budget="smoke")),
        (tmp_path / "connect_four", lambda out: run_connect_four(out=out, budget="smoke")),
    ):
        with held_elsewhere(out):
            with pytest.raises(SimagentsError, match=rf"{out.name}: another process \(pid \d+\) is writing"):
                start(out)
            # Refused before anything was written: only the holder's lock file is there.
            assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_a_fresh_folder_that_fails_is_left_as_it_was_found(tmp_path: Path) -> None:
    for existed in (False, True):
        out = tmp_path / f"run-{existed}"
        if existed:
            out.mkdir()  # made by the user, empty: kept
        with pytest.raises(KeyboardInterrupt), fresh_folder(out, "run") as folder:
            assert folder == out and (out / LOCK_NAME).exists()
            (out / "sub").mkdir()
            (out / "sub" / "results.json").write_text("{}")
            raise KeyboardInterrupt
        assert out.is_dir() == existed and (not existed or not any(out.iterdir()))
    with fresh_folder(tmp_path / "ok", "run") as folder:
        (folder / "results.json").write_text("{}")
    assert [p.name for p in (tmp_path / "ok").iterdir()] == ["results.json"]  # the lock is gone
    refused = r"ok already exists and is not empty.*another --out"
    with pytest.raises(SimagentsError, match=refused), fresh_folder(tmp_path / "ok", "run"):
        pass
    assert (tmp_path / "ok" / "results.json").read_text() == "{}"  # refused: nothing touched
