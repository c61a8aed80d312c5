from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simagents.data.collect import CollectConfig, collect, collect_episodes, make_env
from simagents.data.minari_io import load_dataset
from simagents.data.policies import make_policy, parse_population, valid_policy_names
from simagents.envs.minigrid import CELL_KINDS, ENV_ID, FORWARD, LEFT, PICKUP, expert_action
from simagents.errors import SimagentsError


def run_policy(env: gym.Env, name: str, seed: int) -> tuple[float, int, bool]:
    """Return, length and whether the episode ended at the goal."""
    policy = make_policy(name, env, np.random.default_rng([seed, 1]))
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total, steps = total + float(reward), steps + 1
        if terminated or truncated:
            return total, steps, bool(terminated)


def test_env_passes_gymnasium_checker() -> None:
    check_env(make_env(ENV_ID).unwrapped, skip_render_check=True)


def test_observation_is_one_hot_and_shows_direction_and_the_carried_key() -> None:
    env = make_env(ENV_ID)
    world = env.unwrapped.minigrid
    obs, _ = env.reset(seed=3)
    view, kinds = world.agent_view_size, len(CELL_KINDS)
    cells = obs[: view * view * kinds].reshape(view * view, kinds)
    assert obs.dtype == np.float32 and (cells.sum(1) == 1).all()
    assert np.argmax(obs[view * view * kinds :]) == world.agent_dir
    obs, *_ = env.step(LEFT)
    assert np.argmax(obs[view * view * kinds :]) == world.agent_dir
    # The agent's own cell is the bottom middle of its view ([x, y] order); it shows what it carries.
    own_cell = (view // 2) * view + view - 1
    key = own_cell * kinds + CELL_KINDS.index("key")
    assert obs[key] == 0
    for _ in range(30):
        action = expert_action(world)
        obs, *_ = env.step(action)
        if action == PICKUP:
            break
    assert world.carrying is not None and obs[key] == 1


def test_view_size_sets_the_observation_size() -> None:
    small, large = make_env(ENV_ID, {"view": 3}), make_env(ENV_ID, {"view": 7})
    assert small.observation_space.shape == (9 * len(CELL_KINDS) + 4,)
    assert large.observation_space.shape == (49 * len(CELL_KINDS) + 4,)
    assert large.reset(seed=0)[0].shape == large.observation_space.shape


@pytest.mark.parametrize("size", [5, 6])
def test_expert_solves_every_layout(size: int) -> None:
    env = make_env(ENV_ID, {"size": size})
    limit = env.unwrapped.minigrid.max_steps
    for seed in range(20):
        total, steps, solved = run_policy(env, "doorkey-eps0.0", seed)
        assert solved and steps < limit / 2 and total > 0, (size, seed, steps)


def test_noise_lowers_the_return() -> None:
    env = make_env(ENV_ID)
    means = {
        name: np.mean([run_policy(env, name, seed)[0] for seed in range(12)])
        for name in ("doorkey-eps0.0", "doorkey-eps0.6", "random")
    }
    assert means["doorkey-eps0.0"] > means["doorkey-eps0.6"] > means["random"]


def test_expert_replans_after_a_random_step() -> None:
    # Turn away from the plan; the expert must still reach the goal.
    env = make_env(ENV_ID)
    env.reset(seed=5)
    world = env.unwrapped.minigrid
    first = expert_action(world)
    env.step(LEFT if first != LEFT else FORWARD)
    for _ in range(60):
        _, reward, terminated, truncated, _ = env.step(expert_action(world))
        if terminated or truncated:
            break
    assert terminated and reward > 0


def test_policy_names_and_mixed_population() -> None:
    env = make_env(ENV_ID)
    assert "doorkey-eps0.0" in valid_policy_names(env)
    names = [name for name, _ in parse_population("mixed", env)]
    assert "random" in names and "doorkey-eps0.0" in names
    with pytest.raises(SimagentsError, match="must be in"):
        make_policy("doorkey-eps1.5", env, np.random.default_rng(0))
    with pytest.raises(SimagentsError, match="doorkey-eps"):
        make_policy("cartpole-eps0.1", env, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"size": 3}, "size"), ({"view": 4}, "view"), ({"max_steps": 0}, "max_steps")]
)
def test_bad_parameters_are_user_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(SimagentsError, match=field):
        make_env(ENV_ID, kwargs)


def test_collection_is_deterministic_under_a_seed(tmp_path: Path) -> None:
    def arrays(seed: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        cfg = CollectConfig(env=ENV_ID, out=tmp_path / "unused", policy="mixed", episodes=8, seed=seed)
        return [(e.policy, e.observations, e.actions, e.rewards) for e in collect_episodes(cfg)]

    first, again, other = arrays(1), arrays(1), arrays(2)
    for a, b in zip(first, again, strict=True):
        assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:], strict=True))
    assert any(
        a[0] != b[0] or a[2].shape != b[2].shape or not np.array_equal(a[2], b[2])
        for a, b in zip(first, other, strict=True)
    )


def test_collect_writes_a_minari_dataset(tmp_path: Path) -> None:
    out = collect(CollectConfig(env=ENV_ID, out=tmp_path / "doorkey", policy="mixed", episodes=6, seed=0))
    dataset = load_dataset(out)
    assert len(dataset.episodes) == 6
    assert dataset.episodes[0].observations.shape[1] == make_env(ENV_ID).observation_space.shape[0]
