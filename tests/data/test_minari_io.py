import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minari.data_collector.episode_buffer import EpisodeBuffer

from simagents.data.episodes import Episode, episode_from_arrays
from simagents.data.minari_io import (
    Dataset,
    check_spaces,
    dataset_header,
    load_dataset,
    save_dataset,
    stream_dataset,
)
from simagents.errors import SimagentsError

OBS = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
ACT = gym.spaces.Discrete(4)
FIELDS = ("observations", "actions", "rewards", "terminations", "truncations", "interventions")


@pytest.fixture(autouse=True)
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari-root"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def make_episode(rng: np.random.Generator, steps: int, policy: str = "", terminated: bool = True) -> Episode:
    return episode_from_arrays(
        observations=rng.standard_normal((steps + 1, 3)),
        actions=rng.integers(0, 4, steps),
        rewards=rng.standard_normal(steps),
        terminations=np.arange(steps) == steps - 1 if terminated else np.zeros(steps, bool),
        truncations=np.arange(steps) == steps - 1 if not terminated else np.zeros(steps, bool),
        observation_space=OBS,
        action_space=ACT,
        interventions=rng.random(steps) < 0.5,
        policy=policy,
        seed=int(rng.integers(1000)),
    )


def make_episodes(n: int = 4, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    labels = ["expert", "novice", "", "expert"]
    episodes = [make_episode(rng, 3 + 2 * i, labels[i % 4], terminated=i % 2 == 0) for i in range(n)]
    # Two episodes of one block (blocked interventional data), the rest outside any block.
    return [replace(e, block=7 if i in (1, 2) else -1) for i, e in enumerate(episodes)]


def save(episodes: list[Episode], path: Path, **kwargs: object) -> Path:
    return save_dataset(episodes, path, observation_space=OBS, action_space=ACT, **kwargs)  # type: ignore[arg-type]


def assert_same(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.policy, x.seed, x.block) == (y.policy, y.seed, y.block)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
            assert getattr(x, f).dtype == getattr(y, f).dtype, f


def user_dataset(dataset_id: str, buffers: list[EpisodeBuffer], **kwargs: object) -> Path:
    """A dataset made with minari directly, as a user would."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = minari.create_dataset_from_buffers(dataset_id, buffers, **kwargs)  # type: ignore[arg-type]
    return Path(ds.storage.data_path).parent


def user_buffers(obs_dim: int = 4, actions: np.ndarray | None = None, steps: int = 5) -> list[EpisodeBuffer]:
    rng = np.random.default_rng(0)
    return [
        EpisodeBuffer(
            seed=i,
            observations=rng.standard_normal((steps + 1, obs_dim)),  # float64, as many users write
            actions=rng.integers(0, 2, steps) if actions is None else actions,
            rewards=np.ones(steps),
            terminations=np.arange(steps) == steps - 1,
            truncations=np.zeros(steps, bool),
            infos={"extra": np.arange(steps + 1)},
        )
        for i in range(2)
    ]


# --------------------------------------------------------------------------- round trips


def test_round_trip_keeps_arrays_labels_interventions_and_env(tmp_path: Path) -> None:
    episodes = make_episodes()
    path = save(episodes, tmp_path / "ds", env_id="CartPole-v1", env_kwargs={"sutton_barto_reward": True})
    assert path == (tmp_path / "ds").absolute()
    assert sorted(p.name for p in (path / "data").iterdir()) == ["main_data.hdf5", "metadata.json"]
    dataset = load_dataset(path)
    assert_same(dataset.episodes, episodes)
    assert dataset.policies == ["", "expert", "novice"]
    assert dataset.n_steps == sum(len(ep) for ep in episodes)
    np.testing.assert_allclose(dataset.returns, [ep.episode_return for ep in episodes])
    assert dataset.observation_space == OBS and dataset.action_space == ACT
    assert (dataset.env_id, dataset.env_kwargs, dataset.path) == (
        "CartPole-v1",
        {"sutton_barto_reward": True},
        path,
    )
    # Nothing left behind beside the dataset.
    assert [p.name for p in tmp_path.iterdir() if p.name != "minari-root"] == ["ds"]


def test_the_header_names_the_env_and_spaces_without_reading_the_episodes(tmp_path: Path) -> None:
    path = save(
        make_episodes(), tmp_path / "ds", env_id="CartPole-v1", env_kwargs={"sutton_barto_reward": True}
    )
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/truncations"]  # the scan of the episodes would refuse the file
    header = dataset_header(path)
    assert (header.env_id, header.env_kwargs, header.path, len(header)) == (
        "CartPole-v1",
        {"sutton_barto_reward": True},
        path,
        0,
    )
    assert header.observation_space == OBS and header.action_space == ACT
    with pytest.raises(SimagentsError, match="missing 'truncations'"):
        stream_dataset(path)
    # What the header does check, it checks as the full read does.
    (path / "data" / "metadata.json").write_text("{")
    with pytest.raises(SimagentsError, match=r"metadata\.json is not valid JSON"):
        dataset_header(path)


def test_plain_minari_reads_our_datasets(tmp_path: Path, minari_root: Path) -> None:
    episodes = make_episodes()
    plain = minari.MinariDataset(save(episodes, tmp_path / "ds") / "data")
    assert plain.total_episodes == len(episodes)
    first = next(iter(plain))
    np.testing.assert_array_equal(first.actions, episodes[0].actions)
    # Saved inside the Minari root, it is addressable by id with minari and with us.
    save(episodes, minari_root / "simagents" / "toy-v0")
    assert minari.load_dataset("simagents/toy-v0").total_episodes == len(episodes)
    assert_same(load_dataset("simagents/toy-v0").episodes, episodes)
    assert_same(load_dataset("simagents/toy").episodes, episodes)  # no version: newest


def test_loads_a_dataset_made_with_minari_directly(minari_root: Path) -> None:
    env = gym.make("CartPole-v1")
    path = user_dataset("someone/cartpole-v1", user_buffers(), env=env)
    dataset = load_dataset("someone/cartpole-v1")
    assert dataset.path == path
    assert len(dataset) == 2 and dataset.policies == [""]
    assert dataset.env_id == "CartPole-v1"
    ep = dataset.episodes[0]
    assert ep.observations.dtype == np.float32 and ep.actions.dtype == np.int64
    assert not ep.interventions.any() and ep.seed == 0
    check_spaces(dataset, env)


def test_check_spaces_names_the_mismatch(tmp_path: Path) -> None:
    dataset = load_dataset(save(make_episodes(), tmp_path / "ds"))
    check_spaces(dataset, _SpacesEnv(OBS, ACT))
    with pytest.raises(SimagentsError, match=r"ds: its observation space .* does not match env CartPole-v1"):
        check_spaces(dataset, gym.make("CartPole-v1"))
    with pytest.raises(SimagentsError, match="action space"):
        check_spaces(dataset, _SpacesEnv(OBS, gym.spaces.Discrete(3)))


class _SpacesEnv(gym.Env):
    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    obs_shape=st.sampled_from([(), (2,), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_box_round_trip_property(tmp_path: Path, lengths: list[int], obs_shape: tuple, seed: int) -> None:
    rng = np.random.default_rng(seed)
    obs_space = gym.spaces.Box(-1, 1, shape=obs_shape, dtype=np.float32)
    act_space = gym.spaces.Box(-2, 2, shape=(2,), dtype=np.float32)
    episodes = [
        episode_from_arrays(
            rng.uniform(-1, 1, (n + 1, *obs_shape)),
            rng.uniform(-2, 2, (n, 2)),
            rng.standard_normal(n),
            np.arange(n) == n - 1,
            np.zeros(n, bool),
            obs_space,
            act_space,
            interventions=rng.random(n) < 0.3,
            policy=str(rng.integers(3)),
        )
        for n in lengths
    ]
    path = tmp_path / f"prop-{seed}-{len(lengths)}-{len(obs_shape)}"
    if path.exists():
        return  # hypothesis may repeat an example; the target must be new
    saved = save_dataset(episodes, path, observation_space=obs_space, action_space=act_space)
    assert_same(load_dataset(saved).episodes, episodes)


# --------------------------------------------------------------------------- user mistakes


def test_missing_path_says_where_it_looked(tmp_path: Path, minari_root: Path) -> None:
    with pytest.raises(SimagentsError, match="not found") as info:
        load_dataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    with pytest.raises(SimagentsError, match="not found") as info:
        load_dataset("simagents/nope-v0")
    assert str(minari_root / "simagents" / "nope-v0") in str(info.value)


def test_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimagentsError, match=r"is not a Minari dataset: .*metadata\.json is missing"):
        load_dataset(tmp_path / "empty")


def test_truncated_hdf5_is_reported(tmp_path: Path) -> None:
    path = save(make_episodes(), tmp_path / "ds")
    main = path / "data" / "main_data.hdf5"
    os.truncate(main, main.stat().st_size // 2)
    with pytest.raises(SimagentsError, match=r"main_data\.hdf5.*truncated or corrupt"):
        load_dataset(path)


def test_nan_rewards_are_reported(tmp_path: Path) -> None:
    path = save(make_episodes(), tmp_path / "ds")
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        f["episode_2/rewards"][1] = np.nan
    with pytest.raises(SimagentsError, match=r"main_data\.hdf5 episode 2: rewards contains NaN"):
        load_dataset(path)


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = save(make_episodes(), tmp_path / "ds")
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/truncations"]
    with pytest.raises(SimagentsError, match=r"main_data\.hdf5 episode 1: missing 'truncations'"):
        load_dataset(path)


def test_action_shape_that_does_not_match_the_space(minari_root: Path) -> None:
    bad_actions = np.zeros((5, 2), dtype=np.int64)  # the space says one integer per step
    user_dataset(
        "someone/bad-v0",
        user_buffers(actions=bad_actions),
        observation_space=gym.spaces.Box(-1, 1, (4,)),
        action_space=gym.spaces.Discrete(2),
    )
    with pytest.raises(SimagentsError, match=r"main_data\.hdf5 episode 0: actions has shape \(5, 2\)"):
        load_dataset("someone/bad-v0")


def test_empty_episode_is_reported(tmp_path: Path) -> None:
    path = save(make_episodes(), tmp_path / "ds")
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        group = f["episode_3"]
        for key, shape, dtype in [
            ("observations", (1, 3), np.float32),
            ("actions", (0,), np.int64),
            ("rewards", (0,), np.float32),
            ("terminations", (0,), bool),
            ("truncations", (0,), bool),
        ]:
            del group[key]
            group.create_dataset(key, data=np.zeros(shape, dtype))
    with pytest.raises(SimagentsError, match=r"main_data\.hdf5 episode 3: episode has no steps"):
        load_dataset(path)


def test_unsupported_space_is_reported() -> None:
    space = gym.spaces.Dict({"a": gym.spaces.Discrete(2)})
    buffers = [
        EpisodeBuffer(
            observations={"a": np.zeros(3, np.int64)},
            actions=np.zeros(2, np.int64),
            rewards=np.zeros(2),
            terminations=np.array([False, True]),
            truncations=np.zeros(2, bool),
        )
    ]
    user_dataset("someone/dict-v0", buffers, observation_space=space, action_space=gym.spaces.Discrete(2))
    with pytest.raises(SimagentsError, match=r"metadata\.json: observation space Dict.* not supported"):
        load_dataset("someone/dict-v0")


def test_corrupt_metadata_is_reported(tmp_path: Path) -> None:
    path = save(make_episodes(), tmp_path / "ds")
    (path / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(SimagentsError, match=r"metadata\.json is not valid JSON"):
        load_dataset(path)


def test_overwrite_is_refused_and_the_original_kept(tmp_path: Path) -> None:
    episodes = make_episodes()
    path = save(episodes, tmp_path / "ds")
    before = {p: p.read_bytes() for p in (path / "data").iterdir()}
    with pytest.raises(SimagentsError, match=r"ds already exists.*another --out.*delete"):
        save(make_episodes(seed=1), tmp_path / "ds")
    assert {p: p.read_bytes() for p in (path / "data").iterdir()} == before
    assert_same(load_dataset(path).episodes, episodes)
    (tmp_path / "empty").mkdir()
    save(episodes, tmp_path / "empty")  # an empty folder is fine to fill


def test_saving_bad_episodes_leaves_nothing_behind(tmp_path: Path) -> None:
    episodes = make_episodes()
    episodes[1].rewards[0] = np.inf
    with pytest.raises(SimagentsError, match="episode 1: rewards contains NaN or inf"):
        save(episodes, tmp_path / "ds")
    with pytest.raises(SimagentsError, match="no episodes"):
        save([], tmp_path / "ds")
    with pytest.raises(SimagentsError, match="not JSON-serialisable"):
        save(make_episodes(), tmp_path / "ds", env_kwargs={"f": object()})
    assert [p.name for p in tmp_path.iterdir() if p.name != "minari-root"] == []


def test_interrupted_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(minari, "create_dataset_from_buffers", crash)
    with pytest.raises(KeyboardInterrupt):
        save(make_episodes(), tmp_path / "ds")
    assert [p.name for p in tmp_path.iterdir() if p.name != "minari-root"] == []


def test_labels_table_must_match(tmp_path: Path) -> None:
    path = save(make_episodes(), tmp_path / "ds")
    meta_file = path / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["simagents"]["policies"] = ["only-one"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SimagentsError, match="policy_id"):
        load_dataset(path)


def test_dataset_is_frozen() -> None:
    dataset = Dataset([], OBS, ACT)
    with pytest.raises(AttributeError):
        dataset.env_id = "x"  # type: ignore[misc]
