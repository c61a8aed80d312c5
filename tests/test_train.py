import hashlib
import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from simagents.data.collect import CollectConfig, collect
from simagents.errors import SimagentsError
from simagents.io import atomic_write_json
from simagents.model import Simulator, SimulatorConfig
from simagents.train import RunLog, TrainConfig, learning_rate, train


@pytest.fixture(scope="module")
def cartpole_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "cartpole"
    collect(CollectConfig(env="CartPole-v1", out=out, policy="mixed", episodes=20, seed=3))
    return out


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    cfg = TrainConfig(
        data=(str(data),),
        out=out,
        model=SimulatorConfig(context_len=5, n_embd=32, n_layer=2, n_head=2, dropout=0.1),
        steps=8,
        batch_size=8,
        warmup_steps=2,
        eval_every=2,
        log_every=1,
        keep_checkpoints=10,
    )
    return replace(cfg, **changes)


def weights_hash(run: Path) -> str:
    return hashlib.sha256(
        (run / "checkpoints" / "step_00000008" / "model.safetensors").read_bytes()
    ).hexdigest()


def test_same_seed_same_weights_and_metrics(cartpole_data: Path, tmp_path: Path):
    a = train(tiny_config(cartpole_data, tmp_path / "a"), progress=False)
    b = train(tiny_config(cartpole_data, tmp_path / "b"), progress=False)
    c = train(tiny_config(cartpole_data, tmp_path / "c", seed=1), progress=False)
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()


def test_resume_is_bit_identical_to_an_uninterrupted_run(cartpole_data: Path, tmp_path: Path):
    run = train(tiny_config(cartpole_data, tmp_path / "run"), progress=False)
    final, metrics = weights_hash(run), (run / "metrics.jsonl").read_text()
    # Pretend the process died right after the step-4 checkpoint.
    for step in (6, 8):
        for f in (run / "checkpoints" / f"step_{step:08d}").iterdir():
            f.unlink()
        (run / "checkpoints" / f"step_{step:08d}").rmdir()
    atomic_write_json(run / "checkpoints" / "latest.json", {"checkpoint": "step_00000004", "step": 4})
    train(tiny_config(cartpole_data, run), resume=True, progress=False)
    assert weights_hash(run) == final
    assert (run / "metrics.jsonl").read_text() == metrics


def test_resume_refuses_other_settings_and_fresh_run_refuses_existing_folder(
    cartpole_data: Path, tmp_path: Path
):
    run = train(tiny_config(cartpole_data, tmp_path / "run"), progress=False)
    with pytest.raises(SimagentsError, match="already holds a training run"):
        train(tiny_config(cartpole_data, run), progress=False)
    with pytest.raises(SimagentsError, match="other settings"):
        train(tiny_config(cartpole_data, run, lr=1.0), resume=True, progress=False)


def test_a_folder_holding_other_results_is_refused_untouched(cartpole_data: Path, tmp_path: Path):
    folder = tmp_path / "testbed_run"  # another command's run: its own config.json beside its results
    folder.mkdir()
    (folder / "config.json").write_text('{"testbed": "newcomb"}')
    (folder / "results.json").write_text("{}")
    for resume in (False, True):
        with pytest.raises(SimagentsError, match=r"holds results\.json, which no training run writes"):
            train(tiny_config(cartpole_data, folder), resume=resume, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "results.json"]
    assert (folder / "config.json").read_text() == '{"testbed": "newcomb"}'
    # A run killed before its first checkpoint holds only what training writes: it restarts there.
    run = tmp_path / "killed"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / ".config.json.abc.tmp").write_text("")
    train(tiny_config(cartpole_data, run), progress=False)
    assert (run / "checkpoints").is_dir()


def test_checkpoint_has_config_statistics_and_metrics(cartpole_data: Path, tmp_path: Path):
    run = train(tiny_config(cartpole_data, tmp_path / "run"), progress=False)
    model = Simulator.load(run)
    assert model.cfg.max_timestep == 501  # fitted: CartPole's longest episode + 1
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 9))
    assert all(np.isfinite(m["train/loss"]) for m in lines)
    assert any("eval/action_nll" in m for m in lines)
    assert (run / "config.json").is_file() and (run / "command.txt").is_file()


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(data=("x",), out=Path("x"), steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_default_warmup_is_a_tenth_of_a_short_run_and_100_of_a_long_one():
    def lrs(steps: int) -> list[float]:
        cfg = TrainConfig(data=("x",), out=Path("x"), steps=steps, lr=1.0)
        return [learning_rate(cfg, s) for s in range(steps)]

    short, long = lrs(250), lrs(3000)
    assert short.index(max(short)) == 24 and short[23] < short[24] == pytest.approx(1.0)
    assert long.index(max(long)) == 99 and long[98] < long[99] == pytest.approx(1.0)


def test_resume_drops_a_metrics_line_cut_short_by_a_crash(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n{"step": 3, "tra')
    RunLog(log, resume_step=2)
    assert log.read_text() == '{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n'


def test_zero_weight_heads_are_not_computed_and_bad_weights_are_refused(cartpole_data: Path, tmp_path: Path):
    from simagents.train import LossWeights

    dt_only = LossWeights(value=0, action_value=0, reward=0, observation=0, termination=0)
    run = train(tiny_config(cartpole_data, tmp_path / "dt", loss=dt_only), progress=False)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_keys = {k for line in logged for k in line if k.startswith("train/loss_")}
    assert train_keys == {"train/loss_action"}
    assert weights_hash(run) != weights_hash(
        train(tiny_config(cartpole_data, tmp_path / "all"), progress=False)
    )
    for weights, message in (
        (replace(dt_only, action=0), "every --loss"),
        (replace(dt_only, reward=-1.0), "--loss.reward -1.0: must be 0 or more"),
    ):
        with pytest.raises(SimagentsError, match=message):
            train(tiny_config(cartpole_data, tmp_path / "bad", loss=weights), progress=False)
        assert not (tmp_path / "bad").exists()


def test_bf16_training_follows_fp32_keeps_fp32_weights_and_is_deterministic(
    cartpole_data: Path, tmp_path: Path
):
    from safetensors.torch import load_file

    def logged_losses(run: Path) -> list[float]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]

    runs = {
        name: train(
            tiny_config(cartpole_data, tmp_path / name, steps=40, eval_every=40, precision=p),
            progress=False,
        )
        for name, p in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16_again", "bf16"))
    }
    fp32, bf16 = logged_losses(runs["fp32"]), logged_losses(runs["bf16"])
    assert bf16 == logged_losses(runs["bf16_again"])  # same seed, same numbers
    assert bf16 != fp32  # the products really ran in bfloat16
    # Step by step, the bf16 run's loss curve follows fp32's to a few parts in a thousand.
    assert np.max(np.abs(np.subtract(bf16, fp32)) / np.array(fp32)) < 0.02
    weights = load_file(str(runs["bf16"] / "checkpoints" / "step_00000040" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    with pytest.raises(SimagentsError, match="--precision fp16: must be one of fp32, bf16"):
        train(tiny_config(cartpole_data, tmp_path / "bad", precision="fp16"), progress=False)
    assert not (tmp_path / "bad").exists()
