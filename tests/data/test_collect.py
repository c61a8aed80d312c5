from pathlib import Path

import numpy as np
import pytest

from simagents.data.collect import CollectConfig, collect, collect_episodes, make_env
from simagents.data.episodes import Episode
from simagents.data.minari_io import load_dataset
from simagents.errors import SimagentsError


@pytest.fixture(autouse=True)
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari-root"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def config(tmp_path: Path, **overrides: object) -> CollectConfig:
    values: dict = {"env": "CartPole-v1", "out": tmp_path / "ds", "episodes": 6, "seed": 0}
    values.update(overrides)
    return CollectConfig(**values)


def same(a: list[Episode], b: list[Episode]) -> bool:
    fields = ("observations", "actions", "rewards", "terminations", "truncations", "interventions")
    return len(a) == len(b) and all(
        x.policy == y.policy
        and x.seed == y.seed
        and all(np.array_equal(getattr(x, f), getattr(y, f)) for f in fields)
        for x, y in zip(a, b, strict=True)
    )


def test_same_seed_same_data_and_different_seed_different_data(tmp_path: Path) -> None:
    first = collect_episodes(config(tmp_path, seed=3))
    second = collect_episodes(config(tmp_path, seed=3))
    other = collect_episodes(config(tmp_path, seed=4))
    assert same(first, second)
    assert not same(first, other)


def test_episodes_follow_the_contract(tmp_path: Path) -> None:
    episodes = collect_episodes(config(tmp_path, policy="cartpole-eps0.3:1,random:1", episodes=8))
    env = make_env("CartPole-v1")
    for ep in episodes:
        ep.validate(env.observation_space, env.action_space)
        assert ep.policy in {"cartpole-eps0.3", "random"}
        assert ep.observations.dtype == np.float32 and ep.actions.dtype == np.int64
        assert ep.terminations[-1] or ep.truncations[-1]
        assert not ep.interventions.any()
    assert len({ep.seed for ep in episodes}) == len(episodes)


def test_intervene_flags_every_action(tmp_path: Path) -> None:
    episodes = collect_episodes(config(tmp_path, intervene=True, episodes=3))
    assert all(ep.interventions.all() for ep in episodes)


def test_max_steps_truncates(tmp_path: Path) -> None:
    episodes = collect_episodes(config(tmp_path, policy="cartpole-eps0.0", max_steps=25, episodes=2))
    for ep in episodes:
        assert len(ep) == 25
        assert ep.truncations[-1] and not ep.terminations[-1]


def test_mixed_cartpole_data_spans_a_wide_range_of_returns(tmp_path: Path) -> None:
    returns = np.array([ep.episode_return for ep in collect_episodes(config(tmp_path, episodes=60))])
    assert returns.min() <= 30
    assert returns.max() == 500
    middle = np.mean((returns > 60) & (returns < 450))
    assert middle >= 0.15, returns  # not just experts and failures: a broad spread in between
    assert np.std(returns) > 120


def test_collect_writes_a_dataset_that_loads(tmp_path: Path) -> None:
    cfg = config(tmp_path, episodes=4, env_kwargs={"sutton_barto_reward": True})
    path = collect(cfg)
    dataset = load_dataset(path)
    assert path == cfg.out.absolute()
    assert same(dataset.episodes, collect_episodes(cfg))
    assert dataset.env_id == "CartPole-v1"
    assert dataset.env_kwargs == {"sutton_barto_reward": True}


def test_collect_refuses_an_existing_output_before_collecting(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SimagentsError, match="already exists"):
        collect(config(tmp_path, episodes=100_000))  # would take ages if it collected first
    assert (out / "keep.txt").read_text() == "mine"


def test_box_actions_and_discrete_observations_round_trip(tmp_path: Path) -> None:
    for env_id, kwargs in (("Pendulum-v1", {}), ("FrozenLake-v1", {"is_slippery": False})):
        cfg = config(
            tmp_path, env=env_id, out=tmp_path / env_id, policy="random", max_steps=15, env_kwargs=kwargs
        )
        assert same(load_dataset(collect(cfg)).episodes, collect_episodes(cfg))


def test_unknown_env_and_bad_kwargs(tmp_path: Path) -> None:
    with pytest.raises(SimagentsError, match=r"unknown env 'CartPole-v9'.*pprint_registry"):
        collect_episodes(config(tmp_path, env="CartPole-v9"))
    with pytest.raises(SimagentsError, match="rejected env kwargs"):
        collect_episodes(config(tmp_path, env_kwargs={"no_such_option": 1}))
    with pytest.raises(SimagentsError, match="episodes must be at least 1"):
        collect_episodes(config(tmp_path, episodes=0))
    with pytest.raises(SimagentsError, match="unknown policy"):
        collect_episodes(config(tmp_path, policy="expert"))
