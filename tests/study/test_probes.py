"""Linear probes on known answers: a linearly separable feature is read perfectly, noise at chance."""

import numpy as np

from helpers import BOX_OBS, DISCRETE_ACT, random_episode, tiny_model
from simagents.study.probes import ProbeFeatures, fit_probe, probe_features, probe_report


def blobs(rng: np.random.Generator, n: int, classes: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """n points in 8 dimensions; class k's mean is ``separation`` along axis k."""
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 8))
    x[np.arange(n), y] += separation
    return x, y


def test_a_separable_feature_is_read_perfectly_and_noise_at_chance() -> None:
    rng = np.random.default_rng(0)
    for classes in (2, 5):
        x, y = blobs(rng, 1200, classes, separation=12.0)
        scores = fit_probe(x[:800], y[:800], x[800:], y[800:])
        assert scores["accuracy"] > 0.99
        x, y = blobs(rng, 1200, classes, separation=0.0)  # the features say nothing of the class
        scores = fit_probe(x[:800], y[:800], x[800:], y[800:])
        assert abs(scores["accuracy"] - 1 / classes) < 0.08
        assert abs(scores["chance"] - 1 / classes) < 0.08


def test_the_report_splits_by_episode_and_compares_hidden_with_raw() -> None:
    rng = np.random.default_rng(1)
    n, episodes = 2000, 100
    episode = np.repeat(np.arange(episodes), n // episodes)
    target = episode % 3  # a property of the episode, as a player's identity is
    hidden = rng.normal(size=(n, 6))
    hidden[:, 0] += 6.0 * target  # the hidden state encodes it linearly
    raw = rng.normal(size=(n, 4))  # the raw features do not
    report = probe_report(ProbeFeatures(hidden, raw, episode), target, test_fraction=0.3)
    assert report["hidden"] > 0.97 and report["raw"] < 0.5
    assert report["test_steps"] == 600 and report["train_steps"] == 1400  # 30 whole episodes held out


def test_probe_features_cover_every_step_past_the_context() -> None:
    rng = np.random.default_rng(2)
    model = tiny_model(BOX_OBS, DISCRETE_ACT, context_len=4)
    episodes = [random_episode(rng, length, BOX_OBS, DISCRETE_ACT) for length in (3, 9)]
    features = probe_features(model, episodes)
    assert features.hidden.shape == (12, 32) and features.raw.shape == (12, 6)
    assert features.episode.tolist() == [0] * 3 + [1] * 9
    np.testing.assert_allclose(features.raw[3:, :3], episodes[1].observations[:9])
