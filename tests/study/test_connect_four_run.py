"""`simagents testbed connect_four`: the results schema on the fast budget, and bad requests."""

import json
import math
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from helpers import tiny_model
from simagents.agents import make_agent
from simagents.cli import main
from simagents.envs.connect_four import POPULATION, ConnectFourEnv
from simagents.envs.connect_four_metrics import play_games
from simagents.errors import SimagentsError
from simagents.model import Simulator
from simagents.study.connect_four import BUDGETS, format_results, inferred_player, run_connect_four
from simagents.study.report import connect_four_interpretation, connect_four_section, strength_figure
from simagents.train import LossWeights

METRICS = (
    "win_rate",
    "draw_rate",
    "loss_rate",
    "mean_return",
    "blunder_rate",
    "move_entropy",
    "kl_to_data",
    "elo",
)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cf") / "run"
    return out, run_connect_four({"opponent_depth": 1}, out=out, budget="fast", seed=3)


def test_results_follow_the_schema(fast_run: tuple[Path, dict]) -> None:
    out, results = fast_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["testbed"] == "connect_four" and results["params"]["opponent_depth"] == 1
    labels = [f"imitation[{p}]" for p in POPULATION]
    expected = ["imitation", *labels, "dt", "dt[temperature=1]", "edt", "edt[value=bayes]", "rl"]
    assert list(results["agents"]) == expected
    for name, entry in [*results["agents"].items(), *results["population"].items()]:
        for key in METRICS:
            assert isinstance(entry[key], float), (name, key)
        assert math.isclose(entry["win_rate"] + entry["draw_rate"] + entry["loss_rate"], 1.0)
        assert 0 <= entry["blunder_rate"] <= 1
        assert list(entry["inferred_player"]) == list(POPULATION), name
        assert sum(entry["inferred_player"].values()) == pytest.approx(1.0)
    assert results["population"]["random"]["elo"] == 0.0  # the scale's anchor
    # Move statistics come from the policies the sampling agents drew from; dt and edt take an argmax.
    argmax = ("dt", "edt", "edt[value=bayes]")
    assert {name: e["sampling"] for name, e in results["agents"].items()} == {
        name: name not in argmax for name in expected
    }
    for name in argmax:
        entropy = results["agents"][name]["move_entropy"]
        assert entropy == 0.0 or math.isnan(entropy)
    for player in POPULATION:
        entry = results["agents"][f"imitation[{player}]"]
        assert entry["label"] == player
        assert entry["data_blunder_rate"] == results["population"][player]["blunder_rate"]
    assert set(results["population_mean"]) >= {"win_rate", "blunder_rate", "elo"}
    for target, classes in (("player", list(POPULATION)), ("outcome", ["loss", "draw", "win"])):
        probe = results["probes"][target]
        assert probe["classes"] == classes
        assert all(0 <= probe[k] <= 1 for k in ("hidden", "raw", "chance"))
        assert probe["test_steps"] > 0
    assert results["data"]["labels"] == sorted(POPULATION)
    for player in POPULATION:  # nats per move: at most about log 7 for a barely trained simulator
        assert 0 < results["label_nll"][player]["own_label"] < 3
        assert 0 < results["label_nll"][player]["unknown_label"] < 3
        fidelity = results["label_fidelity"][player]  # read in the player's own held-out games
        assert 0 <= fidelity["player_blunder_mass"] <= 1 and 0 < fidelity["mass_on_player_moves"] <= 1 + 1e-6
        assert fidelity["kl_from_player"] >= 0 and fidelity["positions"] > 0
        in_its_games = results["agents"][f"imitation[{player}]"]["fidelity"]
        assert in_its_games["positions"] == results["agents"][f"imitation[{player}]"]["moves"]
    assert "fidelity" not in results["agents"]["imitation"]  # told no player: none to compare with
    expert = results["label_fidelity"]["expert"]
    assert f"label expert in its player's positions: {expert['blunder_mass']:.3f}" in format_results(results)
    assert (
        results["label_fidelity"]["random"]["kl_from_player"]
        < results["label_fidelity"]["expert"]["kl_from_player"]
    )
    assert (out / "simulator").is_dir() and (out / "rl" / "model.safetensors").is_file()


def test_the_strength_figure_adds_a_panel_for_the_labelled_imitators(fast_run, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    _, results = fast_run
    assert any("label" in entry for entry in results["agents"].values())
    unlabelled = {**results, "agents": {a: e for a, e in results["agents"].items() if "label" not in e}}
    strength_figure(results, tmp_path / "both.png")
    strength_figure(unlabelled, tmp_path / "one.png")
    both, one = plt.imread(tmp_path / "both.png"), plt.imread(tmp_path / "one.png")
    assert both.shape[0] == one.shape[0] and both.shape[1] > 1.5 * one.shape[1]  # a second panel beside


def test_the_budget_sets_the_simulators_training(tmp_path: Path) -> None:
    budget = replace(
        BUDGETS["smoke"], return_dropout=0.75, label_dropout=0.25, observation_loss=0.1, dropout=0.2
    )
    run_connect_four(out=tmp_path / "run", budget=budget, agents=["imitation"])
    config = json.loads((tmp_path / "run" / "simulator" / "config.json").read_text())
    assert (config["return_dropout"], config["label_dropout"]) == (0.75, 0.25)
    assert config["loss"]["observation"] == 0.1 and config["loss"]["action"] == LossWeights().action
    assert config["model"]["dropout"] == 0.2


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        (["imitation[grandmaster]"], "no player 'grandmaster'"),
        (["dt[club]"], "options go as dt\\[KEY=VALUE"),
        (["dt[temprature=1]"], "has no option"),
        (["imitation[expert"], "options go as NAME\\[KEY=VALUE"),
        (["oracle"], "unknown agent"),
        (["oracle[value=bayes]"], "unknown agent"),
    ],
)
def test_bad_agents_fail_before_anything_is_written(tmp_path: Path, agents: list[str], message: str) -> None:
    with pytest.raises(SimagentsError, match=message):
        run_connect_four(out=tmp_path / "run", budget="fast", agents=agents)
    assert not (tmp_path / "run").exists()


def test_cli_dispatches_to_the_connect_four_runner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["testbed", "connect_four", "--out", str(tmp_path / "run"), "--agents", "imitation[nobody]"])
    assert code == 2 and "no player 'nobody'" in capsys.readouterr().err
    code = main(["testbed", "connect_four", "--out", str(tmp_path / "run"), "--param", "opponent_depth=99"])
    assert code == 2 and "opponent_depth must be between 1 and 8" in capsys.readouterr().err
    code = main(["testbed", "connect_four", "--out", str(tmp_path / "run"), "--precision", "fp16"])
    assert code == 2 and "--precision fp16: must be one of fp32, bf16" in capsys.readouterr().err
    code = main(["testbed", "newcomb", "--out", str(tmp_path / "run"), "--precision", "bf16"])
    assert code == 2 and "--precision applies to the connect_four testbed only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bf16_training_reaches_the_simulator_and_the_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["testbed", "connect_four", "--out", str(out), "--budget", "smoke", "--precision", "bf16"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["budget"]["precision"] == "bf16"
    run_config = json.loads((out / "simulator" / "config.json").read_text())
    assert run_config["precision"] == "bf16"


@pytest.mark.slow
def test_the_default_budget_shows_simulated_players_and_agents(tmp_path: Path) -> None:
    """Of the issue's 'what must show', what the default budget reaches; the test runs seed 0.

    Measured on the AMD EPYC (2026-12-04, ten planes, 300 games per agent; seed 0, seed 1 in
    brackets). Conditioned on the weakest player's label, imitation blunders within 30% of
    that player's rate (0.183 against 0.207; 0.182 against 0.205), plays more widely and
    blunders more often than on the strongest's label (expert 0.018; 0.021, its player never),
    and the label makes that player's held-out moves likelier: random 1.95 nats against 2.20
    unlabelled, expert 0.619 against 0.717 (0.591 against 0.712). The expert's gain, 0.098 nats
    a move, is 12 standard errors over its 80 held-out games; it narrowed from 0.15 as the
    unconditioned policy learnt to read the player from the game, so the test asks for 0.05.
    Conditioned on winning, dt (the policy's mode) wins more often than the population's
    average and blunders less (0.863 and 0.003 against 0.44 and 0.076), and so do edt by its
    action-value head (0.647, 0.013; 0.700) and by Bayes' rule over the policy (0.783, 0.011;
    0.740); sampled instead of its mode, dt still does (0.653 and 0.023; 0.610 and 0.028). rl,
    fine-tuned from the unconditioned imitator (the transformer too, at 3e-5; rl's figures from
    2026-12-05), wins more often than every agent that samples its policy (0.827; 0.840, the
    expert label 0.677; 0.653, dt sampled above) and collapses the distribution it simulated:
    move entropy 0.06 (0.04) against the imitator's 1.11, sampled dt's 0.62 (0.67) and every
    label's 0.42 or more, KL to the data 0.45 (0.47) against the imitator's 0.03 and sampled
    dt's 0.10 (0.10). The player probe on the
    hidden states beats chance by a wide margin and the raw board (0.451 against 0.170 and
    0.422; 0.476 against 0.230 and 0.412)."""
    labels = ["imitation[random]", "imitation[novice]", "imitation[expert]"]
    planners = ["dt", "dt[temperature=1]", "edt", "edt[value=bayes]"]
    agents = ["imitation", *labels, *planners, "rl"]
    results = run_connect_four(out=tmp_path / "run", budget="default", agents=agents)
    played = results["agents"]
    population = results["population_mean"]
    weak, middle, strong = (played[name] for name in labels)
    assert weak["blunder_rate"] == pytest.approx(weak["data_blunder_rate"], rel=0.3)
    assert weak["blunder_rate"] > middle["blunder_rate"] > strong["blunder_rate"]
    assert weak["data_blunder_rate"] > strong["data_blunder_rate"]
    assert weak["move_entropy"] > strong["move_entropy"] + 0.1
    assert weak["blunder_rate"] > strong["blunder_rate"] + 0.1
    assert strong["blunder_rate"] < population["blunder_rate"]
    for player in ("random", "expert"):
        nll = results["label_nll"][player]
        assert nll["own_label"] < nll["unknown_label"] - 0.05, player
    # Exact, in the players' own positions: the random label's policy is close to uniform; the
    # expert's puts little probability on blunders, the random one's much more.
    fidelity = results["label_fidelity"]
    assert fidelity["random"]["kl_from_player"] < 0.05
    assert fidelity["random"]["blunder_mass"] == pytest.approx(
        fidelity["random"]["player_blunder_mass"], rel=0.3
    )
    assert fidelity["expert"]["blunder_mass"] < 0.03 < fidelity["random"]["blunder_mass"]
    for name in [*planners, "rl"]:
        assert played[name]["win_rate"] > population["win_rate"] + 0.1, name
        assert played[name]["blunder_rate"] < population["blunder_rate"], name
    rl, imitator = played["rl"], played["imitation"]
    samplers = [entry for name, entry in played.items() if entry["sampling"] and name != "rl"]
    assert len(samplers) == 5  # the imitators and dt[temperature=1]
    assert rl["win_rate"] > max(entry["win_rate"] for entry in samplers)
    assert rl["move_entropy"] < min(entry["move_entropy"] for entry in samplers)
    assert rl["kl_to_data"] > imitator["kl_to_data"] + 0.1
    probe = results["probes"]["player"]
    assert probe["hidden"] > probe["chance"] + 0.15
    assert probe["hidden"] > probe["raw"]


@pytest.mark.parametrize(("rl_kl", "rl_win", "collapsed"), [(0.9, 0.7, True), (0.3, 0.5, False)])
def test_the_report_calls_rl_collapsed_against_the_simulated_population(
    rl_kl: float, rl_win: float, collapsed: bool
) -> None:
    # rl is compared with the imitator it was fine-tuned from (KL 0.5) and sampled dt (KL 0.1),
    # not with an argmax (edt: entropy 0, KL 2.0) nor with an imitator told to play one player
    # (KL 1.5); its wins with every agent that samples, not with an argmax (edt wins 0.8).
    def agent(entropy: float, kl: float, sampling: bool, win: float = 0.3) -> dict:
        return {
            "win_rate": win,
            "blunder_rate": 0.05,
            "move_entropy": entropy,
            "kl_to_data": kl,
            "sampling": sampling,
        }

    result = {
        "population": {
            "random": {"win_rate": 0.0, "blunder_rate": 0.2},
            "expert": {"win_rate": 0.8, "blunder_rate": 0.0},
        },
        "agents": {
            "imitation": agent(1.3, 0.5, True),
            "imitation[random]": {**agent(1.9, 1.5, True), "label": "random", "blunder_rate": 0.2},
            "dt[temperature=1]": agent(0.7, 0.1, True, win=0.6),
            "edt": agent(0.0, 2.0, False, win=0.8),
            "rl": agent(0.2, rl_kl, True, win=rl_win),
        },
    }
    result["agents"]["imitation[random]"]["data_blunder_rate"] = 0.2
    text = connect_four_interpretation(result)
    assert ("the distribution it simulated collapsed" in text) == collapsed
    assert ("not collapsed" in text) != collapsed
    best = "than every other agent that samples its policy: the best, dt[temperature=1], 0.60)"
    assert (f"won 0.70 (more {best}" in text) == (rl_win == 0.7)
    assert (f"won 0.50 (no more {best}" in text) == (rl_win == 0.5)


def population_simulator(shares: list[float]) -> Simulator:
    """An untrained simulator of Connect Four whose five player labels move its policy far apart."""
    board, columns = ConnectFourEnv().observation_space, gym.spaces.Discrete(7)
    model = tiny_model(board, columns, context_len=22, seed=0)
    stats = replace(model.stats, labels=sorted(POPULATION), label_shares=shares)
    simulator = Simulator(replace(model.cfg, condition_on_label=True), board, columns, stats).eval()
    with torch.no_grad():  # labels far apart, and a policy head that turns them into moves
        simulator.label_embed.weight.normal_(std=3.0)
        simulator.action_head.weight.mul_(20.0)
    return simulator


@pytest.mark.parametrize("shares", [[0.2] * 5, [0.05, 0.05, 0.05, 0.05, 0.8]])
def test_the_simulator_infers_whom_it_plays_by_bayes_rule(shares: list[float]) -> None:
    simulator = population_simulator(shares)
    prior = dict(zip(sorted(POPULATION), shares, strict=True))
    for player in ("random", "expert"):  # told who it is, it plays like that player
        games = play_games(make_agent("imitation", simulator, label=player), 20, seed=0, opponent_depth=1)
        inferred = inferred_player(simulator, games.episodes)
        assert sum(inferred.values()) == pytest.approx(1.0)
        # Most of the posterior on that player: more than on all the others together.
        assert max(inferred, key=inferred.get) == player and inferred[player] > 0.5, inferred
    # Drawing its player from the data's shares, its games average back to the prior.
    games = play_games(make_agent("imitation", simulator, label="sample"), 100, seed=0, opponent_depth=1)
    inferred = inferred_player(simulator, games.episodes)
    for player in POPULATION:
        assert inferred[player] == pytest.approx(prior[player], abs=0.1), (player, inferred)
    # Labels that do not change the policy leave the prior as it was.
    with torch.no_grad():
        simulator.label_embed.weight[:] = simulator.label_embed.weight[0]
    inferred = inferred_player(simulator, games.episodes[:5])
    assert inferred == pytest.approx(prior, abs=1e-6)


@pytest.mark.parametrize(
    ("inferred", "verdict"),
    [
        ([0.29, 0.25, 0.21, 0.15, 0.11], "weaker than the population"),  # measured, default budget
        ([0.19, 0.18, 0.20, 0.19, 0.24], "as the population"),  # measured, label="sample"
        ([0.05, 0.05, 0.10, 0.30, 0.50], "stronger than the population"),
    ],
)
def test_the_report_says_whom_the_unconditioned_imitator_plays_like(
    inferred: list[float], verdict: str
) -> None:
    result = {
        "population": {"random": {"win_rate": 0.0, "blunder_rate": 0.2}},
        "agents": {"imitation": {"inferred_player": dict(zip(POPULATION, inferred, strict=True))}},
        "data": {"label_shares": dict.fromkeys(sorted(POPULATION), 0.2)},
    }
    text = connect_four_interpretation(result)
    assert f"it plays {verdict} it simulates" in text
    assert f"random {inferred[0]:.2f}, novice {inferred[1]:.2f}" in text


@pytest.mark.parametrize(
    ("unconditioned", "labels", "verdict"),
    [
        # measured, seed 0 (2026-12-04): the imitator 0.36, its labels' average 0.35, the players 0.44
        (0.36, [0.01, 0.13, 0.35, 0.64, 0.62], "the gap to the population is the labels' own"),
        (0.20, [0.00, 0.14, 0.55, 0.68, 0.84], "the gap is in the mixing"),
        (0.42, [0.01, 0.13, 0.35, 0.64, 0.62], "it plays at the population's strength"),
    ],
)
def test_the_report_says_where_the_unconditioned_imitator_falls_short(
    unconditioned: float, labels: list[float], verdict: str
) -> None:
    players = [0.0, 0.138, 0.55, 0.675, 0.838]  # measured, held-out games
    result = {
        "population": {
            p: {"win_rate": w, "blunder_rate": 0.0} for p, w in zip(POPULATION, players, strict=True)
        },
        "agents": {
            "imitation": {"win_rate": unconditioned},
            **{
                f"imitation[{p}]": {"label": p, "win_rate": w, "blunder_rate": 0.0, "data_blunder_rate": 0.0}
                for p, w in zip(POPULATION, labels, strict=True)
            },
        },
    }
    text = connect_four_interpretation(result)
    assert verdict in text
    assert f"the imitator won {unconditioned:.2f}" in text and "their players 0.44" in text


@pytest.mark.parametrize(
    ("expert_blunders", "by_plies", "verdict"),
    [
        # Measured at seed 0 (2026-12-04): the expert label's losing moves, mostly 4 and 6 plies deep.
        (0.018, {"2": 0.005, "4": 0.005, "6": 0.007}, "most need a look-ahead"),
        (0.018, {"2": 0.012, "4": 0.002, "6": 0.002}, "most are threats on the board"),
        (0.001, {"2": 0.001, "4": 0.0, "6": 0.0}, None),  # as rare as its player's: nothing to explain
    ],
)
def test_the_report_says_how_far_ahead_the_strongest_label_loses(
    expert_blunders: float, by_plies: dict[str, float], verdict: str | None
) -> None:
    label = {"win_rate": 0.7, "label": "expert", "blunder_rate": expert_blunders, "data_blunder_rate": 0.0}
    result = {
        "population": {"expert": {"win_rate": 0.84, "blunder_rate": 0.0}},
        "agents": {
            "imitation[random]": {
                **label,
                "label": "random",
                "blunder_rate": 0.2,
                "data_blunder_rate": 0.2,
                "losing_move_rate_by_plies": {"2": 0.15, "4": 0.03, "6": 0.02},
            },
            "imitation[expert]": {**label, "losing_move_rate_by_plies": by_plies},
        },
    }
    text = connect_four_interpretation(result)
    if verdict is None:
        assert "losing moves lose within" not in text
    else:
        assert verdict in text
        assert f"As expert its losing moves lose within 2 plies at {by_plies['2']:.3f}" in text


@pytest.mark.parametrize(
    ("in_its_games", "verdict"),
    [
        (0.0121, "not in where its own play leads"),  # measured: full budget, seed 0 (2026-12-05)
        (0.0400, "they compound"),
    ],
)
def test_the_report_says_whether_the_strongest_labels_errors_compound(
    in_its_games: float, verdict: str
) -> None:
    fidelity = {
        "blunder_mass": 0.0108,
        "player_blunder_mass": 0.0,
        "kl_from_player": 0.26,
        "missed_win_mass": 0.0010,
        "losing_move_mass_by_plies": {"2": 0.0023, "4": 0.0051, "6": 0.0024},
        "positions": 1051.0,
    }
    games = {**fidelity, "blunder_mass": in_its_games, "kl_from_player": 0.34, "positions": 3711.0}
    table_entry = {"move_entropy": 0.5, "kl_to_data": 0.2, "elo": 900.0}
    label = {
        **table_entry,
        "win_rate": 0.7,
        "label": "expert",
        "blunder_rate": 0.013,
        "data_blunder_rate": 0.0,
        "fidelity": games,
    }
    result = {
        "seed": 0,
        "data": {"episodes": 10},
        "population": {"expert": {**table_entry, "win_rate": 0.84, "blunder_rate": 0.0}},
        "agents": {"imitation[expert]": label},
        "label_fidelity": {"expert": fidelity},
    }
    text = connect_four_interpretation(result)
    assert verdict in text
    exact = "0.011 of its probability per move on blunders in its player's own positions (0.000 its player)"
    assert f"{exact} and {in_its_games:.3f}" in text
    table = "\n".join(connect_four_section("connect_four", result)[0])
    row = (
        f"| expert | 0.011 (0.000) | 0.001 / 0.002, 0.005, 0.002 | 0.26 | {in_its_games:.3f} (0.000) | 0.34 |"
    )
    assert row in table
