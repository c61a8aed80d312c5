"""Quality beside d3rlpy's discrete Decision Transformer: same CartPole data, same number of updates.

Our side is the product as a user runs it: ``collect`` (mixed-skill CartPole population),
``train`` with its defaults, then the ``dt`` and ``edt`` agents (``edt`` three times: by its
action-value head, by Bayes' rule, ``value="bayes"``, and by a rollout of its world model,
``horizon=3``). d3rlpy's
``DiscreteDecisionTransformer`` gets the same episodes, the same number of updates (each budget
of :data:`UPDATES`) and batch, context and width (K=20, 128, 3 layers, 1 head), its own
defaults otherwise, and the same return target (the best episode return in the data). Every
agent plays the same seeded episodes.
Imported by bench.py with ``--quality``; it needs d3rlpy, so it runs in benchmarks/.venv. Alone,
with several training seeds (each library trained afresh per seed and budget; one seed's 20
episodes can favour either side at the short budgets):

    benchmarks/.venv/bin/python benchmarks/quality.py --seeds 3 --updates 250,500

``--loss action=16,action_value=8 --no-d3rlpy``: our side alone, with those heads' loss weights
(the others at :class:`LossWeights`' defaults); ``--first-seed 3`` runs seeds 3, 4, ... (two
processes on two cores: ``--seeds`` each, different first seeds). ``--episodes 100``: each agent
plays 100 episodes per seed, not 20 (at 500-1,000 updates a seed's mean then has a standard
error of 5-9, against 15-20 with 20).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import tempfile
import time
from pathlib import Path

import d3rlpy
import gymnasium as gym
import numpy as np
import torch

from simagents.agents import evaluate, make_agent
from simagents.data.collect import CollectConfig, collect
from simagents.data.minari_io import Dataset, load_dataset
from simagents.io import atomic_write_json
from simagents.model import Simulator, SimulatorConfig
from simagents.threads import set_threads
from simagents.train import LossWeights, TrainConfig, train

ENV = "CartPole-v1"
EVAL_SEED = 10_000
BATCH = 64
ROLLOUT_HORIZON = 3
"""Steps ``edt[horizon=...]`` rolls the world model forward from each candidate."""
UPDATES = (125, 250, 500, 1000)
"""Budgets of updates compared: at 1,000 all three reach CartPole's ceiling (500), so the
shorter ones are where they can differ."""


def our_agents(target: float, min_history: int | None = None) -> dict[str, tuple[str, dict[str, object]]]:
    """Our agents in the comparison, by the key their returns get (``simagents_KEY``): agent, options."""
    history = {} if min_history is None else {"min_history": min_history}
    return {
        # dt samples at temperature 1 here, as d3rlpy's default softmax action sampler does.
        "dt": ("dt", {"target": target, "temperature": 1.0, **history}),
        "edt": ("edt", history),  # the action-value head
        "edt_bayes": ("edt", {"value": "bayes", **history}),  # Bayes' rule over the return-prompted policy
        # A rollout of the world model: ROLLOUT_HORIZON steps of predicted rewards, then the value head.
        "edt_rollout": ("edt", {"horizon": ROLLOUT_HORIZON, **history}),
    }


def d3rlpy_dataset(episodes: list) -> d3rlpy.dataset.MDPDataset:
    """Our episodes as d3rlpy's flat arrays; an episode's final observation has no action and is dropped."""
    return d3rlpy.dataset.MDPDataset(
        observations=np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float32),
        actions=np.concatenate([e.actions for e in episodes]).reshape(-1, 1),
        rewards=np.concatenate([e.rewards for e in episodes]).astype(np.float32),
        terminals=np.concatenate([e.terminations for e in episodes]).astype(np.float32),
        timeouts=np.concatenate([e.truncations for e in episodes]).astype(np.float32),
        action_space=d3rlpy.ActionSpace.DISCRETE,
    )


def play_d3rlpy(algo: d3rlpy.algos.DiscreteDecisionTransformer, target: float, episodes: int) -> list[float]:
    env = gym.make(ENV)
    actor = algo.as_stateful_wrapper(target_return=target)
    returns = []
    for i in range(episodes):
        actor.reset()
        obs, _ = env.reset(seed=EVAL_SEED + i)
        reward, total, done = 0.0, 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(actor.predict(obs, reward)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def summary(returns_by_seed: list[list[float]]) -> dict[str, object]:
    """Mean and std over every episode of every seed; with several seeds, each seed's mean too."""
    pooled = np.concatenate(returns_by_seed)
    result: dict[str, object] = {"mean": round(float(pooled.mean()), 1), "std": round(float(pooled.std()), 1)}
    if len(returns_by_seed) > 1:
        result["seed_means"] = [round(float(np.mean(r)), 1) for r in returns_by_seed]
    return result


def train_d3rlpy(
    dataset: Dataset, model: SimulatorConfig, updates: int, seed: int = 0
) -> d3rlpy.algos.DiscreteDecisionTransformer:
    d3rlpy.seed(seed)
    torch.manual_seed(seed)
    algo = d3rlpy.algos.DiscreteDecisionTransformerConfig(
        batch_size=BATCH,
        context_size=model.context_len,
        max_timestep=int(max(len(e) for e in dataset.episodes)) + 1,
        num_heads=model.n_head,
        num_layers=model.n_layer,
        encoder_factory=d3rlpy.models.VectorEncoderFactory(
            hidden_units=[model.n_embd], exclude_last_activation=True
        ),
    ).create(device="cpu:0")
    algo.fit(
        d3rlpy_dataset(dataset.episodes),
        n_steps=updates,
        n_steps_per_epoch=updates,
        show_progress=False,
        save_interval=updates + 1,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
    )
    return algo


def quality(
    quick: bool = False,
    updates: tuple[int, ...] | None = None,
    seeds: int = 1,
    first_seed: int = 0,
    loss: LossWeights | None = None,
    with_d3rlpy: bool = True,
    eval_episodes: int | None = None,
    min_history: int | None = None,
    observation_target: str | None = None,
) -> dict[str, object]:
    """Returns of the five agents after each number of updates in ``updates`` (default
    :data:`UPDATES`), every one trained afresh for that many (so each gets its whole
    learning-rate schedule), with training seeds ``first_seed`` to ``first_seed + seeds - 1``
    (ours and d3rlpy's alike; the data and the played episodes stay the same). ``quick``: 60
    episodes, 3 played each, by default after 50 and 100 updates: a check of the plumbing.
    ``loss``: our simulator's loss weights (default :class:`LossWeights`' own);
    ``with_d3rlpy=False`` leaves d3rlpy out (its figures do not depend on ours), to try our
    settings in a third of the time. ``eval_episodes``: episodes each agent plays per training
    seed (default 20, 3 with ``quick``); the first 20 are the default's. ``min_history``: our
    agents' (see :class:`~simagents.agents.SimulatorAgent`; default half the context, 19 acts on
    the last 20 steps as d3rlpy's does). ``observation_target``: our world model's
    (:attr:`~simagents.model.SimulatorConfig.observation_target`; default its default)."""
    loss = loss or LossWeights()
    training_seeds = range(first_seed, first_seed + seeds)
    episodes = 60 if quick else 300
    eval_episodes = eval_episodes or (3 if quick else 20)
    updates = updates or ((50, 100) if quick else UPDATES)
    model = SimulatorConfig()  # K=20, 128 wide, 3 layers, 1 head
    if observation_target is not None:
        model = dataclasses.replace(model, observation_target=observation_target)
    env = gym.make(ENV)
    by_updates: dict[str, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = collect(
            CollectConfig(env=ENV, out=Path(tmp) / "data", policy="mixed", episodes=episodes, seed=0)
        )
        dataset = load_dataset(data)
        target = float(dataset.returns.max())
        for steps in updates:
            returns: dict[str, list[list[float]]] = {}
            for seed in training_seeds:
                run = Path(tmp) / f"run{steps}-{seed}"
                train(
                    TrainConfig(
                        data=(str(data),),
                        out=run,
                        model=model,
                        loss=loss,
                        steps=steps,
                        batch_size=BATCH,
                        seed=seed,
                    ),
                    progress=False,
                )
                simulator = Simulator.load(run)
                for key, (name, options) in our_agents(target, min_history).items():
                    agent = make_agent(name, simulator, **options)
                    played = evaluate(agent, env, eval_episodes, seed=EVAL_SEED).returns
                    returns.setdefault(f"simagents_{key}", []).append(played)
                if with_d3rlpy:
                    theirs = play_d3rlpy(train_d3rlpy(dataset, model, steps, seed), target, eval_episodes)
                    returns.setdefault("d3rlpy_dt", []).append(theirs)
            by_updates[str(steps)] = {key: summary(runs) for key, runs in returns.items()}
    return {
        "env": ENV,
        "data": {
            "episodes": len(dataset.episodes),
            "mean_return": round(float(dataset.returns.mean()), 1),
            "max_return": target,
        },
        "batch": BATCH,
        "eval_episodes": eval_episodes,
        "training_seeds": list(training_seeds),
        "loss_weights": dataclasses.asdict(loss),
        "min_history": min_history,
        "observation_target": model.observation_target,
        "returns_by_updates": by_updates,
    }


def loss_weights(text: str) -> LossWeights:
    """``action=16,action_value=8`` as :class:`LossWeights`; a usage error names the bad item."""
    heads = [f.name for f in dataclasses.fields(LossWeights)]
    weights = {}
    for item in text.split(","):
        head, _, weight = (part.strip() for part in item.partition("="))
        try:
            weights[head] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: write HEAD=WEIGHT, e.g. action=16") from None
        if head not in heads:
            raise argparse.ArgumentTypeError(f"{head!r} is not a head; the heads are {', '.join(heads)}")
    return LossWeights(**weights)


def budgets(text: str) -> tuple[int, ...]:
    """``125,250`` -> (125, 250); a usage error otherwise."""
    try:
        return tuple(int(u) for u in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write whole numbers of updates, e.g. 125,250") from None


def episode_count(text: str) -> int:
    """A whole number of episodes, at least 1; a usage error otherwise."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: write a whole number of episodes, at least 1, e.g. 100")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per budget (from --first-seed)")
    parser.add_argument(
        "--updates",
        type=budgets,
        default=None,
        help=f"budgets of updates, comma-separated (default {','.join(map(str, UPDATES))}; with --quick 50,100)",
    )
    parser.add_argument("--quick", action="store_true", help="a check of the plumbing, not numbers to quote")
    parser.add_argument("--first-seed", type=int, default=0, help="the first training seed")
    parser.add_argument(
        "--loss",
        type=loss_weights,
        default=LossWeights(),
        metavar="HEAD=W,...",
        help="our simulator's loss weights, e.g. action=16,action_value=8 (the others keep their defaults)",
    )
    parser.add_argument("--no-d3rlpy", action="store_true", help="our agents only")
    parser.add_argument(
        "--episodes",
        type=episode_count,
        default=None,
        help="episodes each agent plays per training seed (default 20; with --quick 3)",
    )
    parser.add_argument(
        "--min-history",
        type=int,
        default=None,
        help="the fewest past steps our agents' contexts keep (default half the context; 19: the last 20)",
    )
    parser.add_argument(
        "--observation-target",
        choices=("next", "change"),
        default=None,
        help="what our world model learns for the next observation (default the simulator's default)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default results/<date>-quality.json (<date>T<HHMM>-quality.json if that exists)",
    )
    args = parser.parse_args()
    from bench import result_path  # bench imports this module only with --quality: no cycle at import

    set_threads(1)
    started = time.perf_counter()
    result = quality(
        quick=args.quick,
        updates=args.updates,
        seeds=args.seeds,
        first_seed=args.first_seed,
        loss=args.loss,
        with_d3rlpy=not args.no_d3rlpy,
        eval_episodes=args.episodes,
        min_history=args.min_history,
        observation_target=args.observation_target,
    )
    result["seconds"] = round(time.perf_counter() - started)
    out = args.out or result_path(datetime.datetime.now(datetime.UTC), "-quality")
    atomic_write_json(out, result)
    print(out)


if __name__ == "__main__":
    main()
