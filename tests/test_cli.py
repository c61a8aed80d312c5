"""Bad input at the command line: one line on stderr, exit status 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium
import h5py
import numpy as np
import pytest

from helpers import BOX_OBS, DISCRETE_ACT, random_episode, tiny_model
from simagents.cli import main
from simagents.data.minari_io import save_dataset


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simagents.cli", *args], capture_output=True, text=True, timeout=120
    )


def assert_clean_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0]


def test_missing_dataset_path(tmp_path: Path):
    result = run_cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"))
    assert_clean_error(result, "nowhere")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_rewards_in_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    episode = random_episode(np.random.default_rng(0), 5, BOX_OBS, DISCRETE_ACT)
    data = save_dataset([episode], tmp_path / "bad", observation_space=BOX_OBS, action_space=DISCRETE_ACT)
    with h5py.File(data / "data" / "main_data.hdf5", "r+") as f:  # corrupt it behind minari's back
        f["episode_0/rewards"][2] = np.nan
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and str(data) in err and len(err.strip().splitlines()) == 1


def test_env_with_the_wrong_action_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tiny_model(BOX_OBS, DISCRETE_ACT).save(tmp_path / "ckpt")
    assert main(["eval", str(tmp_path / "ckpt"), "--env", "Pendulum-v1", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "space" in err and "Pendulum-v1" in err


def test_truncated_safetensors_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tiny_model().save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["info", str(tmp_path / "ckpt")]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_unknown_key_in_checkpoint_config(tmp_path: Path):
    tiny_model().save(tmp_path / "ckpt")
    config = tmp_path / "ckpt" / "config.json"
    values = json.loads(config.read_text())
    values["model"]["n_heads"] = 4
    config.write_text(json.dumps(values))
    assert_clean_error(run_cli("info", str(tmp_path / "ckpt")), "n_heads", "config.json")


def test_eval_plays_the_env_its_data_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from simagents.study.testbed import run_testbed

    run_testbed("newcomb", {"accuracy": 0.8}, agents=["dt"], out=tmp_path / "tb", budget="smoke")
    simulator = tmp_path / "tb" / "simulator"
    checkpoint = next((simulator / "checkpoints").glob("step_*"))
    for where in (simulator, checkpoint):  # a run folder, or one of its checkpoints
        assert main(["eval", str(where), "--episodes", "1", "--param", "small=5"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["env"] == "simagents/Newcomb-v0"
        assert report["env_kwargs"]["accuracy"] == 0.8 and report["env_kwargs"]["small"] == 5
    cartpole = gymnasium.make("CartPole-v1")
    tiny_model(cartpole.observation_space, cartpole.action_space).save(tmp_path / "ckpt")  # no data: no env
    assert main(["eval", str(tmp_path / "ckpt"), "--episodes", "1"]) == 2
    assert "no dataset of it names its env; pass the env to play in with --env" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "ckpt"), "--env", "CartPole-v1", "--episodes", "1"]) == 0


def test_unknown_option_and_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tiny_model(BOX_OBS, DISCRETE_ACT).save(tmp_path / "ckpt")
    assert main(["eval", str(tmp_path / "ckpt"), "--agent", "oracle"]) == 2
    assert "oracle" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "ckpt"), "--agent", "dt", "--option", "targett=3"]) == 2
    assert "targett" in capsys.readouterr().err


def test_a_negative_seed_or_no_episodes_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cartpole = gymnasium.make("CartPole-v1")
    tiny_model(cartpole.observation_space, cartpole.action_space).save(tmp_path / "ckpt")
    evaluation = ["eval", str(tmp_path / "ckpt"), "--env", "CartPole-v1"]
    refused = {
        "collect: seed must be a whole number, 0 or more, got -1": [
            "collect",
            "--env",
            "CartPole-v1",
            "--episodes",
            "2",
            "--seed",
            "-1",
            "--out",
            str(tmp_path / "data"),
        ],
        "evaluate: seed must be a whole number, 0 or more, got -1": [*evaluation, "--seed", "-1"],
        "--episodes 0: must be at least 1": [*evaluation, "--episodes", "0"],
        "finetune: seed must be a whole number": [
            "finetune",
            str(tmp_path / "ckpt"),
            "--env",
            "CartPole-v1",
            "--seed",
            "-1",
            "--out",
            str(tmp_path / "rl"),
        ],
        "testbed newcomb: seed must be": ["testbed", "newcomb", "--seed", "-1", "--out", str(tmp_path / "a")],
        "testbed prophecy: seed must be": [
            "testbed",
            "prophecy",
            "--seed",
            "-1",
            "--out",
            str(tmp_path / "b"),
        ],
        "testbed connect_four: seed must be": [
            "testbed",
            "connect_four",
            "--seed",
            "-1",
            "--out",
            str(tmp_path / "c"),
        ],
        "study: seed must be": ["study", "--seed", "-1", "--out", str(tmp_path / "study")],
    }
    for message, argv in refused.items():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing else written


def test_unknown_flag_is_a_usage_error(tmp_path: Path):
    result = run_cli("train", "--data", "x", "--out", str(tmp_path / "run"), "--model.n-embed", "3")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_unknown_env_id(tmp_path: Path):
    result = run_cli("collect", "--env", "NoSuchEnv-v9", "--out", str(tmp_path / "d"), "--episodes", "1")
    assert_clean_error(result, "NoSuchEnv-v9")
    assert not (tmp_path / "d").exists()


def test_an_image_shape_that_does_not_fit_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    episode = random_episode(np.random.default_rng(0), 5, BOX_OBS, DISCRETE_ACT)
    data = save_dataset([episode], tmp_path / "data", observation_space=BOX_OBS, action_space=DISCRETE_ACT)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1"]
    assert main([*args, "--model.obs-image", "1", "2", "2"]) == 2  # the observation has 3 values
    err = capsys.readouterr().err
    assert "obs_image=(1, 2, 2)" in err and "--model.obs-image" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert (
        main([*args, "--model.obs-image", "3", "1", "1", "--model.n-embd", "16", "--model.n-layer", "1"]) == 0
    )
