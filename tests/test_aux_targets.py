"""Auxiliary targets: per-observation facts the simulator learns to predict and never reads.

From the episode contract through Minari, the flat arrays and the windows to the model's loss
and the trainer; Connect Four's engine-proved losing moves are the testbed's use of them."""

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import BOX_OBS, DISCRETE_ACT, random_episode, tiny_model
from simagents.data.flat import FlatEpisodes
from simagents.data.minari_io import load_dataset, save_dataset
from simagents.data.windows import WindowSampler
from simagents.envs.connect_four import (
    POPULATION,
    ConnectFourEnv,
    losing_moves,
    mirror,
    play_game,
    with_losing_moves,
)
from simagents.envs.connect_four_engine import Position
from simagents.envs.connect_four_metrics import losing_plies
from simagents.errors import SimagentsError
from simagents.model import Simulator, SimulatorConfig
from simagents.study.connect_four import BUDGETS, ConnectFourBudget, detection_scores, run_connect_four
from simagents.train import LossWeights, TrainConfig, to_batch, train


def with_targets(episode, rng: np.random.Generator, width: int = 3):
    """The episode with targets that are a function of its observations (learnable)."""
    obs = episode.observations.reshape(len(episode.observations), -1)
    targets = (obs[:, :width] > 0).astype(np.float32) if width else np.zeros((len(obs), 0), np.float32)
    return dataclasses.replace(episode, aux_targets=targets)


def episodes(n: int = 6, width: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        with_targets(random_episode(rng, int(length), BOX_OBS, DISCRETE_ACT), rng, width)
        for length in rng.integers(2, 9, n)
    ]


def test_episode_contract_checks_aux_targets():
    episode = episodes(1)[0]
    episode.validate(BOX_OBS, DISCRETE_ACT)
    assert random_episode(np.random.default_rng(0), 4, BOX_OBS, DISCRETE_ACT).aux_targets.shape == (5, 0)
    too_short = dataclasses.replace(episode, aux_targets=episode.aux_targets[:-1])
    with pytest.raises(SimagentsError, match="aux_targets has shape"):
        too_short.validate(BOX_OBS, DISCRETE_ACT)
    out_of_range = dataclasses.replace(episode, aux_targets=episode.aux_targets * 2 - 0.5)
    with pytest.raises(SimagentsError, match=r"aux_targets must be numbers in \[0, 1\]"):
        out_of_range.validate(BOX_OBS, DISCRETE_ACT)


def test_minari_keeps_aux_targets_and_data_without_them_have_none(tmp_path: Path):
    data = episodes()
    loaded = load_dataset(
        save_dataset(data, tmp_path / "with", observation_space=BOX_OBS, action_space=DISCRETE_ACT)
    ).episodes
    for saved, read in zip(data, loaded, strict=True):
        np.testing.assert_array_equal(read.aux_targets, saved.aux_targets)
    plain = [dataclasses.replace(e, aux_targets=None) for e in data]
    loaded = load_dataset(
        save_dataset(plain, tmp_path / "without", observation_space=BOX_OBS, action_space=DISCRETE_ACT)
    ).episodes
    assert all(e.aux_targets.shape == (len(e) + 1, 0) for e in loaded)


def test_flat_arrays_refuse_episodes_with_different_targets():
    data = episodes()
    assert FlatEpisodes.from_episodes(data).aux_targets.shape == (sum(len(e) + 1 for e in data), 3)
    mixed = [*data[:3], *(dataclasses.replace(e, aux_targets=None) for e in data[3:])]
    with pytest.raises(SimagentsError, match="different numbers of auxiliary targets"):
        FlatEpisodes.from_episodes(mixed)


def test_windows_give_each_step_its_observations_targets():
    data = episodes()
    sampler = WindowSampler(data, 4)
    windows = sampler.windows(np.array([0, 1, 2]), np.array([0, 1, 2]))
    for b, (episode, start) in enumerate(zip(windows["episode"], windows["start"], strict=True)):
        for k in range(4):
            expected = data[episode].aux_targets[start + k] if windows["mask"][b, k] else np.zeros(3)
            np.testing.assert_array_equal(windows["aux_targets"][b, k], expected)


def model_with_targets(width: int) -> Simulator:
    model = tiny_model(BOX_OBS, DISCRETE_ACT, context_len=4)
    torch.manual_seed(0)
    return Simulator(dataclasses.replace(model.cfg, aux_targets=width), BOX_OBS, DISCRETE_ACT, model.stats)


def test_targets_are_predicted_but_never_read():
    model = model_with_targets(3)
    rng = np.random.default_rng(1)
    batch = to_batch(WindowSampler(episodes(), 4).sample(rng, 6), rng.random(6) < 0.5)
    losses = model.loss(batch)
    flipped = model.loss({**batch, "aux_targets": 1 - batch["aux_targets"]})
    assert set(losses) == set(flipped) == set(model.loss_heads) and "aux_targets" in losses
    for head in losses:  # the targets reach their own loss and nothing else
        same = torch.equal(losses[head], flipped[head])
        assert same == (head != "aux_targets"), head
    plain = model_with_targets(0)
    assert "aux_targets" not in plain.loss_heads
    with pytest.raises(ValueError, match="unknown loss head"):
        plain.loss(batch, heads=("aux_targets",))


def test_targets_are_learnt_from_the_observations():
    """A target that is a function of the observation: the head learns it far below chance."""
    model = model_with_targets(3).train()
    data = episodes(n=40, seed=2)
    sampler = WindowSampler(data, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(3)
    for _ in range(150):
        batch = to_batch(sampler.sample(rng, 16), np.zeros(16, dtype=bool))
        loss = model.loss(batch, heads=("aux_targets",))["aux_targets"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch = to_batch(sampler.sample(np.random.default_rng(4), 64), np.zeros(64, dtype=bool))
    with torch.no_grad():
        learnt = float(model.loss(batch, heads=("aux_targets",))["aux_targets"])
    assert learnt < 0.25 * np.log(2), learnt  # a coin flip: log 2 nats per target


@pytest.fixture(scope="module")
def data_with_targets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aux") / "data"
    return save_dataset(episodes(n=12), out, observation_space=BOX_OBS, action_space=DISCRETE_ACT)


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_training_fits_the_head_to_the_data_unless_weighted_zero(
    data_with_targets: Path, tmp_path: Path, weight
):
    cfg = TrainConfig(
        data=(str(data_with_targets),),
        out=tmp_path / "run",
        model=SimulatorConfig(context_len=4, n_embd=16, n_layer=1),
        loss=LossWeights(aux_targets=weight),
        steps=2,
        batch_size=4,
        eval_every=2,
        log_every=1,
    )
    run = train(cfg, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["aux_targets"] == (3 if weight else 0)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ("train/loss_aux_targets" in metrics[0]) == bool(weight)
    wrong = dataclasses.replace(
        cfg, out=tmp_path / "wrong", model=dataclasses.replace(cfg.model, aux_targets=5)
    )
    with pytest.raises(SimagentsError, match="auxiliary targets"):
        train(wrong, progress=False)


# --------------------------------------------------------------------------- Connect Four


@pytest.mark.parametrize(("plies", "losing"), [(2, []), (4, [2, 3, 5, 6]), (6, [2, 3, 5, 6])])
def test_losing_moves_are_the_blunder_detectors_proof(plies: int, losing: list[int]):
    # The opponent holds columns 2 and 3 of the bottom row: unless 0, 1 or 4 answers, 1 forks.
    position = Position.from_moves("6253")
    targets = losing_moves(position, plies)
    assert np.flatnonzero(targets).tolist() == losing
    for column in range(7):
        assert bool(targets[column]) == (losing_plies(position, column, plies) is not None)


def test_losing_moves_mirror_with_the_board():
    env = ConnectFourEnv()
    game = play_game(env, POPULATION["novice"], np.random.default_rng(0), 5, "novice")
    targets = with_losing_moves(game, 6)
    assert targets.aux_targets.shape == (len(game) + 1, 7) and targets.aux_targets.any()
    np.testing.assert_array_equal(mirror(targets).aux_targets, with_losing_moves(mirror(game), 6).aux_targets)


def test_connect_four_budget_checks_the_weight():
    with pytest.raises(SimagentsError, match="losing_moves_loss"):
        ConnectFourBudget(losing_moves_loss=-1.0)


@pytest.mark.parametrize(("weight", "targets"), [(1.0, 7), (0.0, 0)])
def test_connect_four_run_trains_on_losing_moves_when_weighted(tmp_path: Path, weight: float, targets: int):
    budget = dataclasses.replace(BUDGETS["smoke"], losing_moves_loss=weight)
    run_connect_four({}, out=tmp_path / "c4", budget=budget, agents=["imitation[expert]"])
    saved = json.loads((tmp_path / "c4" / "simulator" / "config.json").read_text())
    assert saved["model"]["aux_targets"] == targets
    results = json.loads((tmp_path / "c4" / "results.json").read_text())
    assert ("losing_moves" in results) == bool(targets)
    if targets:  # what the head sees, and where each label's losing moves fall
        seen = results["losing_moves"]
        assert 0 <= seen["head"]["recall"] <= 1 and 0 <= seen["head"]["auc"] <= 1
        for label in seen["labels"].values():
            assert 0 <= label["flagged_mass"] <= label["losing_mass"] <= 1


def test_space_of_the_targets_is_independent_of_the_observation_space():
    # A Discrete-observation episode carries targets too: they are not part of the observation.
    space = gym.spaces.Discrete(5)
    episode = random_episode(np.random.default_rng(0), 3, space, DISCRETE_ACT)
    episode = dataclasses.replace(episode, aux_targets=np.full((4, 2), 0.5, np.float32))
    episode.validate(space, DISCRETE_ACT)


def test_detection_scores_on_hand_made_scores():
    truth = np.array([True, True, False, False, False])
    perfect = detection_scores(truth, np.array([0.9, 0.6, 0.4, 0.2, 0.1]))
    assert perfect == {"recall": 1.0, "precision": 1.0, "auc": 1.0, "losing_share": 0.4, "moves": 5.0}
    # One true entry missed (0.3), one false one flagged (0.7), which also outranks it.
    mixed = detection_scores(truth, np.array([0.9, 0.3, 0.7, 0.2, 0.1]))
    assert mixed["recall"] == 0.5 and mixed["precision"] == 0.5
    assert mixed["auc"] == pytest.approx(5 / 6)  # 5 of the 6 (true, false) pairs in order
