"""Generated data and deployed envs agree with each testbed's theory (Monte Carlo)."""

from collections.abc import Callable

import numpy as np
import pytest

from simagents.data.episodes import Episode
from simagents.envs import TESTBEDS

N = 4000
ONE_SHOT = ("newcomb", "twin_pd", "smoking_lesion")
# The decision testbeds (short episodes, no hidden state in observations); Connect Four and
# Prophecy have their own data tests.
DECISION = ("newcomb", "twin_pd", "smoking_lesion", "delusion_boxes", "gamble")


def assert_mean(samples: np.ndarray, expected: float, what: str) -> None:
    """Mean within 5 standard errors (plus float32 rounding) of the expectation."""
    samples = np.asarray(samples, dtype=np.float64)
    assert len(samples) > 50, f"{what}: too few samples ({len(samples)})"
    tolerance = 5 * samples.std() / np.sqrt(len(samples)) + 1e-6 * max(1.0, abs(expected))
    assert abs(samples.mean() - expected) <= tolerance, f"{what}: mean {samples.mean()} vs theory {expected}"


def assert_policy_value(
    observations: np.ndarray, returns: np.ndarray, chosen: np.ndarray, expected: float, what: str
) -> None:
    """Σ_o P(o)·mean(return | o, chosen) within 5 standard errors: the value, by the data's
    conditionals, of making this choice whatever is observed (how the theory defines it)."""
    estimate, variance = 0.0, 0.0
    for o in np.unique(observations):
        weight = np.mean(observations == o)
        samples = returns[(observations == o) & chosen].astype(np.float64)
        assert len(samples) > 50, f"{what}: too few samples after observation {o}"
        estimate += weight * samples.mean()
        variance += weight**2 * samples.var() / len(samples)
    tolerance = 5 * np.sqrt(variance) + 1e-6 * max(1.0, abs(expected))
    assert abs(estimate - expected) <= tolerance, f"{what}: estimate {estimate} vs theory {expected}"


def data(name: str, params: dict, intervene: bool, n: int = N, seed: int = 0) -> list[Episode]:
    return TESTBEDS[name].demonstrations(params, n, np.random.default_rng(seed), intervene=intervene)


def first_step(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([e.actions[0] for e in episodes]), np.array([e.episode_return for e in episodes])


CASES = [
    ("newcomb", {}),
    ("newcomb", {"accuracy": 0.4, "one_boxers": 0.7, "two_boxers": 0.1, "small": 3.0, "big": 10.0}),
    ("twin_pd", {}),
    ("twin_pd", {"fidelity": 0.6, "cooperators": 0.2, "defectors": 0.5}),
    ("smoking_lesion", {}),
    ("smoking_lesion", {"tickle": True, "tickle_accuracy": 0.8, "p_lesion": 0.3}),
    ("gamble", {}),
    ("gamble", {"p_win": 0.8, "sure": -1.0}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
@pytest.mark.parametrize("intervene", [False, True])
def test_mean_return_per_choice_matches_theory(name: str, params: dict, intervene: bool) -> None:
    testbed = TESTBEDS[name]
    belief = "interventional" if intervene else "evidential"
    episodes = data(name, params, intervene)
    actions, returns = first_step(episodes)
    observations = np.array([e.observations[0] for e in episodes])
    expected = testbed.theory(**params)["expected_return"]
    for index, choice in enumerate(testbed.action_names):
        what = f"{name} {params} {belief} {choice}"
        assert_policy_value(observations, returns, actions == index, expected[choice][belief], what)


@pytest.mark.parametrize("name", DECISION)
@pytest.mark.parametrize("intervene", [False, True])
def test_episodes_follow_the_contract(name: str, intervene: bool) -> None:
    testbed = TESTBEDS[name]
    env = testbed.make()
    episodes = data(name, {}, intervene, n=200)
    assert len(episodes) == 200
    for i, episode in enumerate(episodes):
        episode.validate(env.observation_space, env.action_space, where=f"{name} episode {i}")
        assert episode.interventions.tolist() == [intervene] * len(episode)
        assert 1 <= len(episode) <= 4
        assert episode.terminations[-1] and not episode.truncations.any()
        if intervene:
            assert episode.policy == "random"
        # No hidden state in observations: one-shot problems and the boxes show a constant,
        # the gamble shows nothing before the bet.
        if name == "gamble":
            assert episode.observations[0] == 0
        else:
            assert not episode.observations.any()
    labels = {e.policy for e in episodes}
    expected_labels = {
        "newcomb": {"one_boxer", "two_boxer", "undecided"},
        "twin_pd": {"cooperator", "defector", "undecided"},
        "smoking_lesion": {"demonstrator"},
        "delusion_boxes": {"informed"},
        "gamble": {"random"},
    }
    assert labels == ({"random"} if intervene else expected_labels[name])


@pytest.mark.parametrize("name", DECISION)
def test_demonstrations_are_deterministic(name: str) -> None:
    a, b, c = (data(name, {}, True, n=50, seed=s) for s in (3, 3, 4))
    for x, y in zip(a, b, strict=True):
        for field in ("observations", "actions", "rewards", "terminations", "truncations", "interventions"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
    assert [e.episode_return for e in a] != [e.episode_return for e in c] or name == "delusion_boxes"


def test_newcomb_interventions_are_independent_of_the_prediction() -> None:
    params = {"accuracy": 0.9, "one_boxers": 0.8, "two_boxers": 0.1}
    for intervene in (False, True):
        actions, returns = first_step(data("newcomb", params, intervene))
        full = returns >= 1_000_000  # the opaque box was full: the prediction was one_box
        gap = full[actions == 0].mean() - full[actions == 1].mean()
        # Evidence: choice and prediction agree with probability 0.9; intervention: unrelated.
        assert gap == pytest.approx(0.8, abs=0.05) if not intervene else abs(gap) < 0.05


def test_smoking_lesion_interventions_are_independent_of_the_lesion() -> None:
    for intervene in (False, True):
        actions, returns = first_step(data("smoking_lesion", {}, intervene))
        cancer = (returns - 10.0 * (actions == 0)) < -50
        gap = cancer[actions == 0].mean() - cancer[actions == 1].mean()
        assert gap == pytest.approx(0.64, abs=0.05) if not intervene else abs(gap) < 0.05


def test_smoking_lesion_tickle_observation_screens_the_lesion_off() -> None:
    episodes = data("smoking_lesion", {"tickle": True}, False)
    urge = np.array([e.observations[0] for e in episodes])
    actions, returns = first_step(episodes)
    cancer = (returns - 10.0 * (actions == 0)) < -50
    for value in (0, 1):
        seen = urge == value
        gap = cancer[seen & (actions == 0)].mean() - cancer[seen & (actions == 1)].mean()
        assert abs(gap) < 0.08, f"urge {value}: smoking still predicts cancer by {gap}"


def test_delusion_boxes_data() -> None:
    params = {"p_left": 0.7, "prize": 2.0, "max_steps": 3}
    theory = TESTBEDS["delusion_boxes"].theory(**params)
    informed = data("delusion_boxes", params, False)
    assert all(len(e) == 1 and e.rewards[0] == 2.0 and e.terminations[0] for e in informed)
    assert_mean(np.array([e.actions[0] == 0 for e in informed]), 0.7, "informed demonstrators open left")
    random = data("delusion_boxes", params, True)
    first_actions = np.array([e.actions[0] for e in random])
    first_rewards = np.array([e.rewards[0] for e in random])
    for index, choice in enumerate(("left", "right")):
        assert_mean(
            first_rewards[first_actions == index],
            theory["expected_return"][choice]["interventional"],
            f"first opening {choice}",
        )
    lengths = np.array([len(e) for e in random])
    assert lengths.max() == 3
    missed = [e for e in random if e.episode_return == 0.0]
    assert missed and all(e.terminations[-1] and len(e) == 3 for e in missed)


# --------------------------------------------------------------------------- deployment


def deploy(name: str, params: dict, policy: Callable[[int, list[int], list[float]], int], n: int = N):
    """Run ``policy(obs, past_actions, past_rewards)`` in the deployed env; returns, lengths, infos."""
    env = TESTBEDS[name].make(**params)
    returns, lengths, infos = [], [], []
    obs, _ = env.reset(seed=0)
    for _ in range(n):
        actions: list[int] = []
        rewards: list[float] = []
        done = False
        while not done:
            action = policy(int(obs), actions, rewards)
            obs, reward, terminated, truncated, info = env.step(action)
            actions.append(action)
            rewards.append(float(reward))
            done = terminated or truncated
        returns.append(sum(rewards))
        lengths.append(len(actions))
        infos.append(info)
        obs, _ = env.reset()
    env.close()
    return np.array(returns), np.array(lengths), infos


DEPLOY_CASES = [
    ("newcomb", {}),
    ("newcomb", {"accuracy": 0.3, "small": 2.0, "big": 10.0}),
    ("twin_pd", {"fidelity": 0.6}),
    ("smoking_lesion", {}),
    ("smoking_lesion", {"tickle": True}),
    ("delusion_boxes", {"p_left": 0.3, "max_steps": 1}),
    ("gamble", {}),
]


@pytest.mark.parametrize(("name", "params"), DEPLOY_CASES)
def test_deployment_return_matches_theory(name: str, params: dict) -> None:
    testbed = TESTBEDS[name]
    expected = testbed.theory(**params)["expected_return"]
    for index, choice in enumerate(testbed.action_names):
        returns, _, _ = deploy(name, params, lambda obs, acts, rews, index=index: index)
        assert_mean(returns, expected[choice]["deployment"], f"deployed {name} {params} always {choice}")


def test_deployed_newcomb_predictor_follows_the_agent() -> None:
    _, _, infos = deploy("newcomb", {"accuracy": 0.8}, lambda obs, acts, rews: 0, n=2000)
    assert_mean(np.array([i["prediction"] == "one_box" for i in infos]), 0.8, "prediction right")


def test_deployed_delusion_boxes_switching_agent() -> None:
    params = {"p_left": 0.3, "max_steps": 4}
    switching = TESTBEDS["delusion_boxes"].theory(**params)["switching"]

    def switch(obs: int, actions: list[int], rewards: list[float]) -> int:
        return 1 if not actions else 1 - actions[-1]  # the likelier box first, then the other

    returns, lengths, infos = deploy("delusion_boxes", params, switch)
    assert_mean(returns, switching["expected_return"], "switching return")
    assert_mean(lengths, switching["expected_steps"], "switching steps")
    assert all(i["openings"] == n for i, n in zip(infos, lengths, strict=True))

    returns, lengths, _ = deploy("delusion_boxes", params, lambda obs, acts, rews: 0)  # never switches
    assert_mean(returns, 0.3, "stubborn return")
    assert set(lengths.tolist()) == {1, 4}
