import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import BOX_ACT, BOX_OBS, DISCRETE_ACT, tiny_model
from simagents.agents import evaluate, make_agent
from simagents.agents.rl import (
    FinetuneConfig,
    RLAgent,
    collect_batch,
    discounted_returns,
    episode_features,
    episode_windows,
    finetune,
    gae_advantages,
)
from simagents.errors import SimagentsError
from simagents.model import Simulator


class Bandit(gym.Env):
    """Episodes of ``steps`` pulls; Discrete arm i pays payoffs[i], a Box action pays -|a - target|^2."""

    def __init__(self, action_space: gym.Space, payoffs=(0.0, 0.5, 1.0), target=1.5, steps=1) -> None:
        self.observation_space = BOX_OBS
        self.action_space = action_space
        self.payoffs, self.target, self.steps = payoffs, target, steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        if isinstance(self.action_space, gym.spaces.Discrete):
            reward = self.payoffs[int(action)]
        else:
            reward = -float(np.sum((np.asarray(action) - self.target) ** 2))
        return np.zeros(3, np.float32), reward, self.t >= self.steps, False, {}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


FAST = FinetuneConfig(iterations=12, episodes=16, lr=0.05, kl_coef=0.0)


@pytest.mark.parametrize("payoffs", [(0.0, 0.5, 1.0), (1.0, 0.5, 0.0)])
def test_discrete_finetune_learns_the_best_arm(tmp_path: Path, payoffs: tuple) -> None:
    out = tmp_path / "rl"
    tuned = finetune(tiny_model(act_space=DISCRETE_ACT), Bandit(DISCRETE_ACT, payoffs), out, FAST)
    curve = metrics(out)
    assert len(curve) == FAST.iterations and {"rl/return", "rl/entropy", "rl/kl"} <= set(curve[0])
    assert curve[-1]["rl/return"] > curve[0]["rl/return"] + 0.2
    assert curve[-1]["rl/entropy"] < curve[0]["rl/entropy"] - 0.2
    # Saved like any simulator; make_agent("rl") plays the tuned policy: mostly the best arm.
    loaded = Simulator.load(out)
    for name, p in tuned.state_dict().items():
        torch.testing.assert_close(p, loaded.state_dict()[name])
    result = evaluate(make_agent("rl", loaded), Bandit(DISCRETE_ACT, payoffs), episodes=50, seed=1)
    assert np.mean(result.returns) > 0.8
    assert json.loads((out / "finetune.json").read_text())["config"]["kl_coef"] == 0.0


def test_larger_kl_coef_stays_closer_to_the_pretrained_policy(tmp_path: Path) -> None:
    finals = {}
    for kl_coef in (0.1, 3.0):
        cfg = FinetuneConfig(iterations=12, episodes=16, lr=0.05, kl_coef=kl_coef)
        finetune(tiny_model(act_space=DISCRETE_ACT), Bandit(DISCRETE_ACT), tmp_path / str(kl_coef), cfg)
        finals[kl_coef] = metrics(tmp_path / str(kl_coef))[-1]
    assert finals[3.0]["rl/kl"] < 0.25 * finals[0.1]["rl/kl"]
    assert finals[0.1]["rl/return"] > finals[3.0]["rl/return"]


@pytest.mark.parametrize("target", [1.5, -1.0])
def test_box_finetune_moves_the_mean_action_to_the_reward(tmp_path: Path, target: float) -> None:
    env = Bandit(BOX_ACT, target=target)
    cfg = FinetuneConfig(iterations=15, episodes=16, lr=0.01, kl_coef=0.0)
    tuned = finetune(tiny_model(act_space=BOX_ACT), env, tmp_path / "rl", cfg)
    curve = metrics(tmp_path / "rl")
    assert curve[-1]["rl/return"] > curve[0]["rl/return"]
    agent = make_agent("rl", tuned, temperature=0.0)
    agent.reset(seed=0)
    action = agent.act(np.zeros(3, np.float32))
    assert np.abs(action - target).max() < np.abs(0.0 - target) * 0.6  # moved most of the way from ~0


@pytest.mark.parametrize("act_space", [DISCRETE_ACT, BOX_ACT])
def test_episodes_rerun_as_windows_give_the_features_the_agent_acted_on(act_space: gym.Space) -> None:
    """body_lr > 0 re-reads each batch by one forward pass; it must see what the KV-cached agent saw,
    also after the weights change under the agent (its decoding copies follow them)."""
    model = tiny_model(act_space=act_space, context_len=6)
    agent, env, cfg = RLAgent(model), Bandit(act_space, steps=5), FinetuneConfig(episodes=3)
    for _ in range(2):
        batch = collect_batch(agent, env, cfg, seed=0)
        with torch.no_grad():
            rerun = episode_features(model, episode_windows(model, batch))
        assert rerun.shape == batch.features.shape == (15, 32)
        torch.testing.assert_close(rerun, batch.features, atol=2e-4, rtol=1e-4)
        with torch.no_grad():
            for p in model.blocks[0].parameters():
                p.add_(0.1)


@pytest.mark.parametrize("body_lr", [0.0, 0.01])
def test_body_lr_trains_the_transformer_or_leaves_it(tmp_path: Path, body_lr: float) -> None:
    before = tiny_model(act_space=DISCRETE_ACT, context_len=3)
    cfg = FinetuneConfig(iterations=12, episodes=16, lr=0.05, kl_coef=0.0, body_lr=body_lr)
    tuned = finetune(before, Bandit(DISCRETE_ACT, steps=3), tmp_path / "rl", cfg)
    block_moved = (tuned.blocks[0].attn.qkv.weight - before.blocks[0].attn.qkv.weight).abs().max()
    assert (block_moved > 1e-3) == (body_lr > 0)
    curve = metrics(tmp_path / "rl")
    assert curve[-1]["rl/return"] > curve[0]["rl/return"] + 0.5  # three pulls a game
    loaded = Simulator.load(tmp_path / "rl")
    torch.testing.assert_close(loaded.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight)


def test_body_lr_needs_episodes_that_fit_the_context(tmp_path: Path) -> None:
    cfg = FinetuneConfig(iterations=1, episodes=2, body_lr=1e-3)
    with pytest.raises(SimagentsError, match="context_len 4; set max_steps to at most 4"):
        finetune(tiny_model(act_space=DISCRETE_ACT), Bandit(DISCRETE_ACT, steps=5), tmp_path / "rl", cfg)
    assert not (tmp_path / "rl").exists()
    finetune(
        tiny_model(act_space=DISCRETE_ACT),
        Bandit(DISCRETE_ACT, steps=5),
        tmp_path / "rl",
        replace(cfg, max_steps=4),
    )
    assert metrics(tmp_path / "rl")[0]["rl/episode_length"] == 4


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    cfg = FinetuneConfig(iterations=3, episodes=4, lr=0.05)
    env = Bandit(DISCRETE_ACT, steps=3)
    for name in ("a", "b"):
        finetune(tiny_model(act_space=DISCRETE_ACT), env, tmp_path / name, cfg)
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()


def test_discounted_returns() -> None:
    np.testing.assert_allclose(discounted_returns([1.0, 0.0, 2.0], 0.5), [1.5, 1.0, 2.0])
    np.testing.assert_allclose(discounted_returns([1.0, 0.0, 2.0], 0.0), [1.0, 0.0, 2.0])


def test_gae_advantages_span_lambda_from_td_error_to_return_minus_value() -> None:
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, -1.0])  # two episodes: 3 steps, then 2
    values = torch.tensor([0.2, 0.4, 0.6, -0.1, -0.5])
    lengths, gamma = [3, 2], 0.9
    # lambda 1: the discounted return minus the value, each episode on its own.
    returns = torch.tensor(
        np.concatenate([discounted_returns([0.0, 0.0, 1.0], gamma), discounted_returns([0.0, -1.0], gamma)])
    )
    torch.testing.assert_close(gae_advantages(values, rewards, lengths, gamma, 1.0), returns.float() - values)
    # lambda 0: the one-step surprise r + gamma V(next) - V, with no value after an episode's end.
    td = torch.tensor(
        [0.0 + 0.9 * 0.4 - 0.2, 0.0 + 0.9 * 0.6 - 0.4, 1.0 - 0.6, 0.0 + 0.9 * -0.5 + 0.1, -1.0 + 0.5]
    )
    torch.testing.assert_close(gae_advantages(values, rewards, lengths, gamma, 0.0), td)
    # In between, each surprise is discounted by gamma * lambda per step: the first step at 0.5.
    half = gae_advantages(values, rewards, lengths, gamma, 0.5)
    assert float(half[0]) == pytest.approx(td[0] + 0.45 * td[1] + 0.45**2 * td[2])
    assert float(half[3]) == pytest.approx(td[3] + 0.45 * td[4])


def test_gae_finetune_learns_the_best_arm_of_a_sequence(tmp_path: Path) -> None:
    # Three pulls per episode: the baseline's values of the next pulls enter each advantage.
    for payoffs in ((0.0, 0.5, 1.0), (1.0, 0.5, 0.0)):
        env = Bandit(DISCRETE_ACT, payoffs, steps=3)
        out = tmp_path / f"rl{payoffs[0]}"
        finetune(tiny_model(act_space=DISCRETE_ACT), env, out, replace(FAST, gae_lambda=0.5))
        result = evaluate(make_agent("rl", Simulator.load(out)), env, episodes=20, seed=1)
        assert np.mean(result.returns) > 0.8 * 3


def test_bad_config_and_existing_out(tmp_path: Path) -> None:
    model, env = tiny_model(act_space=DISCRETE_ACT), Bandit(DISCRETE_ACT)
    with pytest.raises(SimagentsError, match="gamma"):
        finetune(model, env, tmp_path / "x", FinetuneConfig(gamma=1.5))
    with pytest.raises(SimagentsError, match="gae_lambda"):
        finetune(model, env, tmp_path / "x", FinetuneConfig(gae_lambda=-0.1))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(SimagentsError, match="not empty"):
        finetune(model, env, tmp_path / "full", FinetuneConfig(iterations=1, episodes=1))
    assert not (tmp_path / "x").exists()


def test_cli_finetune_and_play(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from simagents.cli import main

    unit = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    tiny_model(obs_space=unit, act_space=unit).save(tmp_path / "run")
    out = tmp_path / "tuned"
    args = ["finetune", str(tmp_path / "run"), "--out", str(out), "--env", "simagents/Prophecy-v0"]
    assert main([*args, "--param", "horizon=2", "--iterations", "2", "--episodes", "2"]) == 0
    assert len(metrics(out)) == 2
    assert json.loads((out / "finetune.json").read_text())["env_kwargs"] == {"horizon": 2}
    assert main(["eval", str(out), "--agent", "rl", "--env", "simagents/Prophecy-v0", "--episodes", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--agent", "rl", "--episodes", "1"]) == 0  # the env it was tuned in
    played = json.loads(capsys.readouterr().out)
    assert (played["env"], played["env_kwargs"], played["mean_length"]) == (
        "simagents/Prophecy-v0",
        {"horizon": 2},
        2,
    )
    assert main([*args[:-1], "CartPole-v1", "--out", str(tmp_path / "other")]) == 2
    assert "does not match" in capsys.readouterr().err and not (tmp_path / "other").exists()


@pytest.mark.slow
def test_cartpole_finetune_beats_imitation_and_lowers_entropy(tmp_path: Path) -> None:
    from simagents.data.collect import CollectConfig, collect
    from simagents.model import SimulatorConfig
    from simagents.train import TrainConfig, train

    # Players of mixed, mostly low skill: imitation stays well below the 200-step cap.
    policy = "cartpole-eps0.3:0.25,cartpole-eps0.6:0.25,random:0.5"
    data = collect(
        CollectConfig(env="CartPole-v1", out=tmp_path / "data", policy=policy, episodes=150, seed=0)
    )
    model = SimulatorConfig(n_embd=64, n_layer=2)
    cfg = TrainConfig(
        data=(str(data),), out=tmp_path / "run", model=model, steps=400, eval_every=400, threads=1
    )
    simulator = Simulator.load(train(cfg, progress=False))
    # Episodes capped at 200 steps keep the test within minutes; the cap bounds both agents alike.
    env = gym.make("CartPole-v1", max_episode_steps=200)
    imitation = evaluate(make_agent("imitation", simulator), env, episodes=20, seed=500).summary()
    tuned = finetune(simulator, env, tmp_path / "rl", FinetuneConfig(iterations=15, episodes=8))
    rl = evaluate(make_agent("rl", tuned), env, episodes=20, seed=500).summary()
    curve = metrics(tmp_path / "rl")
    print(
        f"imitation {imitation['mean_return']:.1f}, rl {rl['mean_return']:.1f}; curve {curve[0]} -> {curve[-1]}"
    )
    assert rl["mean_return"] > imitation["mean_return"] + 20
    assert curve[-1]["rl/entropy"] < curve[0]["rl/entropy"]
    assert curve[-1]["rl/return"] > curve[0]["rl/return"]
