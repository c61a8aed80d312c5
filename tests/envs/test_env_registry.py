import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import simagents.envs
from simagents.data.minari_io import load_dataset, register_simagents_envs, save_dataset
from simagents.envs import TESTBEDS, check_params, get_testbed, register_testbed
from simagents.envs.newcomb import NewcombEnv
from simagents.errors import SimagentsError

IDS = {
    "newcomb": "simagents/Newcomb-v0",
    "twin_pd": "simagents/TwinPrisonersDilemma-v0",
    "smoking_lesion": "simagents/SmokingLesion-v0",
    "delusion_boxes": "simagents/DelusionBoxes-v0",
    "gamble": "simagents/Gamble-v0",
}
ACTIONS = {
    "newcomb": ("one_box", "two_box"),
    "twin_pd": ("cooperate", "defect"),
    "smoking_lesion": ("smoke", "abstain"),
    "delusion_boxes": ("left", "right"),
    "gamble": ("risky", "small", "sure"),
}
VARIANTS = [(name, {}) for name in IDS] + [
    ("smoking_lesion", {"tickle": True, "tickle_accuracy": 0.8}),
    ("delusion_boxes", {"max_steps": 1, "p_left": 0.3}),
    ("newcomb", {"accuracy": 0.2, "small": 5, "big": 7}),
]


def test_all_testbeds_registered() -> None:
    assert {name: TESTBEDS[name].env_id for name in IDS} == IDS
    assert all(t.env_id.startswith("simagents/") for t in TESTBEDS.values())
    for name, env_id in IDS.items():
        assert gym.spec(env_id).entry_point.startswith("simagents.envs.")
        assert get_testbed(name) is get_testbed(env_id) is TESTBEDS[name]
        assert TESTBEDS[name].action_names == ACTIONS[name]
        assert TESTBEDS[name].env_class.action_names == ACTIONS[name]


def test_data_layer_registers_envs() -> None:
    register_simagents_envs()  # importing twice must be harmless
    assert "simagents/Gamble-v0" in gym.registry


@pytest.mark.parametrize(("name", "params"), VARIANTS)
def test_env_checker(name: str, params: dict) -> None:
    env = gym.make(IDS[name], **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env reports problems as warnings too
        check_env(env.unwrapped)
    assert env.unwrapped.params == TESTBEDS[name].params_class(**params)
    env.close()


@pytest.mark.parametrize("name", IDS)
def test_every_default_is_a_make_kwarg(name: str) -> None:
    testbed = TESTBEDS[name]
    defaults = testbed.default_params
    assert defaults and all(isinstance(v, bool | int | float) for v in defaults.values())
    env = testbed.make(**defaults)
    assert dataclasses.asdict(env.unwrapped.params) == defaults
    assert testbed.check_params() == defaults


def test_unknown_kwarg_is_a_type_error_naming_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"acuracy.*valid parameters: .*accuracy=0\.9"):
        gym.make("simagents/Newcomb-v0", acuracy=0.8)


def test_check_params() -> None:
    params = check_params("newcomb", {"accuracy": "0.75", "big": 10})
    assert params["accuracy"] == 0.75 and params["big"] == 10.0 and params["small"] == 1000.0
    assert check_params("simagents/SmokingLesion-v0", {"tickle": "true"})["tickle"] is True
    assert check_params("delusion_boxes", {"max_steps": "3"})["max_steps"] == 3
    with pytest.raises(SimagentsError, match=r"unknown parameter\(s\) acuracy; valid parameters: small="):
        check_params("newcomb", {"acuracy": 0.8})
    with pytest.raises(SimagentsError, match="accuracy must be a probability"):
        check_params("newcomb", {"accuracy": 1.5})
    with pytest.raises(SimagentsError, match="must be a number"):
        check_params("newcomb", {"accuracy": "high"})
    with pytest.raises(SimagentsError, match="must be an integer"):
        check_params("delusion_boxes", {"max_steps": 2.5})
    with pytest.raises(SimagentsError, match="must be true or false"):
        check_params("smoking_lesion", {"tickle": "maybe"})
    with pytest.raises(SimagentsError, match="at most 1"):
        check_params("twin_pd", {"cooperators": 0.7, "defectors": 0.7})
    with pytest.raises(SimagentsError, match=r"unknown testbed 'newcom'; valid names: .*newcomb"):
        check_params("newcom", {})


def test_bad_value_in_make_is_a_simagents_error() -> None:
    with pytest.raises(SimagentsError, match="fidelity must be a probability"):
        gym.make("simagents/TwinPrisonersDilemma-v0", fidelity=-0.1)


def test_register_your_own_testbed() -> None:
    mine = dataclasses.replace(TESTBEDS["newcomb"], name="my_newcomb", env_id="simagents-test/MyNewcomb-v0")
    try:
        assert register_testbed(mine) is mine
        assert get_testbed("my_newcomb") is mine
        assert isinstance(gym.make("simagents-test/MyNewcomb-v0", accuracy=0.6).unwrapped, NewcombEnv)
        with pytest.raises(ValueError, match="already registered"):
            register_testbed(mine)
    finally:
        TESTBEDS.pop("my_newcomb", None)
        gym.registry.pop("simagents-test/MyNewcomb-v0", None)
    assert isinstance(mine, simagents.envs.Testbed) and "my_newcomb" not in simagents.envs.TESTBEDS


@pytest.mark.parametrize("name", IDS)
def test_step_errors(name: str) -> None:
    env = TESTBEDS[name].env_class()
    env.reset(seed=0)
    with pytest.raises(gym.error.InvalidAction, match="not in Discrete"):
        env.step(7)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(0)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)


def test_testbed_data_saves_as_a_minari_dataset(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    kwargs = {"accuracy": 0.8}
    testbed = TESTBEDS["newcomb"]
    episodes = testbed.demonstrations(kwargs, 20, np.random.default_rng(0), intervene=True)
    env = testbed.make(**kwargs)
    path = save_dataset(
        episodes,
        tmp_path / "newcomb",
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id=testbed.env_id,
        env_kwargs=kwargs,
    )
    loaded = load_dataset(path)
    assert len(loaded.episodes) == 20
    assert all(ep.interventions.all() for ep in loaded.episodes)
    np.testing.assert_array_equal(
        np.concatenate([e.rewards for e in loaded.episodes]), np.concatenate([e.rewards for e in episodes])
    )
