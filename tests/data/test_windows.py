import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import BOX_ACT, BOX_OBS, DISCRETE_ACT, DISCRETE_OBS, random_episode
from simagents.data.windows import WindowSampler


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    context_len=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    discrete=st.booleans(),
)
def test_every_window_lies_inside_one_episode_and_padding_is_masked(lengths, context_len, seed, discrete):
    rng = np.random.default_rng(seed)
    obs_space, act_space = (DISCRETE_OBS, DISCRETE_ACT) if discrete else (BOX_OBS, BOX_ACT)
    episodes = [random_episode(rng, n, obs_space, act_space) for n in lengths]
    sampler = WindowSampler(episodes, context_len)
    w = sampler.sample(rng, batch_size=16)
    assert w["observations"].shape[:2] == (16, context_len)
    for b in range(16):
        episode = episodes[w["episode"][b]]
        start = int(w["start"][b])
        assert 0 <= start < len(episode)
        valid = int(w["mask"][b].sum())
        # Valid steps come first, run consecutively from start, and stop at the episode's end.
        assert w["mask"][b, :valid].all() and not w["mask"][b, valid:].any()
        assert valid == min(context_len, len(episode) - start)
        steps = np.arange(start, start + valid)
        assert (w["timesteps"][b, :valid] == steps).all()
        np.testing.assert_array_equal(w["observations"][b, :valid], episode.observations[steps])
        np.testing.assert_array_equal(w["next_observations"][b, :valid], episode.observations[steps + 1])
        np.testing.assert_array_equal(w["actions"][b, :valid], episode.actions[steps])
        np.testing.assert_array_equal(w["rewards"][b, :valid], episode.rewards[steps])
        np.testing.assert_allclose(w["returns_to_go"][b, :valid], episode.returns_to_go()[steps], rtol=1e-6)
        np.testing.assert_array_equal(w["interventions"][b, :valid], episode.interventions[steps])
        # Padding carries nothing.
        for key in ("observations", "actions", "rewards", "returns_to_go", "timesteps", "interventions"):
            assert not np.any(w[key][b, valid:])


def test_sampling_is_proportional_to_episode_length():
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, n, BOX_OBS, DISCRETE_ACT) for n in (10, 30)]
    w = WindowSampler(episodes, 4).sample(np.random.default_rng(1), batch_size=4000)
    share_long = np.mean(w["episode"] == 1)
    assert abs(share_long - 0.75) < 0.03


def blocked_episodes(rng: np.random.Generator, blocks: list[int], lengths: list[int]) -> list:
    from dataclasses import replace

    return [
        replace(random_episode(rng, n, BOX_OBS, DISCRETE_ACT), block=b)
        for b, n in zip(blocks, lengths, strict=True)
    ]


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.lists(st.integers(-1, 3), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
    batch_size=st.integers(1, 40),
)
def test_a_block_is_drawn_whole_and_from_one_step(blocks, seed, batch_size):
    rng = np.random.default_rng(seed)
    episodes = blocked_episodes(rng, blocks, [int(n) for n in rng.integers(1, 8, size=len(blocks))])
    w = WindowSampler(episodes, 3).sample(rng, batch_size=batch_size)
    assert len(w["episode"]) == batch_size
    members = {b: [i for i, e in enumerate(episodes) if e.block == b] for b in set(blocks) if b >= 0}
    # Walk the batch: a block's members appear consecutively (all of them, except when the batch
    # ends), each from the unit's start clipped to its own length.
    i = 0
    while i < batch_size:
        block = episodes[w["episode"][i]].block
        if block < 0:
            i += 1
            continue
        size = len(members[block])
        got = list(w["episode"][i : i + size])
        assert got == members[block][: len(got)]
        assert len(got) == size or i + len(got) == batch_size
        i += len(got)


def test_block_episodes_share_batches_and_plain_sampling_is_unchanged():
    rng = np.random.default_rng(0)
    lengths = np.array([3, 5, 2, 7, 4])
    plain = blocked_episodes(rng, [-1] * 5, list(lengths))
    w = WindowSampler(plain, 4).sample(np.random.default_rng(5), batch_size=64)
    # Without blocks: the per-episode draw, one episode then one start per window.
    draw = np.random.default_rng(5)
    episode = draw.choice(5, size=64, p=lengths / lengths.sum())
    np.testing.assert_array_equal(w["episode"], episode)
    np.testing.assert_array_equal(w["start"], (draw.random(64) * lengths[episode]).astype(np.int64))
    pairs = blocked_episodes(rng, [0, 0, 1, 1, 2, 2], [1] * 6)
    w = WindowSampler(pairs, 1).sample(np.random.default_rng(3), batch_size=600)
    # Even batch, blocks of two: every window's partner is beside it.
    ep = w["episode"].reshape(-1, 2)
    assert (ep[:, 0] // 2 == ep[:, 1] // 2).all() and (ep[:, 0] != ep[:, 1]).all()
    assert abs(np.mean(ep[:, 0] // 2 == 1) - 1 / 3) < 0.06


def test_draw_numbers_the_blocks_so_dropout_can_keep_pairs_together():
    from simagents.train import TrainConfig, training_batch

    rng = np.random.default_rng(0)
    pairs = blocked_episodes(rng, [0, 0, 1, 1, 2, 2, -1, -1], [1] * 8)
    sampler = WindowSampler(pairs, 1)
    w = sampler.sample(np.random.default_rng(3), batch_size=300)
    blocked = w["episode"] < 6
    for d in np.unique(w["draw"][blocked]):
        members = w["episode"][w["draw"] == d]
        assert len(members) <= 2 and len(set(members // 2)) == 1
    assert len(np.unique(w["draw"][~blocked])) == int((~blocked).sum())  # singletons: one draw each
    cfg = TrainConfig(data=("unused",), out="unused", batch_size=300, return_dropout=0.5)
    batch = training_batch(sampler, cfg, step=7)
    known, draw = batch["return_known"].numpy(), batch["draw"].numpy()
    for d in np.unique(draw):  # one dropout coin per draw: partners hide their returns together
        assert len(set(known[draw == d])) == 1
    assert 0.3 < known.mean() < 0.7


def test_trimming_the_padding_no_window_reaches_leaves_every_loss_unchanged():
    import torch

    from helpers import tiny_model
    from simagents.train import to_batch, trim_padding

    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, n, BOX_OBS, DISCRETE_ACT) for n in (2, 3, 5, 4)]
    windows = WindowSampler(episodes, 12).sample(rng, batch_size=8)
    trimmed = trim_padding(windows)
    longest = int(windows["mask"].sum(1).max())
    assert longest < 12 and trimmed["observations"].shape[1] == longest == trimmed["mask"].shape[1]
    assert trimmed["episode"].shape == (8,)
    model = tiny_model(BOX_OBS, DISCRETE_ACT, context_len=12)
    known = np.arange(8) % 2 == 0
    full, short = model.loss(to_batch(windows, known)), model.loss(to_batch(trimmed, known))
    for head in full:
        torch.testing.assert_close(short[head], full[head], rtol=1e-5, atol=1e-6)
    whole = WindowSampler(episodes, 2).sample(rng, batch_size=8)  # every window full: nothing to trim
    assert trim_padding(whole) is whole


def test_length_grouping_batches_a_groups_windows_by_length_and_keeps_them_all():
    from simagents.train import TrainConfig, training_batch

    rng = np.random.default_rng(1)
    episodes = [random_episode(rng, n, BOX_OBS, DISCRETE_ACT) for n in range(1, 21)]
    sampler = WindowSampler(episodes, 20)
    plain = TrainConfig(data=("unused",), out="unused", batch_size=16)
    grouped = TrainConfig(data=("unused",), out="unused", batch_size=16, length_grouping=4)

    def padded_length(cfg: TrainConfig, steps: range) -> float:
        return float(np.mean([training_batch(sampler, cfg, s)["mask"].shape[1] for s in steps]))

    assert padded_length(grouped, range(40)) < 0.8 * padded_length(plain, range(40))
    # Steps 4..7 share one draw: together they hold its 64 windows, each once, in four batches.
    batches = [training_batch(sampler, grouped, s) for s in range(4, 8)]
    drawn = sampler.sample(np.random.default_rng([0, 1, 4]), 64)
    key = lambda e, s: sorted(zip(e.tolist(), s.tolist(), strict=True))  # noqa: E731
    together = key(
        np.concatenate([b["episode"].numpy() for b in batches]),
        np.concatenate([b["start"].numpy() for b in batches]),
    )
    assert together == key(drawn["episode"], drawn["start"])
    lengths = sorted((b["mask"].sum(1).min().item(), b["mask"].sum(1).max().item()) for b in batches)
    assert all(low_max <= high_min for (_, low_max), (high_min, _) in itertools.pairwise(lengths))
    again = training_batch(sampler, grouped, 5)
    assert all(np.array_equal(again[k], batches[1][k]) for k in again)  # a pure function of (seed, step)


def test_length_grouping_refuses_data_whose_blocks_must_share_a_batch():
    import pytest

    from simagents.errors import SimagentsError
    from simagents.train import TrainConfig, training_batch

    rng = np.random.default_rng(0)
    sampler = WindowSampler(blocked_episodes(rng, [0, 0, -1, -1], [2] * 4), 4)
    cfg = TrainConfig(data=("unused",), out="unused", batch_size=4, length_grouping=2)
    with pytest.raises(SimagentsError, match="length-grouping 1"):
        training_batch(sampler, cfg, step=0)


def test_a_share_of_windows_begins_at_the_first_step_and_share_zero_changes_nothing():
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, n, BOX_OBS, BOX_ACT) for n in (20, 30, 40)]
    sampler = WindowSampler(episodes, 8)
    plain = sampler.draw(np.random.default_rng(5), 4000)
    for share in (0.0, 0.3, 1.0):
        episode, start = sampler.draw(np.random.default_rng(5), 4000, first_step_share=share)
        np.testing.assert_array_equal(episode, plain[0])  # the same episodes: only starts move
        moved = start != plain[1]
        assert (start[moved] == 0).all()
        at_first = (start == 0).mean()
        # episodes drawn by length, starts uniform: step 0 with probability episodes / steps
        expected = share + (1 - share) * 3 / 90
        assert abs(at_first - expected) < 0.025, share
    windows = sampler.sample(np.random.default_rng(5), 500, first_step_share=1.0)
    assert (windows["start"] == 0).all() and (windows["timesteps"][:, 0] == 0).all()
