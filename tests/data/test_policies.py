import gymnasium as gym
import numpy as np
import pytest

from simagents.data.policies import (
    CartPoleController,
    Policy,
    RandomPolicy,
    make_policy,
    parse_population,
    valid_policy_names,
)
from simagents.errors import SimagentsError


def mean_return(env: gym.Env, name: str, episodes: int, seed: int = 0) -> float:
    returns = []
    for i in range(episodes):
        policy = make_policy(name, env, np.random.default_rng([seed, i]))
        obs, _ = env.reset(seed=seed * 1000 + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def test_cartpole_expert_balances_and_random_does_not() -> None:
    env = gym.make("CartPole-v1")
    assert mean_return(env, "cartpole-eps0.0", 5) >= 450
    assert mean_return(env, "random", 5) < 50


def test_noise_levels_are_graded() -> None:
    env = gym.make("CartPole-v1")
    means = [mean_return(env, f"cartpole-eps{e}", 8) for e in ("0.0", "0.45", "0.6")]
    assert means[0] > means[1] > means[2]


def test_policies_follow_the_protocol_and_are_deterministic() -> None:
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    for name in ("random", "cartpole-eps0.3"):
        a = make_policy(name, env, np.random.default_rng(1))
        b = make_policy(name, env, np.random.default_rng(1))
        assert isinstance(a, Policy)
        assert a.name == name
        assert [a(obs) for _ in range(20)] == [b(obs) for _ in range(20)]
    assert isinstance(make_policy("cartpole-eps0.25", env, np.random.default_rng(0)), CartPoleController)


def test_random_policy_on_box_actions_stays_in_bounds() -> None:
    space = gym.spaces.Box(
        low=np.array([-2.0, 0.0], np.float32), high=np.array([2.0, np.inf], np.float32), dtype=np.float32
    )
    policy = RandomPolicy(space, np.random.default_rng(0))
    actions = np.array([policy(None) for _ in range(200)])
    assert actions.dtype == np.float32
    assert np.all((actions[:, 0] >= -2) & (actions[:, 0] <= 2))
    assert np.all(np.isfinite(actions))


def test_random_policy_rejects_unsupported_spaces() -> None:
    with pytest.raises(SimagentsError, match="Discrete and Box"):
        RandomPolicy(gym.spaces.MultiDiscrete([2, 3]), np.random.default_rng(0))


def test_unknown_policy_lists_valid_names() -> None:
    env = gym.make("CartPole-v1")
    with pytest.raises(SimagentsError, match="unknown policy 'cartpole-expert'") as info:
        make_policy("cartpole-expert", env, np.random.default_rng(0))
    for name in valid_policy_names(env):
        assert name in str(info.value)
    with pytest.raises(SimagentsError, match=r"\[0, 1\]"):
        make_policy("cartpole-eps1.5", env, np.random.default_rng(0))
    # CartPole experts do not apply to other envs.
    with pytest.raises(SimagentsError, match="unknown policy"):
        make_policy("cartpole-eps0.0", gym.make("Acrobot-v1"), np.random.default_rng(0))


def test_parse_population() -> None:
    env = gym.make("CartPole-v1")
    assert parse_population("random", env) == [("random", 1.0)]
    pop = dict(parse_population("cartpole-eps0.0:3, random:1", env))
    assert pop == {"cartpole-eps0.0": 0.75, "random": 0.25}
    mixed = dict(parse_population("mixed", env))
    assert pytest.approx(sum(mixed.values())) == 1.0
    assert "random" in mixed and "cartpole-eps0.0" in mixed and len(mixed) >= 4
    for bad, message in [
        ("random:-1", "positive"),
        ("random:abc", "not a number"),
        ("random,,cartpole-eps0.0", "empty entry"),
        ("mixed,random", "cannot be part"),
        ("expert:1", "unknown policy 'expert'"),
    ]:
        with pytest.raises(SimagentsError, match=message):
            parse_population(bad, env)


def test_mixed_without_scripted_policies_falls_back_to_random() -> None:
    env = gym.make("Pendulum-v1")
    with pytest.warns(UserWarning, match="'mixed' means 'random'"):
        assert parse_population("mixed", env) == [("random", 1.0)]
