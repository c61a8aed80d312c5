"""The Connect Four testbed end to end: a simulator of a population of players, and the agents made from it.

``run_connect_four({"opponent_depth": 2}, out=DIR)`` (or ``simagents testbed connect_four --out DIR``):

1. draws games of the five players of :data:`~simagents.envs.connect_four.POPULATION`
   against the reference opponent (the env's own, ``params``), each labelled with its
   player, adds their mirror images (``mirror``) and saves them as a Minari dataset,
   ``DIR/data/observational``; a second,
   held-out set of games (another seed) measures the players and trains the probes;
2. trains ONE simulator on the data with label conditioning (``DIR/simulator``);
3. builds each agent from it and plays it against the reference opponent and, for its
   Elo, against every player of the population:

   - ``imitation``: unconditioned, the label unknown (whoever the history suggests);
   - ``imitation[NAME]`` for each player: the same simulator with the player's label
     in its context;
   - ``dt``: conditioned on winning (the data's best return), playing the policy's mode;
   - ``dt[temperature=1]``: the same, sampling the policy: the simulated players who won;
   - ``edt``: the planner, scoring every column by the action-value head;
   - ``edt[value=bayes]``: the same planner, scoring by Bayes' rule over the policy prompted
     with each outcome;
   - ``rl``: the policy head, and at a lower rate the rest of the simulator, fine-tuned by PPO
     against the reference opponent (``DIR/rl``), acting with the label and the return unknown;

4. fits linear probes on the simulator's hidden states over the held-out games
   (:mod:`simagents.study.probes`): which player is moving, and the game's final outcome,
   each beside the same probe on the raw board and chance;
5. writes ``DIR/results.json``: ``testbed``, ``params``, ``seed``, ``theory``,
   ``population.<player>`` (its data's ``win_rate``, ``draw_rate``, ``loss_rate``,
   ``blunder_rate`` ..., ``move_entropy``, ``elo``, ``inferred_player``), ``population_mean``
   (the players' average of each), ``agents.<name>`` (``win_rate``, ``draw_rate``, ``loss_rate``,
   ``mean_return``, ``blunder_rate``, ``missed_win_rate``, ``losing_move_rate``,
   ``losing_move_rate_by_plies`` (the losing moves by how many plies ahead they lose: 2, 4, 6),
   ``move_entropy``, ``kl_to_data``, ``sampling``, ``elo``, ``score_vs_<player>``,
   ``inferred_player``: whom the simulator takes the games' player for, by Bayes' rule over
   its label-conditioned policies, :func:`inferred_player`; a conditioned imitator
   also ``label``, ``data_blunder_rate`` (its player's) and ``fidelity``: its policies against
   its player's exact policy in the positions of its games), ``probes``, ``label_nll`` (per
   player, nats per held-out move under its own label and under the unknown one),
   ``label_fidelity`` (per player, the label's policy against the player's exact one in the
   player's held-out positions: :func:`label_fidelity`), with ``losing_moves_loss`` also
   ``losing_moves`` (:func:`losing_moves_section`), ``data``, ``budget`` and ``timings``.

Move entropy and KL to the data are measured in the positions that both the agent's games
and the training data reach, the data at least ``MIN_DATA_VISITS`` times, from the policies a
sampling agent drew its moves from (:func:`~simagents.envs.connect_four_metrics.move_statistics`);
``sampling`` says whether an agent is one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simagents.agents import Agent, make_agent
from simagents.agents.base import label_shares, parse_agent_spec
from simagents.agents.rl import FinetuneConfig, finetune
from simagents.data.episodes import Episode
from simagents.data.minari_io import save_dataset
from simagents.envs import get_testbed
from simagents.envs.connect_four import (
    OBSERVATION_IMAGE,
    POPULATION,
    ConnectFourEnv,
    demonstrations,
    losing_moves,
    mirror,
    position_from_observation,
    with_losing_moves,
)
from simagents.envs.connect_four_engine import Player
from simagents.envs.connect_four_metrics import (
    BLUNDER_DEPTH,
    Move,
    blunder_kinds,
    blunder_rate,
    elo_against_population,
    move_statistics,
    moves_of_episodes,
    outcome_rates,
    play_games,
    player_metrics,
    policy_fidelity,
    population_elo,
)
from simagents.errors import SimagentsError, check_seed
from simagents.io import (
    atomic_write_json,
    fresh_folder,
    to_dict,
    write_run_record,
)
from simagents.model import Simulator, SimulatorConfig
from simagents.study.probes import probe_features, probe_report
from simagents.threads import threads
from simagents.train import LossWeights, TrainConfig, check_precision, train

OUTCOMES = ("loss", "draw", "win")
"""Classes of the outcome probe, by final reward −1, 0, +1."""


@dataclass(frozen=True)
class ConnectFourBudget:
    """How much data, training, fine-tuning and evaluation one Connect Four run gets."""

    episodes: int = 9000
    """Training games (equal shares of the five players). Measured at seed 0 with 6,000 steps
    (below): the club and expert labels blunder at 0.030 and 0.026, held-out NLL of the expert
    label 0.67 nats; at 4,500 games and 3,000 steps 0.045, 0.043 and 0.86, at 1,500 and 1,000
    0.090, 0.077 and 1.12. More games alone do not do it: 9,000 at 3,000 steps 0.066 and 0.045."""
    heldout_episodes: int = 400
    """Held-out games (another seed): the players' own figures and the probes."""
    mirror: bool = True
    """Train on each game and its mirror image (:func:`~simagents.envs.connect_four.mirror`, an
    equally likely game of the same player): twice the data for no search."""
    steps: int = 6000
    """Training steps of the simulator. The steps are what sharpen the strong labels, but on
    half the games (4,500) 6,000 steps began to overfit the weak ones (the random label's
    held-out NLL 2.03 nats against 1.95 at 3,000 steps; its player's own 1.93); on these games
    it stays at 1.95. Three times the steps on a third of the games overfit them outright."""
    batch_size: int = 64
    """Windows per training step, each from a random step of a game to its end (drawing whole
    games instead, uniformly or by length, measured no better on the labels' blunders)."""
    length_grouping: int = 4
    """Training steps whose windows are drawn together and batched by length
    (:attr:`~simagents.train.TrainConfig.length_grouping`): a game's window averages a third of
    the context, and 4 cut a training step from 0.38 to 0.16 s (1,000 steps on 1,500 games: 168 s
    against 303 s, labels' blunders and dt's wins within a seed's noise of ungrouped)."""
    lr: float = 1e-3
    """Peak learning rate of the simulator."""
    n_embd: int = 128
    """Simulator width. Measured on these games (held-out action NLL, unconditioned): width 128
    with 4 heads reached 1.64 nats in 500 steps, width 64 with one head 1.71 (4 heads: 1.69)."""
    n_head: int = 4
    """Attention heads per block."""
    n_layer: int = 2
    """Simulator depth; the context holds a whole game."""
    n_return_bins: int = 21
    """Return bins (returns are −1, 0 or +1)."""
    conv_channels: int = 32
    """Channels of the simulator's convolutional board encoder (``SimulatorConfig.obs_image``, the
    planes read as 10x6x7 images, beside the flat planes); 0: the flat planes only. Measured on
    the first eight planes at seed 0 (AMD EPYC, 2026-12-04, 100 games), 32 against 0: the unconditioned
    imitator wins 0.43 against 0.35 (population 0.44), the player probe 0.458 against 0.422 (raw
    board 0.418), held-out NLL club 0.78 / 0.80 and expert 0.62 / 0.63 nats, rl wins 0.82 / 0.75,
    while the labels blunder alike (club 0.028 / 0.030, expert 0.019 / 0.021); training 1,170 s
    against 850 s. At seed 1: imitator 0.34 / 0.30 (population 0.46), NLL club 0.69 / 0.72 and
    expert 0.58 / 0.62, probe 0.458 / 0.460, labels club 0.043 / 0.033 and expert 0.024 / 0.029,
    rl 0.73 / 0.71. Three layers instead of two (seed 0): imitator 0.37, probe 0.453."""
    conv_layers: int = 2
    """3x3 convolutions of that encoder (two see 5x5 cells around each)."""
    observation_loss: float = 1.0
    """Weight of the next-observation (world-model) loss in training; no Connect Four agent reads
    that head, so it only shapes the features the others share. Measured at seed 0 (2026-12-04),
    0.1 against 1: the club and expert labels blunder at 0.030 and 0.022 (0.025, 0.019 at 1),
    the unconditioned imitator wins 0.30 (0.33), edt 0.62 (0.68), rl 0.67 (0.79): no better."""
    losing_moves_loss: float = 0.0
    """Weight of an auxiliary target: for each position of the training games, which columns
    lose (the blunder detector's proof, 6 plies: :func:`~simagents.envs.connect_four.losing_moves`),
    predicted from the state the policy reads and never shown to the simulator as input. 0: the
    data carry no such targets. Measured at the default budget in bf16 (AMD EPYC, 2026-12-07,
    seeds 0 / 1, 300 games): at 1 the simulator finds 90% / 89% of the losing moves of the
    held-out games at 95% precision (``results.json``'s ``losing_moves``), and the expert label
    blunders at 0.016 / 0.017 against 0.017 / 0.019 without, club 0.023 / 0.024 against 0.023 /
    0.028; at 4 0.013 / 0.020 and 0.022 / 0.021.
    A quarter to a half of the expert label's remaining tail is on moves its own head flags
    (docs/connect-four.md); the data take 3 more minutes to prove."""
    dropout: float = 0.0
    """Dropout of the simulator in training (:attr:`~simagents.model.SimulatorConfig.dropout`).
    Measured at seed 0 with every window from the first move (2026-12-04), 0.1 against none: the
    held-out NLL of the expert label 0.69 against 0.64 nats, club 0.78 both, the labels' blunders
    alike (club 0.035 / 0.034, expert 0.018 / 0.022), edt's wins 0.51 against 0.68, training
    1,458 s against 1,187 s: the overfitting seen at 12,000 steps is not what dropout cures here."""
    return_dropout: float = 0.5
    """Share of training windows whose returns are hidden (:attr:`~simagents.train.TrainConfig.return_dropout`):
    only those train the label-conditioned and the unconditioned policies (and the value heads
    ``edt`` reads); the others train ``dt``'s. Measured at seed 0 (2026-12-04), 0.75 against 0.5
    (2026-12-03): the club and expert labels blunder at 0.036 and 0.018 (0.025, 0.019), held-out
    NLL 0.79 and 0.63 nats (0.80, 0.63), the unconditioned imitator wins 0.34 (0.33), dt 0.82
    (0.80), edt 0.75 (0.68), rl 0.81 (0.79): within a seed's noise (100 games: about +-0.05)."""
    label_dropout: float = 0.5
    """Share of the return-hidden windows whose player label is hidden too (unconditioned imitation)."""
    first_step_share: float = 0.5
    """Share of training windows that begin at the game's first move (the others at a uniform
    move), so that the unconditioned policy learns whom a whole game's moves reveal. Measured at
    seed 0 (2026-12-03), shares 0 / 0.25 / 0.5: the unconditioned imitator wins 0.24 / 0.28 / 0.33
    with 0.091 / 0.079 / 0.072 blunders (the population's average 0.44 and 0.076), the club and
    expert labels blunder at 0.030 / 0.028 / 0.025 and 0.026 / 0.021 / 0.019 (held-out NLL 0.83 /
    0.81 / 0.80 and 0.67 / 0.65 / 0.63 nats); training takes 1,206 s at 0.25 and 1,384 s at 0.5
    on the Intel Xeon, the windows from the first move being the longest. Every window from the
    first move (1.0, 2026-12-04): the imitator wins 0.36 with 0.072 blunders, club and expert
    0.034 and 0.022 (NLL 0.78, 0.64), within a seed's noise of 0.5."""
    eval_games: int = 300
    """Games each agent plays against the reference opponent (outcomes, blunders, move statistics).
    At 100 a win rate near 0.7 is only known to about +-0.05: the same fine-tuned rl policy (seed
    0, 2026-12-04) won 0.69 of 100 games and 0.79 of 300 others, enough to reorder the agents.
    300 cost about 2 minutes more than 100 (an imitator's 100 games take 2-4 s here)."""
    elo_games: int = 10
    """Games each agent plays against each population player for its Elo."""
    population_games: int = 10
    """Games per ordered pair of players in the round robin that rates the population."""
    rl_iterations: int = 150
    """PPO iterations of the ``rl`` agent against the reference opponent. Measured on the quick
    study's simulator (seed 0), wins in 100 games: 0.35 after 30 iterations of 16 games (6 s),
    0.33 after 300 of 16, 0.53 after 60 of 64 (51 s), 0.58 after 150 of 64 (135 s); the
    unconditioned imitator it starts from wins 0.14."""
    rl_episodes: int = 64
    """Games per PPO iteration: 16 leave the policy gradient too noisy to climb (see above)."""
    rl_kl_coef: float = 0.01
    """Weight of the KL penalty from the pre-trained policy while fine-tuning. Measured on the
    default budget's seed-0 simulator (learning rate 2e-3, 2026-12-05, 300 games; head only): 0
    wins 0.78 against 0.79 at 0.01: the penalty is not what holds ``rl`` back."""
    rl_body_lr: float = 3e-5
    """Learning rate of the simulator's body while fine-tuning (``FinetuneConfig.body_lr``; 0
    trains the policy head alone). Measured on the default budget's simulators (learning rate
    2e-3, seeds 0 / 1, 2026-12-05, 300 games at the study's evaluation seed), against the head
    alone: wins 0.86 / 0.83 against 0.79 / 0.80 (dt 0.87 / 0.86), move entropy 0.09 / 0.08
    against 0.19 / 0.17, KL to the data 0.43 / 0.42 against 0.34 / 0.32, in about 190 s against
    155 s. 1e-4 swung between seeds (0.80 / 0.66), 5e-5 won 0.81 at seed 1, and 300 iterations
    at 3e-5 0.88 / 0.84 in twice the time. With the head alone, a learning rate of 1e-2 (0.77)
    or 128 games per iteration (0.80) did no better at seed 0."""
    precision: str = "fp32"
    """Arithmetic of the simulator's training steps (:attr:`~simagents.train.TrainConfig.precision`;
    ``simagents testbed connect_four --precision bf16``): ``bf16`` runs the forward pass in
    bfloat16, weights and optimiser in fp32. Measured at seed 0 on a 2-core Intel Xeon with AMX
    (2026-12-06): training 839 s against 1,042 s, the whole run 1,453 s against 1,605 s, every
    figure within a seed's noise of fp32's (the unconditioned imitator wins 0.34 / 0.37, the
    club and expert labels blunder at 0.025 / 0.025 and 0.016 / 0.018, dt wins 0.85 / 0.86, rl
    0.81 / 0.82, the player probe 0.451 / 0.436). On a CPU without bfloat16 units it is slower."""
    threads: int = 1
    """torch and numpy BLAS threads (restored afterwards)."""

    def __post_init__(self) -> None:
        check_precision(self.precision, "Connect Four budget field precision")
        if not self.losing_moves_loss >= 0:
            raise SimagentsError(
                f"Connect Four budget field losing_moves_loss={self.losing_moves_loss}: must be 0 (off) or more"
            )


BUDGETS = {
    # About 24 minutes at one thread on the AMD EPYC (1,410-1,465 s, 2026-12-05, sharing the 2
    # cores with another run: data 126-128 s, training 966-1,016 s, rl 209-213 s with the body
    # learning too; 1,200-1,300 s on 2026-12-04 with the head alone, rl about 100 s).
    "default": ConnectFourBudget(),
    # Twice the default's games and steps: 37 min at one thread (2,241 / 2,245 s at seeds 0 / 1,
    # 2026-12-05, sharing the 2 cores: data 248 s, training 1,834-1,842 s). The expert label
    # blunders at 0.013 / 0.011 (default 0.018 / 0.021), club 0.025 / 0.017, casual 0.057 /
    # 0.055; dt wins 0.83 / 0.80, rl 0.83 / 0.80, the unconditioned imitator 0.37 / 0.32.
    "full": ConnectFourBudget(episodes=18000, steps=12000),
    # For tests: the plumbing with a simulator that learns a little, in well under a minute.
    "fast": ConnectFourBudget(
        episodes=300,
        heldout_episodes=60,
        steps=60,
        batch_size=32,
        n_embd=32,
        n_head=2,
        n_layer=1,
        eval_games=10,
        elo_games=2,
        population_games=2,
        rl_iterations=2,
        rl_episodes=4,
    ),
    # Seconds: checks the plumbing (the study's smoke profile), learns nothing.
    "smoke": ConnectFourBudget(
        episodes=10,
        heldout_episodes=10,
        steps=2,
        batch_size=4,
        n_embd=16,
        n_layer=1,
        eval_games=2,
        elo_games=1,
        population_games=1,
        rl_iterations=1,
        rl_episodes=2,
    ),
}

DEFAULT_AGENTS = (
    "imitation",
    "imitation[labels]",
    "dt",
    "dt[temperature=1]",
    "edt",
    "edt[value=bayes]",
    "rl",
)
"""``imitation[labels]`` stands for one conditioned imitator per player; ``edt[value=bayes]``
is the evidential planner reading its action values by Bayes' rule over the return-conditioned
policy (:func:`~simagents.agents.planner.bayes_action_values`: the data are all observational).
``dt[temperature=1]`` samples the win-conditioned policy, as ``rl`` samples its own: the one
like-for-like comparison of what conditioning on a win and fine-tuning to win make of the
simulated population (measured at the default budget, seeds 0 / 1, 2026-12-05: wins 0.65 /
0.61 against rl's 0.83 / 0.84, move entropy 0.62 / 0.67 against 0.06 / 0.04, KL to the data
0.10 / 0.10 against 0.45 / 0.47; the mode, ``dt``, wins 0.86 / 0.86 and rl's mode 0.87 / 0.85)."""


def resolve_budget(budget: ConnectFourBudget | str) -> ConnectFourBudget:
    if isinstance(budget, ConnectFourBudget):
        return budget
    if budget not in BUDGETS:
        raise SimagentsError(f"budget {budget!r} is not one of: {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def expand_agents(agents: Sequence[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(entry name, registered agent, options)`` per agent; ``imitation[NAME]`` conditions
    imitation on player NAME, ``imitation[labels]`` on each player in turn; ``AGENT[KEY=VALUE,...]``
    builds AGENT with those options (``edt[value=bayes]``), as every testbed does."""
    from simagents.study.testbed import check_agents  # one agent check for every testbed

    out: list[tuple[str, str, dict[str, Any]]] = []
    for name in agents:
        base, _, inside = name.strip().removesuffix("]").partition("[")
        if base != "imitation" or not name.strip().endswith("]") or not inside or "=" in inside:
            check_agents([name])
            out.append((name, *parse_agent_spec(name)))
            continue
        labels = list(POPULATION) if inside == "labels" else [inside]
        unknown = [x for x in labels if x not in POPULATION]
        if unknown:
            raise SimagentsError(
                f"agent {name!r}: no player {unknown[0]!r}; players are {', '.join(POPULATION)}"
            )
        out += [(f"imitation[{x}]", "imitation", {"label": x}) for x in labels]
    return out


def run_connect_four(
    params: Mapping[str, Any] | None = None,
    out: Path | str = Path("runs/connect_four"),
    budget: ConnectFourBudget | str = "default",
    seed: int = 0,
    progress: bool = False,
    agents: Sequence[str] = DEFAULT_AGENTS,
) -> dict[str, Any]:
    """Run the Connect Four testbed; write and return ``out/results.json``'s content.

    Bad parameters, agents or an existing non-empty ``out`` raise :class:`SimagentsError`
    before anything is written; on any error the folder is removed again."""
    testbed = get_testbed("connect_four")
    full_params = testbed.check_params(params)
    entries = expand_agents(agents)
    check_seed(seed, "testbed connect_four")
    budget = resolve_budget(budget)
    with fresh_folder(out, "testbed run") as folder, threads(budget.threads):
        return _run(full_params, entries, seed, folder, budget, progress)


def agent_metrics(
    agent: Agent,
    params: dict[str, Any],
    budget: ConnectFourBudget,
    ratings: dict[str, float],
    data_moves: list[Move],
    seed: int,
    simulator: Simulator,
    player: Player | None = None,
) -> dict[str, Any]:
    """An agent's games against the reference opponent and the population, measured;
    ``simulator`` (the population's) says whom the agent's games look like to it. With the
    ``player`` an imitator is told it is, also ``fidelity``: its policies in the positions of
    its games against that player's (:func:`~simagents.envs.connect_four_metrics.policy_fidelity`)."""
    games = play_games(agent, budget.eval_games, seed=seed, **params)
    rates = outcome_rates(games.outcomes)
    policies = [policy for policy in games.policies if policy is not None]
    # Drew every move from a policy it reported (imitation, dt, rl), not an argmax (edt).
    sampling = len(policies) == len(games.moves)
    fidelity = {}
    if player is not None and sampling:
        fidelity["fidelity"] = policy_fidelity(player, [position for position, _ in games.moves], policies)
    return {
        **fidelity,
        **rates,
        "inferred_player": inferred_player(simulator, games.episodes),
        "mean_return": float(np.mean(games.outcomes)),
        **blunder_rate(games.moves),
        **move_statistics(games.moves, data_moves, games.policies),
        "sampling": sampling,
        **elo_against_population(
            agent, ratings, budget.elo_games, seed=seed + 50_000, agent_first=params["agent_first"]
        ),
        "games": float(budget.eval_games),
    }


def _run(
    params: dict[str, Any],
    entries: list[tuple[str, str, dict[str, Any]]],
    seed: int,
    folder: Path,
    budget: ConnectFourBudget,
    progress: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    testbed = get_testbed("connect_four")
    config = {
        "testbed": "connect_four",
        "params": params,
        "agents": [name for name, _, _ in entries],
        "seed": seed,
        "budget": to_dict(budget),
    }
    write_run_record(folder, config)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    games = demonstrations(params, budget.episodes, np.random.default_rng([seed, 0]))
    heldout = demonstrations(params, budget.heldout_episodes, np.random.default_rng([seed, 1]))
    if budget.losing_moves_loss:
        games = [with_losing_moves(game, BLUNDER_DEPTH) for game in games]
    if budget.mirror:
        games += [mirror(game) for game in games]
    env = ConnectFourEnv(**params)
    path = save_dataset(
        games,
        folder / "data" / "observational",
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_id=testbed.env_id,
        env_kwargs=params,
        description=f"connect_four: {len(games)} games of the population (simagents testbed)",
    )
    data_moves = moves_of_episodes(games)
    timings["data_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    population = population_figures(heldout, data_moves, budget, seed)
    ratings = {name: population[name]["elo"] for name in POPULATION}
    timings["population_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    model_cfg = SimulatorConfig(
        context_len=max(len(e) for e in games + heldout),
        n_embd=budget.n_embd,
        n_layer=budget.n_layer,
        n_head=budget.n_head,
        n_return_bins=budget.n_return_bins,
        dropout=budget.dropout,
        condition_on_label=True,
    )
    if budget.conv_channels:
        model_cfg = replace(
            model_cfg,
            obs_image=OBSERVATION_IMAGE,
            obs_conv_channels=budget.conv_channels,
            obs_conv_layers=budget.conv_layers,
        )
    train_cfg = TrainConfig(
        data=(str(path),),
        out=folder / "simulator",
        model=model_cfg,
        loss=LossWeights(observation=budget.observation_loss, aux_targets=budget.losing_moves_loss),
        steps=budget.steps,
        batch_size=budget.batch_size,
        length_grouping=budget.length_grouping,
        lr=budget.lr,
        warmup_steps=min(50, budget.steps),
        return_dropout=budget.return_dropout,
        label_dropout=budget.label_dropout,
        first_step_share=budget.first_step_share,
        validation_fraction=0.0,  # the held-out games are their own set
        eval_every=budget.steps,
        log_every=max(budget.steps // 4, 1),
        seed=seed,
        threads=budget.threads,
        precision=budget.precision,
    )
    simulator = Simulator.load(train(train_cfg, progress=progress))
    timings["train_s"] = time.perf_counter() - tick

    results_per_agent: dict[str, Any] = {}
    eval_seed = 10_000 + seed
    for name, agent_name, options in entries:
        tick = time.perf_counter()
        model = simulator
        if agent_name == "rl":
            rl_cfg = FinetuneConfig(
                iterations=budget.rl_iterations,
                episodes=budget.rl_episodes,
                kl_coef=budget.rl_kl_coef,
                body_lr=budget.rl_body_lr,
                seed=seed,
                threads=budget.threads,
            )
            source = {"simulator": str(train_cfg.out), "env_id": testbed.env_id, "env_kwargs": params}
            model = finetune(simulator, ConnectFourEnv(**params), folder / "rl", rl_cfg, source, progress)
        entry = agent_metrics(
            make_agent(agent_name, model, **options),
            params,
            budget,
            ratings,
            data_moves,
            eval_seed,
            simulator,
            POPULATION.get(options.get("label", "")),
        )
        if "label" in options:
            entry["label"] = options["label"]
            entry["data_blunder_rate"] = population[options["label"]]["blunder_rate"]
        results_per_agent[name] = entry
        timings[f"{name}_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    probes = probe_section(simulator, heldout, seed)
    imitation_nll = label_nll(simulator, heldout)
    fidelity = label_fidelity(simulator, heldout)
    seen = losing_moves_section(simulator, heldout) if simulator.aux_head is not None else None
    for name in POPULATION:
        population[name]["inferred_player"] = inferred_player(
            simulator, [e for e in heldout if e.policy == name]
        )
    timings["probes_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - start

    results = {
        "testbed": "connect_four",
        "params": params,
        "seed": seed,
        "theory": testbed.theory(**params),
        "population": population,
        "population_mean": {
            key: float(np.mean([p[key] for p in population.values()]))
            for key in ("win_rate", "blunder_rate", "move_entropy", "kl_to_data", "elo")
        },
        "agents": results_per_agent,
        "probes": probes,
        "label_nll": imitation_nll,
        "label_fidelity": fidelity,
        **({"losing_moves": seen} if seen is not None else {}),
        "data": {
            "path": str(path),
            "episodes": len(games),
            "heldout_episodes": len(heldout),
            "steps": sum(len(e) for e in games),
            "labels": simulator.stats.labels,
            "label_shares": dict(zip(simulator.stats.labels, simulator.stats.label_shares, strict=True)),
        },
        "budget": to_dict(budget),
        "timings": timings,
    }
    atomic_write_json(folder / "results.json", results)
    return results


def population_figures(
    heldout: list[Episode], data_moves: list[Move], budget: ConnectFourBudget, seed: int
) -> dict[str, dict[str, Any]]:
    """Per player: outcome and blunder rates in the held-out games, move entropy and KL to the
    whole data in the positions both reach, and Elo from a round robin (``random`` at 0)."""
    figures = player_metrics(heldout)
    ratings = population_elo(budget.population_games, seed=seed + 90_000)
    out = {}
    for name in POPULATION:
        mine = moves_of_episodes([e for e in heldout if e.policy == name])
        out[name] = {
            **figures[name],
            "mean_return": 2 * figures[name]["score"] - 1,
            **move_statistics(mine, data_moves),
            "elo": ratings[name],
        }
    return out


def labelled_game(simulator: Simulator, game: Episode, labels: Sequence[str | None]) -> dict[str, Tensor]:
    """``game`` as a batch of L windows, one per label in the context (None: unknown), the return
    unknown: what the simulator reads to continue it as each player."""
    T, L = len(game), len(labels)
    return {
        "observations": torch.as_tensor(game.observations[:T])[None].expand(L, -1, -1),
        "returns_to_go": torch.zeros(L, T),
        "return_known": torch.zeros(L, dtype=torch.bool),
        "actions": torch.as_tensor(game.actions)[None].expand(L, -1),
        "interventions": torch.zeros(L, T, dtype=torch.bool),
        "rewards": torch.as_tensor(game.rewards)[None].expand(L, -1),
        "timesteps": torch.arange(T)[None].expand(L, -1),
        "label": torch.tensor([simulator.label_index(label) for label in labels]),
    }


@torch.no_grad()
def move_log_likelihoods(simulator: Simulator, game: Episode, labels: Sequence[str | None]) -> Tensor:
    """(L, T) log-probability of each of ``game``'s moves under the simulator's policy with each
    of the ``labels`` in the context: one forward pass, the game repeated once per label."""
    batch = labelled_game(simulator, game, labels)
    return simulator.action_log_prob(simulator(batch)["return"], batch["actions"])


@torch.no_grad()
def label_fidelity(simulator: Simulator, heldout: list[Episode]) -> dict[str, dict[str, Any]]:
    """Per player: :func:`~simagents.envs.connect_four_metrics.policy_fidelity` of the simulator's
    policy with the player's label in the context, read move by move in the player's own held-out
    games (the policy over legal columns, as the imitator acts): its imitation error alone, apart
    from where an imitator's own moves would lead."""
    out = {}
    for name, player in POPULATION.items():
        positions, policies = [], []
        for game in (e for e in heldout if e.policy == name):
            logits = simulator.action_params(simulator(labelled_game(simulator, game, [name]))["return"])[0]
            for t in range(len(game)):
                position = position_from_observation(game.observations[t])
                legal = torch.as_tensor(position.action_mask() != 0)
                positions.append(position)
                policies.append(torch.softmax(logits[t].masked_fill(~legal, -torch.inf), -1).numpy())
        out[name] = policy_fidelity(player, positions, policies)
    return out


@torch.no_grad()
def losing_moves_section(simulator: Simulator, heldout: list[Episode]) -> dict[str, Any]:
    """What a simulator trained on the losing-moves target (``losing_moves_loss``) sees in the
    held-out games, and what each label does with it.

    ``head``: the target's head read with each game's own label in the context, a move flagged
    where its probability passes 0.5, against the engine's proof: ``recall`` and ``precision``
    over the legal moves, ``auc`` (the chance that a losing move scores above a safe one),
    ``losing_share``. Per label, in its player's positions where some move is safe and none wins:
    ``losing_mass`` (probability per position on losing moves) and ``flagged_mass`` (the part on
    moves the head flags): whether a label's losing moves are ones the simulator cannot see or
    ones it sees and plays anyway."""
    aux_head = simulator.aux_head
    if aux_head is None:
        raise ValueError("losing_moves_section reads a simulator trained with losing_moves_loss")
    scores, truths = [], []
    labels: dict[str, dict[str, float]] = {}
    for name in POPULATION:
        losing_mass, flagged_mass, positions = 0.0, 0.0, 0
        for game in (e for e in heldout if e.policy == name):
            hidden = simulator(labelled_game(simulator, game, [name]))["return"][0]  # (T,d)
            flags = torch.sigmoid(aux_head(hidden)).numpy()
            logits = simulator.action_params(hidden)
            for t in range(len(game)):
                position = position_from_observation(game.observations[t])
                legal = position.action_mask() != 0
                truth = losing_moves(position, BLUNDER_DEPTH) != 0
                scores.append(flags[t][legal])
                truths.append(truth[legal])
                if truth[legal].all() or position.winning_moves():
                    continue
                policy = torch.softmax(logits[t].masked_fill(torch.as_tensor(~legal), -torch.inf), -1).numpy()
                losing_mass += float(policy[truth].sum())
                flagged_mass += float(policy[truth & (flags[t] > 0.5)].sum())
                positions += 1
        labels[name] = {
            "losing_mass": losing_mass / max(positions, 1),
            "flagged_mass": flagged_mass / max(positions, 1),
            "positions": float(positions),
        }
    head = detection_scores(np.concatenate(truths), np.concatenate(scores))
    return {"head": head, "labels": labels}


def detection_scores(truth: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """How well ``score`` (N,) finds the True entries of ``truth`` (N,) bool: ``recall`` and
    ``precision`` of ``score > threshold``, ``auc`` (the chance that a true entry scores above a
    false one; ties count as below), ``losing_share`` (the share of true entries), ``moves`` (N)."""
    flagged = score > threshold
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    auc = (ranks[truth].sum() - positives * (positives + 1) / 2) / max(positives * negatives, 1)
    return {
        "recall": float((flagged & truth).sum() / max(positives, 1)),
        "precision": float((flagged & truth).sum() / max(int(flagged.sum()), 1)),
        "auc": float(auc),
        "losing_share": float(truth.mean()),
        "moves": float(len(truth)),
    }


@torch.no_grad()
def label_nll(simulator: Simulator, heldout: list[Episode]) -> dict[str, dict[str, float]]:
    """Per player: the mean negative log-likelihood (nats per move) of its held-out moves under
    the simulator's policy with its own label in the context, and with the label unknown."""
    out = {}
    for name in POPULATION:
        games = [e for e in heldout if e.policy == name]
        own, unknown = 0.0, 0.0
        for game in games:
            log_likelihood = move_log_likelihoods(simulator, game, [name, None]).sum(-1)
            own -= float(log_likelihood[0])
            unknown -= float(log_likelihood[1])
        moves = max(sum(len(g) for g in games), 1)
        out[name] = {"own_label": own / moves, "unknown_label": unknown / moves}
    return out


@torch.no_grad()
def inferred_player(simulator: Simulator, games: Sequence[Episode]) -> dict[str, float]:
    """Whom the simulator takes the games' player for: per player, the posterior probability of
    its label given all of a game's moves (Bayes' rule over the label-conditioned policies, the
    prior the data's label shares), averaged over the games.

    Under a simulator that is a Bayes mixture of its labels, a game of its own unconditioned
    imitator averages back to the prior (the posterior is a martingale under the mixture's own
    draws); a shift is the imitator playing unlike the population it imitates."""
    players = list(POPULATION)
    shares = label_shares(simulator)[[simulator.stats.labels.index(p) for p in players]]
    log_prior = torch.log(shares / shares.sum())
    posteriors = []
    for game in games:
        evidence = move_log_likelihoods(simulator, game, players).sum(-1)
        posteriors.append(torch.softmax(log_prior + evidence.double(), -1))
    mean = torch.stack(posteriors).mean(0)
    return {p: float(v) for p, v in zip(players, mean, strict=True)}


def probe_section(simulator: Simulator, heldout: list[Episode], seed: int) -> dict[str, Any]:
    """Linear probes on the held-out games: the player moving (one of five) and the game's outcome."""
    features = probe_features(simulator, heldout)
    players = list(POPULATION)
    player = np.array([players.index(heldout[i].policy) for i in features.episode])
    outcome = np.array([int(np.sign(heldout[i].episode_return)) + 1 for i in features.episode])
    return {
        "feature": "final hidden state at the return token (label and return unknown), per move",
        "player": {**probe_report(features, player, seed=seed), "classes": players},
        "outcome": {**probe_report(features, outcome, seed=seed), "classes": list(OUTCOMES)},
    }


def format_results(results: dict[str, Any]) -> str:
    """A compact table: per player and agent, outcomes, blunders, move statistics and Elo; the probes."""
    header = ("", "win", "draw", "loss", "blunder", "lose in 2/4/6", "entropy", "KL", "Elo")
    rows: list[tuple[str, ...]] = [header]

    def row(name: str, r: dict[str, Any]) -> tuple[str, ...]:
        outcomes = [r["win_rate"], r["draw_rate"], r["loss_rate"], r["blunder_rate"]]
        by_plies = "/".join(f"{v:.3f}" for v in r.get("losing_move_rate_by_plies", {}).values()) or "-"
        return (
            name,
            *(f"{v:.3f}" for v in outcomes),
            by_plies,
            f"{r['move_entropy']:.3f}",
            f"{r['kl_to_data']:.3f}",
            f"{r['elo']:.0f}",
        )

    rows += [row(f"player {name}", r) for name, r in results["population"].items()]
    rows += [row(name, r) for name, r in results["agents"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"connect_four, seed {results['seed']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for target in ("player", "outcome"):
        p = results["probes"][target]
        lines.append(
            f"probe {target}: hidden {p['hidden']:.3f}, raw board {p['raw']:.3f}, chance {p['chance']:.3f}"
        )
    for label, f in results.get("label_fidelity", {}).items():
        lines.append(
            f"label {label} in its player's positions: {f['blunder_mass']:.3f} blunder probability per move "
            f"(player {f['player_blunder_mass']:.3f}; win missed / lose in 2, 4, 6: {blunder_kinds(f)}), "
            f"KL from the player {f['kl_from_player']:.3f}"
        )
    return "\n".join(lines)
