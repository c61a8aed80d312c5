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
