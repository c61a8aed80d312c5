import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simagents.envs import TESTBEDS

probability = st.floats(0.0, 1.0)
payoff = st.floats(-100.0, 100.0)


def theory(name: str, **params):
    return TESTBEDS[name].theory(**params)


def values(t: dict, choice: str) -> tuple[float, float, float]:
    v = t["expected_return"][choice]
    return v["evidential"], v["interventional"], v["deployment"]


# --------------------------------------------------------------------------- Newcomb


@pytest.mark.parametrize(
    ("accuracy", "edt"), [(0.3, "two_box"), (0.5, "two_box"), (0.51, "one_box"), (0.99, "one_box")]
)
def test_newcomb_edt_flips_at_the_threshold(accuracy: float, edt: str) -> None:
    t = theory("newcomb", accuracy=accuracy)
    assert t["edt_threshold"] == pytest.approx((1_000 + 1_000_000) / 2_000_000)
    assert t["edt"]["choice"] == edt
    assert t["cdt"]["choice"] == "two_box"
    assert t["deployment_best"] == edt  # the predictor responds to the deployed agent's choice


def test_newcomb_numbers() -> None:
    t = theory("newcomb", accuracy=0.9, one_boxers=0.5, two_boxers=0.3, undecided_one_box=0.5)
    fill = 0.6 * 0.9 + 0.4 * 0.1
    assert values(t, "one_box") == pytest.approx((900_000, fill * 1e6, 900_000))
    assert values(t, "two_box") == pytest.approx((101_000, 1_000 + fill * 1e6, 101_000))
    assert t["edt"] == pytest.approx({"choice": "one_box", "expected_return": 9e5, "deployment_return": 9e5})
    assert t["cdt"]["expected_return"] == pytest.approx(1_000 + fill * 1e6)
    assert t["cdt"]["deployment_return"] == pytest.approx(101_000)


@settings(max_examples=60, deadline=None)
@given(q=probability, small=st.floats(0.01, 1e4), big=st.floats(0.01, 1e6), one=probability)
def test_newcomb_theory_formula(q: float, small: float, big: float, one: float) -> None:
    t = theory("newcomb", accuracy=q, small=small, big=big, one_boxers=one, two_boxers=1 - one)
    edt_one_boxes = q * big > small + (1 - q) * big
    if 0 < one < 1:
        assert t["edt"]["choice"] == ("one_box" if edt_one_boxes else "two_box")
    assert t["cdt"]["choice"] == "two_box"


def test_newcomb_undefined_conditional_is_never_chosen() -> None:
    t = theory("newcomb", one_boxers=1.0, two_boxers=0.0)  # the data never shows two-boxing
    assert math.isnan(t["expected_return"]["two_box"]["evidential"])
    assert t["edt"]["choice"] == "one_box"


# --------------------------------------------------------------------------- twin PD


@pytest.mark.parametrize(
    ("fidelity", "edt"), [(0.5, "defect"), (0.7, "defect"), (0.72, "cooperate"), (1.0, "cooperate")]
)
def test_twin_pd_edt_flips_at_the_threshold(fidelity: float, edt: str) -> None:
    t = theory("twin_pd", fidelity=fidelity)
    assert t["edt_threshold"] == pytest.approx(5 / 7)
    assert t["edt"]["choice"] == edt
    assert t["cdt"]["choice"] == "defect"
    assert t["deployment_best"] == edt


@settings(max_examples=60, deadline=None)
@given(f=probability, t_=payoff, r=payoff, p=payoff, s=payoff)
def test_twin_pd_theory_formula(f: float, t_: float, r: float, p: float, s: float) -> None:
    t = theory("twin_pd", fidelity=f, temptation=t_, reward=r, punishment=p, sucker=s)
    cooperate, defect = r * f + s * (1 - f), p * f + t_ * (1 - f)
    assert t["expected_return"]["cooperate"]["deployment"] == pytest.approx(cooperate)
    assert t["edt"]["choice"] == ("cooperate" if cooperate > defect else "defect")
    if t_ > r and p > s:  # a dilemma: defection dominates causally
        assert t["cdt"]["choice"] == "defect"


# --------------------------------------------------------------------------- smoking lesion


def test_smoking_lesion_numbers() -> None:
    t = theory("smoking_lesion")
    assert values(t, "smoke") == pytest.approx((-72, -40, -40))
    assert values(t, "abstain") == pytest.approx((-18, -50, -50))
    assert t["edt"]["choice"] == "abstain" and t["cdt"]["choice"] == "smoke"
    assert t["deployment_best"] == "smoke"
    assert t["edt"]["deployment_return"] == pytest.approx(-50)


@pytest.mark.parametrize(
    "params",
    [
        {"smoke_utility": 100.0},  # smoking is worth more than the evidence costs
        {"smoke_given_lesion": 0.5, "smoke_given_no_lesion": 0.5},  # smoking says nothing
        {"cancer_given_lesion": 0.3, "cancer_given_no_lesion": 0.3},  # the lesion does nothing
        {"tickle": True},  # the urge screens the lesion off
        {"tickle": True, "tickle_accuracy": 0.7},
    ],
)
def test_smoking_lesion_edt_and_cdt_agree(params: dict) -> None:
    t = theory("smoking_lesion", **params)
    assert t["edt"]["choice"] == t["cdt"]["choice"] == "smoke"


def test_smoking_lesion_tickle_evidential_equals_causal() -> None:
    t = theory("smoking_lesion", tickle=True, tickle_accuracy=0.8)
    for choice in ("smoke", "abstain"):
        evidential, interventional, _ = values(t, choice)
        assert evidential == pytest.approx(interventional)


def test_smoking_lesion_negative_smoking_utility_makes_both_abstain() -> None:
    t = theory("smoking_lesion", smoke_utility=-1.0)
    assert t["edt"]["choice"] == t["cdt"]["choice"] == "abstain"


# --------------------------------------------------------------------------- delusion boxes


def test_delusion_boxes_theory() -> None:
    t = theory("delusion_boxes")
    assert values(t, "left") == pytest.approx((1.0, 0.5, 0.5))
    assert t["self_delusion_gap"] == pytest.approx({"left": 0.5, "right": 0.5})
    assert t["switching"] == pytest.approx({"expected_return": 1.0, "expected_steps": 1.5})
    t = theory("delusion_boxes", p_left=0.2, prize=2.0, max_steps=1)
    assert t["cdt"]["choice"] == "right" and t["cdt"]["expected_return"] == pytest.approx(1.6)
    assert t["edt"]["expected_return"] == pytest.approx(2.0)
    assert t["switching"] == pytest.approx({"expected_return": 1.6, "expected_steps": 1.0})


# --------------------------------------------------------------------------- gamble


def test_gamble_theory() -> None:
    t = theory("gamble")
    assert [t["expected_return"][c]["deployment"] for c in ("risky", "small", "sure")] == [-5, -2.5, 1]
    assert t["edt"]["choice"] == t["cdt"]["choice"] == "sure"
    assert t["dt"] == {
        "prompt": 5.0,
        "action_probs": {"risky": 1.0, "small": 0.0, "sure": 0.0},
        "choice": "risky",
        "expected_return": -5.0,
    }


def test_gamble_theory_follows_parameters() -> None:
    t = theory("gamble", sure=-3.0)  # now the small bet (−2.5) is the best one
    assert t["edt"]["choice"] == "small"
    t = theory("gamble", sure=5.0)  # the best data return is reached by two bets
    assert t["dt"]["action_probs"] == pytest.approx({"risky": 1 / 3, "small": 0.0, "sure": 2 / 3})
    assert t["dt"]["expected_return"] == pytest.approx((-5 + 2 * 5) / 3)
    t = theory("gamble", p_win=1.0)  # no losses: the risky bet is best for everyone
    assert t["edt"]["choice"] == t["dt"]["choice"] == "risky"
