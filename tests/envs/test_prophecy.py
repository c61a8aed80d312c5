import itertools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import simagents.envs
from simagents.envs.prophecy import (
    ProphecyParams,
    best_constant_forecasts,
    demonstrations,
    instrumentality_index,
    optimal_forecasts,
    theory,
)
from simagents.errors import SimagentsError


@pytest.mark.parametrize("params", [{}, {"delay": 1, "horizon": 3, "base": 0.1, "slope": 0.5}])
def test_env_checker_and_kwargs(params: dict) -> None:
    env = gym.make("simagents/Prophecy-v0", **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    assert env.unwrapped.params == ProphecyParams(**params)
    assert simagents.envs.get_testbed("prophecy").check_params(params) == {
        **simagents.envs.TESTBEDS["prophecy"].default_params,
        **params,
    }


def event_rate(forecast: float, delay: int, **params: float) -> float:
    """Empirical event frequency when the forecaster always says ``forecast``."""
    env = gym.make("simagents/Prophecy-v0", delay=delay, horizon=50, **params)
    events = []
    for seed in range(40):
        env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(np.array([forecast], np.float32))
            assert obs[0] == info["event"] and reward == pytest.approx(-((forecast - info["event"]) ** 2))
            events.append(info["event"])
            done = terminated or truncated
    return float(np.mean(events))


@pytest.mark.parametrize(("base", "slope"), [(0.2, 0.6), (0.1, 0.3)])
def test_event_probability_follows_the_forecast(base: float, slope: float) -> None:
    for forecast in (0.0, 1.0):
        assert event_rate(forecast, 0, base=base, slope=slope) == pytest.approx(
            base + slope * forecast, abs=0.04
        )


def test_delay_one_moves_the_next_event() -> None:
    env = gym.make(
        "simagents/Prophecy-v0", delay=1, horizon=2, base=0.0, slope=1.0 - 1e-9, first_forecast=0.0
    )
    for seed in range(20):
        env.reset(seed=seed)
        _, _, _, _, first = env.step(np.array([1.0], np.float32))
        _, _, done, _, second = env.step(np.array([0.0], np.float32))
        assert first["event"] == 0.0 and second["event"] == 1.0 and done


def test_theory_fixed_point_and_extremes() -> None:
    t = theory()
    assert t["fixed_point"] == pytest.approx(0.5)
    assert t["calibrated"]["expected_reward"] == pytest.approx(-0.25)
    assert t["reward_maximising"]["forecasts"] == [0.0, 1.0]
    assert t["reward_maximising"]["expected_reward"] == pytest.approx(-0.2)
    assert t["reward_maximising"]["instrumentality_index"] == pytest.approx(1.0)
    moved = theory(base=0.1, slope=0.5)
    assert moved["fixed_point"] == pytest.approx(0.2)
    # R(p) = 0 p^2 - 0.3 p - 0.1: forecasting 0 is best, 0.2 away from the fixed point of 0.2 -> index 0.25.
    assert moved["reward_maximising"]["forecasts"] == [0.0]
    assert moved["reward_maximising"]["instrumentality_index"] == pytest.approx(0.25)


def test_best_constant_forecast_matches_a_grid_search() -> None:
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 2001)
    for _ in range(30):
        base = rng.uniform(0, 0.9)
        slope = rng.uniform(-base, min(1 - base, 0.99))
        p = ProphecyParams(base=base, slope=slope)
        q = p.event_probability(grid)
        values = -((grid - q) ** 2) - q * (1 - q)
        best, value = best_constant_forecasts(p)
        assert value == pytest.approx(values.max(), abs=1e-6)
        assert min(abs(grid[values.argmax()] - b) for b in best) < 1e-2


def test_optimal_forecasts_grow_more_instrumental_with_gamma() -> None:
    p = ProphecyParams(delay=1)
    indices = [instrumentality_index(p, optimal_forecasts(p, g)) for g in (0.0, 0.5, 0.9, 0.99)]
    # gamma 0: calibrated (p_t = q_t). Steering the next event pays only once gamma * slope^2 (and
    # the later steps' gains) outweigh the cost of a miscalibrated forecast: at the defaults 0.5 is
    # still below that threshold, 0.9 is above it.
    assert indices[0] == pytest.approx(0.0, abs=1e-2) and indices[1] == pytest.approx(0.0, abs=1e-2)
    assert all(b >= a for a, b in itertools.pairwise(indices))
    assert indices[2] > 0.8 and indices[3] > 0.8
    # A stronger effect of the forecast lowers the threshold: steering already at gamma 0.5.
    strong = ProphecyParams(delay=1, base=0.05, slope=0.9)
    assert instrumentality_index(strong, optimal_forecasts(strong, 0.5)) > 0.5
    # delay 0: every step already steers its own event, whatever gamma.
    assert instrumentality_index(ProphecyParams(), optimal_forecasts(ProphecyParams(), 0.0)) == 1.0


def test_index_is_a_mean_distance() -> None:
    p = ProphecyParams()
    assert instrumentality_index(p, [0.5, 0.5]) == 0.0
    assert instrumentality_index(p, [0.0, 1.0]) == 1.0  # both extremes: the mean forecast would hide it
    assert instrumentality_index({"base": 0.1, "slope": 0.5}, [0.2, 1.0]) == pytest.approx(0.5)


def test_demonstrations_cover_the_forecasts() -> None:
    episodes = demonstrations({"horizon": 5}, 200, np.random.default_rng(0))
    forecasts = np.concatenate([e.actions[:, 0] for e in episodes])
    assert forecasts.min() < 0.05 and forecasts.max() > 0.95
    assert all(len(e) == 5 and e.terminations[-1] and e.policy == "forecaster" for e in episodes)
    events = np.concatenate([e.observations[1:, 0] for e in episodes])
    # events follow q(forecast): regress event on forecast
    slope, intercept = np.polyfit(forecasts, events, 1)
    assert slope == pytest.approx(0.6, abs=0.1) and intercept == pytest.approx(0.2, abs=0.06)
    flagged = demonstrations({}, 3, np.random.default_rng(0), intervene=True)
    assert all(e.interventions.all() for e in flagged)


@pytest.mark.parametrize(
    "params",
    [{"base": 1.2}, {"base": 0.6, "slope": 0.6}, {"delay": 2}, {"horizon": 0}, {"slope": 1.0, "base": 0.0}],
)
def test_bad_params(params: dict) -> None:
    with pytest.raises(SimagentsError, match="prophecy"):
        simagents.envs.check_params("prophecy", params)
