"""Data larger than memory: the memory-mapped cache must give the in-memory path's windows, batches
and statistics bit for bit, and must follow its sources."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import BOX_ACT, BOX_OBS, DISCRETE_ACT, random_episode
from simagents.data import flat as flat_module
from simagents.data import minari_io
from simagents.data.flat import MANIFEST, FlatEpisodes, prepare_cache
from simagents.data.minari_io import save_dataset
from simagents.data.windows import WindowSampler
from simagents.train import TrainConfig, fit_statistics, load_training_data, split_episodes, training_batch


def make_dataset(path, seed, act_space, blocks):
    rng = np.random.default_rng(seed)
    episodes = [
        replace(
            random_episode(rng, int(rng.integers(1, 12)), BOX_OBS, act_space), block=b, policy=f"p{b % 3}"
        )
        for b in blocks
    ]
    return save_dataset(episodes, path, observation_space=BOX_OBS, action_space=act_space)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # Several chunks even for a few episodes: the chunk seams must not show.
    monkeypatch.setattr(flat_module, "CHUNK_STEPS", 7)


@pytest.mark.parametrize("act_space", [DISCRETE_ACT, BOX_ACT])
def test_memmapped_windows_batches_and_statistics_equal_the_in_memory_ones(tmp_path, act_space):
    # Two datasets with blocks (pairs, one triple) and singletons: block ids are shifted apart.
    refs = (
        str(make_dataset(tmp_path / "a", 1, act_space, [0, 0, -1, 1, 1, 1, -1, 2, 2])),
        str(make_dataset(tmp_path / "b", 2, act_space, [-1, 0, 0, -1, 1, 1, -1, -1])),
    )
    episodes = load_training_data(refs).episodes
    dataset, flat = prepare_cache(refs, tmp_path / "cache")
    assert isinstance(flat.observations, np.memmap) and isinstance(flat.actions, np.memmap)
    train_idx, val_idx = split_episodes(len(episodes), 0.2, seed=3)
    assert len(val_idx) and flat.n_episodes == len(episodes)
    in_memory = WindowSampler([episodes[i] for i in train_idx], 5)
    mapped = WindowSampler.from_arrays(flat, 5, train_idx)
    assert in_memory.units is not None
    np.testing.assert_array_equal(mapped.units, in_memory.units)
    for step in range(4):
        cfg = TrainConfig(data=refs, out=tmp_path / "run", batch_size=9, seed=step)
        ours, theirs = training_batch(mapped, cfg, step), training_batch(in_memory, cfg, step)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    held = WindowSampler.from_arrays(flat, 5, val_idx)
    episode, start = np.arange(len(val_idx)), np.zeros(len(val_idx), dtype=np.int64)
    for key, value in held.windows(episode, start).items():
        np.testing.assert_array_equal(
            value, WindowSampler([episodes[i] for i in val_idx], 5).windows(episode, start)[key]
        )

    spaces = (dataset.observation_space, dataset.action_space)
    streamed = fit_statistics(flat, train_idx, *spaces)
    assert streamed == fit_statistics(FlatEpisodes.from_episodes(episodes), train_idx, *spaces)
    chosen = [episodes[i] for i in train_idx]
    obs = np.concatenate([e.observations for e in chosen]).astype(np.float64)
    np.testing.assert_allclose(streamed.obs_mean, obs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(streamed.obs_std, obs.std(0), rtol=1e-12)
    returns = np.concatenate([e.returns_to_go() for e in chosen])
    assert streamed.return_low < returns.min() and streamed.return_high > returns.max()
    assert streamed.reward_scale == np.abs(np.concatenate([e.rewards for e in chosen])).max()
    assert streamed.labels == sorted({e.policy for e in chosen})


def test_the_cache_is_reused_while_its_source_is_unchanged_and_rebuilt_when_it_changes(tmp_path, monkeypatch):
    ref = str(make_dataset(tmp_path / "a", 1, DISCRETE_ACT, [-1] * 6))
    cache = tmp_path / "cache"
    _, first = prepare_cache((ref,), cache)
    made = (cache / "observations.npy").stat().st_mtime_ns
    with monkeypatch.context() as patch:  # a fresh cache is read without scanning the dataset's episodes
        patch.setattr(minari_io, "_episode_lengths", lambda *_: pytest.fail("scanned the episodes"))
        _, again = prepare_cache((ref,), cache)
    assert (cache / "observations.npy").stat().st_mtime_ns == made  # reused, not converted again
    np.testing.assert_array_equal(again.observations, first.observations)

    # The dataset is rewritten with other episodes: the cache follows.
    import shutil

    shutil.rmtree(ref)
    make_dataset(tmp_path / "a", 2, DISCRETE_ACT, [-1] * 9)
    _, rebuilt = prepare_cache((ref,), cache)
    expected = FlatEpisodes.from_episodes(load_training_data((ref,)).episodes)
    assert rebuilt.n_episodes == 9
    np.testing.assert_array_equal(rebuilt.observations, expected.observations)

    # A conversion killed midway left its staging folder: the next one clears it away.
    (tmp_path / ".cache.partial-killed").mkdir()
    (cache / MANIFEST).unlink()
    _, rebuilt = prepare_cache((ref,), cache)
    assert not (tmp_path / ".cache.partial-killed").exists()

    # A damaged array file (a crash, a full disk) is converted again, not read.
    (cache / "rewards.npy").write_bytes((cache / "rewards.npy").read_bytes()[:-8])
    _, repaired = prepare_cache((ref,), cache)
    np.testing.assert_array_equal(repaired.rewards, expected.rewards)
    assert not list(tmp_path.glob(".cache*"))  # no staging folder or lock left behind
