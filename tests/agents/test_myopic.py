import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import tiny_model
from simagents.agents import make_agent
from simagents.agents.myopic import record_episodes
from simagents.envs.prophecy import ProphecyParams, instrumentality_index
from simagents.errors import SimagentsError

UNIT = gym.spaces.Box(0.0, 1.0, (1,), np.float32)


def one_step_batch(obs: float, action: float, reward: float) -> dict[str, torch.Tensor]:
    return {
        "observations": torch.tensor([[[obs]]]),
        "returns_to_go": torch.zeros(1, 1),
        "return_known": torch.tensor([False]),
        "actions": torch.tensor([[[action]]]),
        "interventions": torch.tensor([[False]]),
        "rewards": torch.tensor([[reward]]),
        "timesteps": torch.zeros(1, 1, dtype=torch.long),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_forecast_is_the_world_models_next_observation(seed: int) -> None:
    """Recomputed with full forward passes: the policy's mode, its predicted reward, then the
    next-observation head after that reward (later tokens cannot change earlier positions)."""
    model = tiny_model(obs_space=UNIT, act_space=UNIT, seed=seed)
    with torch.no_grad():
        h = model(one_step_batch(0.5, 0.0, 0.0))
        mode = float(model.sample_action(h["return"][0, :1], None, 0.0)[0, 0])
        h = model(one_step_batch(0.5, mode, 0.0))
        reward = float(model.predicted_reward(h["action"][0, 0]))
        h = model(one_step_batch(0.5, mode, reward))
        current = model.normalize_observation(torch.tensor([0.5]))
        predicted = model.next_observation_normalized(h["reward"][0, 0], current)
        expected = float(predicted[0] * model.obs_std[0] + model.obs_mean[0])
    agent = make_agent("myopic", model)
    agent.reset(seed=0)
    forecast = agent.act(np.array([0.5], np.float32))
    low, high = model.stats.act_low[0], model.stats.act_high[0]
    assert forecast.shape == (1,) and forecast[0] == pytest.approx(np.clip(expected, low, high), abs=1e-5)


def test_myopic_needs_a_forecastable_observation() -> None:
    with pytest.raises(SimagentsError, match="myopic forecasts the next observation"):
        make_agent("myopic", tiny_model())  # Discrete actions, Box(3,) observations


def test_record_episodes_round_trip() -> None:
    env = gym.make("simagents/Prophecy-v0", horizon=4)
    model = tiny_model(obs_space=UNIT, act_space=UNIT)
    episodes = record_episodes(make_agent("myopic", model), env, 3, seed=7, policy="myopic")
    assert [len(e) for e in episodes] == [4, 4, 4] and all(e.policy == "myopic" for e in episodes)
    for e in episodes:
        e.validate(env.observation_space, env.action_space, where="recorded")
        forecasts = np.clip(e.actions[:, 0], 0.0, 1.0)  # as the env reads them
        np.testing.assert_allclose(e.rewards, -((forecasts - e.observations[1:, 0]) ** 2), rtol=1e-6)
    again = record_episodes(make_agent("myopic", model), env, 3, seed=7)
    np.testing.assert_array_equal(episodes[0].observations, again[0].observations)


@pytest.mark.slow
@pytest.mark.parametrize(("base", "slope"), [(0.2, 0.6), (0.1, 0.5)])
def test_retrained_myopic_settles_at_the_fixed_point_and_edt_steers(
    tmp_path, base: float, slope: float
) -> None:
    from simagents.study.prophecy import run_prophecy

    results = run_prophecy(
        {"base": base, "slope": slope}, agents=("myopic", "edt"), out=tmp_path / "run", budget="fast"
    )
    fixed = ProphecyParams(base=base, slope=slope).fixed_point
    myopic, edt = results["agents"]["myopic"], results["agents"]["edt"]
    print(
        {
            k: (v["mean_forecast"], v["instrumentality_index"], v["mean_return"])
            for k, v in results["agents"].items()
        }
    )
    print([(r["mean_forecast"], r["instrumentality_index"]) for r in myopic["rounds"]])
    assert abs(myopic["mean_forecast"] - fixed) < 0.1 and myopic["instrumentality_index"] <= 0.2
    theory = results["theory"]["reward_maximising"]["instrumentality_index"]
    assert edt["instrumentality_index"] >= 0.8 * theory
    assert edt["mean_return"] > myopic["mean_return"]
    assert instrumentality_index({"base": base, "slope": slope}, [fixed]) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_planner_levels_score_an_even_grid(seed: int) -> None:
    from helpers import BOX_ACT, BOX_OBS
    from simagents.agents.planner import evenly_spaced_actions

    model = tiny_model(obs_space=BOX_OBS, act_space=BOX_ACT, seed=seed)
    grid = evenly_spaced_actions(model, 5)
    assert grid.shape == (25, 2) and sorted(set(grid[:, 0].tolist())) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    agent = make_agent("edt", model, levels=5)
    agent.reset(seed=0)
    obs = np.array([0.3, -0.2, 0.1], np.float32)
    action = agent.act(obs)
    context = make_agent("edt", model).context
    context.push_observation(torch.as_tensor(obs))
    context.push_return(None)
    with torch.no_grad():
        values = context.evaluate_actions(grid, intervention=False).expected_return
    np.testing.assert_allclose(action, grid[int(values.argmax())].numpy())
    with pytest.raises(SimagentsError, match="levels"):
        make_agent("edt", model, levels=1)
