"""Label conditioning: a per-episode behaviour-policy label in every token of the context."""

import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import BOX_OBS, tiny_model
from simagents.agents import evaluate, make_agent
from simagents.data.episodes import episode_from_arrays
from simagents.data.minari_io import save_dataset
from simagents.envs.connect_four import ConnectFourEnv
from simagents.errors import SimagentsError
from simagents.model import Context, Simulator, SimulatorConfig
from simagents.train import TrainConfig, train

FOUR = gym.spaces.Discrete(4)


def labelled_model(seed: int = 0) -> Simulator:
    model = tiny_model(BOX_OBS, FOUR, seed=seed)
    cfg = replace(model.cfg, condition_on_label=True)
    stats = replace(model.stats, labels=["strong", "weak"])
    torch.manual_seed(seed)
    return Simulator(cfg, BOX_OBS, FOUR, stats).eval()


@torch.no_grad()
def policy_logits(model: Simulator, label: str | None, observations: np.ndarray) -> torch.Tensor:
    """The policy's logits at each step of a fixed history, the context labelled ``label``."""
    context = Context(model, label)
    out = []
    for t, obs in enumerate(observations):
        context.push_observation(torch.as_tensor(obs))
        out.append(model.action_params(context.push_return(None))[0])
        context.push_action(torch.tensor(t % 4), intervention=False)
        context.push_reward(0.5)
    return torch.stack(out)


def test_the_label_changes_the_policy_and_matches_the_training_forward() -> None:
    model = labelled_model()
    with torch.no_grad():  # embeddings far apart, as training would make them
        model.label_embed.weight.copy_(torch.randn_like(model.label_embed.weight))
    observations = np.random.default_rng(0).uniform(-1, 1, (6, 3)).astype(np.float32)
    weak, strong, unknown = (policy_logits(model, label, observations) for label in ("weak", "strong", None))
    assert not torch.allclose(weak, strong, atol=1e-3)
    assert not torch.allclose(weak, unknown, atol=1e-3)
    # The training forward with batch["label"] gives the same policy as step-by-step decoding.
    T = len(observations)
    batch = {
        "observations": torch.as_tensor(observations)[None],
        "returns_to_go": torch.zeros(1, T),
        "return_known": torch.tensor([False]),
        "actions": (torch.arange(T) % 4)[None],
        "interventions": torch.zeros(1, T, dtype=torch.bool),
        "rewards": torch.full((1, T), 0.5),
        "timesteps": torch.arange(T)[None],
    }
    for label, expected in (("weak", weak), ("strong", strong), (None, unknown)):
        labelled = batch if label is None else {**batch, "label": torch.tensor([model.label_index(label)])}
        with torch.no_grad():
            h = model(labelled)["return"][0, :4]  # the window the Context held (context_len 4)
        torch.testing.assert_close(model.action_params(h), expected[:4], atol=1e-5, rtol=1e-4)


def test_unknown_labels_and_unlabelled_simulators_are_simagents_errors() -> None:
    with pytest.raises(SimagentsError, match=r"'novice' never occurs.*strong, weak"):
        make_agent("imitation", labelled_model(), label="novice")
    with pytest.raises(SimagentsError, match="trained without label conditioning"):
        make_agent("imitation", tiny_model(BOX_OBS, FOUR), label="weak")
    make_agent("imitation", tiny_model(BOX_OBS, FOUR))  # no label: fine without conditioning


def test_checkpoints_of_older_configs_load(tmp_path: Path) -> None:
    model = tiny_model(BOX_OBS, FOUR)
    model.save(tmp_path)
    # An older checkpoint: no condition_on_label in config.json, no labels in statistics.json.
    for name, section in (("config.json", "model"), ("statistics.json", None)):
        values = json.loads((tmp_path / name).read_text())
        target = values[section] if section else values
        target.pop("condition_on_label" if section else "labels")
        (tmp_path / name).write_text(json.dumps(values))
    loaded = Simulator.load(tmp_path)
    assert loaded.label_embed is None and loaded.stats.labels == []
    observations = np.zeros((2, 3), dtype=np.float32)
    torch.testing.assert_close(
        policy_logits(loaded, None, observations), policy_logits(model, None, observations)
    )
    # A labelled simulator saves and loads its labels and their embedding.
    labelled = labelled_model()
    labelled.save(tmp_path / "labelled")
    again = Simulator.load(tmp_path / "labelled")
    assert again.stats.labels == ["strong", "weak"] and again.label_embed is not None
    torch.testing.assert_close(again.label_embed.weight, labelled.label_embed.weight)


def label_data(path: Path, episodes: int = 60) -> Path:
    """Two players with random observations: 'low' always plays action 0, 'high' always action 3."""
    rng = np.random.default_rng(0)
    games = []
    for i in range(episodes):
        name, action = ("low", 0) if i % 2 else ("high", 3)
        n = 6
        games.append(
            episode_from_arrays(
                observations=rng.uniform(-1, 1, (n + 1, 3)),
                actions=np.full(n, action),
                rewards=np.zeros(n),
                terminations=np.arange(n) == n - 1,
                truncations=np.zeros(n, dtype=bool),
                observation_space=BOX_OBS,
                action_space=FOUR,
                policy=name,
            )
        )
    return save_dataset(games, path, observation_space=BOX_OBS, action_space=FOUR)


def test_a_trained_label_picks_its_players_move(tmp_path: Path) -> None:
    data = label_data(tmp_path / "data")
    cfg = TrainConfig(
        data=(str(data),),
        out=tmp_path / "run",
        model=SimulatorConfig(context_len=6, n_embd=32, n_layer=1, condition_on_label=True),
        steps=300,
        lr=2e-3,
        batch_size=16,
        warmup_steps=10,
        eval_every=300,
        threads=1,
    )
    simulator = Simulator.load(train(cfg, progress=False))
    assert simulator.stats.labels == ["high", "low"]

    class FirstAction(gym.Env):  # one step: only the label tells the players apart
        observation_space, action_space = BOX_OBS, FOUR

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

        def step(self, action):
            return np.zeros(3, np.float32), float(action), True, False, {}

    mean = {
        label: evaluate(make_agent("imitation", simulator, label=label), FirstAction(), 40).summary()[
            "mean_return"
        ]
        for label in ("low", "high", None)
    }
    assert mean["low"] < 0.5 and mean["high"] > 2.5  # action 0 vs action 3
    assert 0.8 < mean[None] < 2.2  # unconditioned: either player, about half each
    # label="sample": each episode draws its player by the data's shares and plays as that player.
    shares = dict(zip(simulator.stats.labels, simulator.stats.label_shares, strict=True))
    assert sum(shares.values()) == pytest.approx(1.0) and 0.3 < shares["low"] < 0.7
    agent = make_agent("imitation", simulator, label="sample")
    drawn = []
    for seed in range(40):
        agent.reset(seed=seed)
        action = agent.act(np.zeros(3, dtype=np.float32))
        drawn.append(agent.episode_label)
        assert action == {"low": 0, "high": 3}[agent.episode_label]
    assert 10 < drawn.count("low") < 30


@pytest.mark.parametrize("weak_share", [0.2, 0.7])
def test_sampled_labels_follow_the_training_shares_and_the_seed(weak_share: float) -> None:
    model = labelled_model()
    model.stats = replace(model.stats, label_shares=[0.9 - weak_share, weak_share])  # 0.1 unlabelled
    agent = make_agent("imitation", model, label="sample")
    drawn = []
    for seed in range(2000):
        agent.reset(seed=seed)
        drawn.append(agent.episode_label)
    assert drawn.count("weak") / 2000 == pytest.approx(weak_share, abs=0.03)
    assert drawn.count(None) / 2000 == pytest.approx(0.1, abs=0.02)  # the unknown label
    again = [agent.reset(seed=seed) or agent.episode_label for seed in range(50)]
    assert again == drawn[:50]


def test_sampling_labels_needs_a_labelled_simulator_that_recorded_shares() -> None:
    with pytest.raises(SimagentsError, match="trained without label conditioning"):
        make_agent("imitation", tiny_model(BOX_OBS, FOUR), label="sample")
    with pytest.raises(SimagentsError, match="no label_shares"):
        make_agent("imitation", labelled_model(), label="sample")


def test_conditioned_imitation_respects_the_action_mask() -> None:
    board = ConnectFourEnv().observation_space
    model = tiny_model(board, gym.spaces.Discrete(7), seed=3)
    model = Simulator(
        replace(model.cfg, condition_on_label=True),
        board,
        model.action_space,
        replace(model.stats, labels=["a", "b"]),
    ).eval()
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        agent = make_agent("imitation", model, label=label)
        for legal in ([3], [0, 6], [1, 2, 5]):
            mask = np.isin(np.arange(7), legal).astype(np.int8)
            agent.reset(seed=0)
            for _ in range(5):
                assert (
                    agent.act(rng.choice([0.0, 1.0], board.shape).astype(np.float32), 0.0, action_mask=mask)
                    in legal
                )
    # Whole games: a full column would raise InvalidAction if the mask were ignored.
    result = evaluate(make_agent("imitation", model, label="b"), ConnectFourEnv(opponent_depth=1), episodes=3)
    assert set(result.returns) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("label_dropout", [0.0, 0.5])
def test_windows_that_show_their_return_hide_their_label(tmp_path: Path, label_dropout: float) -> None:
    from simagents.train import window_labels

    cfg = TrainConfig(data=("unused",), out=tmp_path, label_dropout=label_dropout)
    episode_labels = np.array([1, 2, 1, 2] * 50)
    known = torch.arange(200) % 3 == 0
    batch = {"episode": torch.arange(200), "return_known": known}
    labels = window_labels(batch, episode_labels, cfg, step=7).numpy()
    assert (labels[known.numpy()] == 0).all()  # a prompted return never comes with a player
    shown = labels[~known.numpy()] == episode_labels[~known.numpy()]
    assert shown.mean() == pytest.approx(1 - label_dropout, abs=0.1)
