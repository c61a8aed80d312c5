"""The command line: a thin layer over the library, one subcommand per step of the pipeline.

User mistakes raise :class:`SimagentsError`; they are printed on one line and the
command exits with status 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import tyro

from simagents.errors import SimagentsError
from simagents.io import atomic_write_json, option_value, read_json


def collect_command(config: Annotated[Any, tyro.conf.arg(name="")]) -> None:
    """Run behaviour policies in an env and write a Minari dataset with a policy label per episode."""
    from simagents.data.collect import collect

    path = collect(config)
    print(f"wrote {path}")


def train_command(config: Annotated[Any, tyro.conf.arg(name="")], resume: bool = False) -> None:
    """Train a simulator on one or more Minari datasets; --resume continues a run exactly."""
    from simagents.train import train

    run = train(config, resume=resume, progress=sys.stderr.isatty())
    print(f"trained {run}")


def info_command(run: tyro.conf.Positional[Path]) -> None:
    """Print a run's configuration, data, progress and latest metrics."""
    from simagents.model import Simulator, resolve_checkpoint

    checkpoint = resolve_checkpoint(run)
    model = Simulator.load(checkpoint)
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "observation_space": str(model.observation_space),
        "action_space": str(model.action_space),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": read_json(checkpoint / "config.json", "simulator config")["model"],
    }
    if (run / "config.json").is_file() and (run / "checkpoints").is_dir():
        config = read_json(run / "config.json", "run config")
        summary["data"] = config.get("data")
        summary["steps"] = config.get("steps")
    metrics_file = run / "metrics.jsonl"
    if metrics_file.is_file():
        lines = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        if lines:
            summary["last_step"] = lines[-1]["step"]
            evals = [m for m in lines if any(k.startswith("eval/") for k in m)]
            summary["last_metrics"] = evals[-1] if evals else lines[-1]
    print(json.dumps(summary, indent=2))


def parse_pairs(items: tuple[str, ...], flag: str, example: str) -> dict[str, str]:
    """Repeatable ``key=value`` arguments as a dict of text values; malformed or repeated keys are errors."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SimagentsError(f"{flag} {item!r}: expected key=value, e.g. {flag} {example}")
        if key in pairs:
            raise SimagentsError(f"{flag} {key} is given twice")
        pairs[key] = value.strip()
    return pairs


def parse_options(
    options: tuple[str, ...], flag: str = "--option", example: str = "target=450"
) -> dict[str, Any]:
    """Agent options (or env keyword arguments, ``flag`` "--param"); values are read as JSON where
    they parse (numbers, true, null), else as text."""
    return {key: option_value(value) for key, value in parse_pairs(options, flag, example).items()}


def env_of_run(run: Path) -> tuple[str, dict[str, Any]]:
    """The env id and keyword arguments that a simulator's training data was collected with, as
    recorded in its datasets (or, for a fine-tuned one, its ``finetune.json``): --env's default."""
    from simagents.agents.rl import FINETUNE_FILE
    from simagents.data.minari_io import dataset_header

    folder = run.expanduser().absolute()
    if (folder / FINETUNE_FILE).is_file():
        source = read_json(folder / FINETUNE_FILE, "fine-tuning record")
        if isinstance(source, dict) and isinstance(source.get("env"), str):
            return source["env"], dict(source.get("env_kwargs") or {})
    if folder.parent.name == "checkpoints":
        folder = folder.parent.parent  # a checkpoint folder: its run's record
    config = read_json(folder / "config.json", "run config") if (folder / "config.json").is_file() else {}
    refs = config.get("data") if isinstance(config, dict) else None
    envs = set()
    for ref in refs if isinstance(refs, list) else ():
        try:
            dataset = dataset_header(ref)
        except SimagentsError as e:
            raise SimagentsError(
                f"{run}: its dataset {ref} cannot be read to find the env it came from ({e}); "
                "pass the env with --env ID"
            ) from None
        if dataset.env_id:
            envs.add((dataset.env_id, json.dumps(dataset.env_kwargs, sort_keys=True)))
    if len(envs) != 1:
        why = "its datasets name different envs" if envs else "no dataset of it names its env"
        raise SimagentsError(f"{run}: {why}; pass the env to play in with --env ID (and --param key=value)")
    env_id, kwargs = envs.pop()
    return env_id, json.loads(kwargs)


def chosen_env(run: Path, env: str | None, param: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """--env and --param as given, or the env of the simulator's data with --param's changes."""
    params = parse_options(param, "--param", "accuracy=0.6")
    if env is not None:
        return env, params
    env_id, kwargs = env_of_run(run)
    return env_id, {**kwargs, **params}


def eval_command(
    run: tyro.conf.Positional[Path],
    agent: str = "dt",
    env: str | None = None,
    param: tuple[str, ...] = (),
    episodes: int = 20,
    seed: int = 0,
    option: tuple[str, ...] = (),
    out: Path | None = None,
    workers: int = 1,
) -> None:
    """Build an agent from a trained simulator and evaluate it in an env.

    Args:
        run: Run folder (or checkpoint folder) of a trained simulator.
        agent: Decision procedure: imitation, dt, edt, cdt, or a registered custom one.
        env: Gymnasium env id (its spaces must match the simulator's); default: the env the
            simulator's data was collected with, and its keyword arguments.
        param: Env keyword arguments as key=value, e.g. --param accuracy=0.6 (with no --env:
            changes to the data's env's).
        episodes: Episodes to play; episode i is seeded seed + i.
        seed: First episode's seed.
        option: Agent options as key=value, e.g. target=max, temperature=0.5, candidates=32.
        out: Write the JSON result here instead of only printing it.
        workers: Play episodes in this many worker processes (one torch thread each); the result
            equals a serial run's with one torch thread.
    """
    from simagents.agents import evaluate, make_agent
    from simagents.data.collect import make_env
    from simagents.data.minari_io import check_env_spaces
    from simagents.model import Simulator

    simulator = Simulator.load(run)
    options = parse_options(option)
    decision_procedure = make_agent(agent, simulator, **options)
    env, env_kwargs = chosen_env(run, env, param)
    environment = make_env(env, env_kwargs)
    check_env_spaces(simulator.observation_space, simulator.action_space, environment, str(run))
    result = evaluate(
        decision_procedure, environment, episodes, seed, progress=sys.stderr.isatty(), workers=workers
    )
    report = {
        "run": str(run),
        "agent": agent,
        "options": options,
        "env": env,
        "env_kwargs": env_kwargs,
        "seed": seed,
        **result.summary(),
    }
    report["returns"] = result.returns
    if out is not None:
        atomic_write_json(out, report)
    print(json.dumps(report, indent=2))


def finetune_command(
    run: tyro.conf.Positional[Path],
    config: Annotated[Any, tyro.conf.arg(name="")],
    out: Path,
    env: str | None = None,
    param: tuple[str, ...] = (),
) -> None:
    """RL fine-tuning (route 4): train a simulator's policy head by policy gradient in an env.

    Args:
        run: Run folder (or checkpoint folder) of a trained simulator.
        out: Folder for the fine-tuned simulator (must be absent or empty); play it with
            `simagents eval OUT --agent rl`.
        env: Gymnasium env id (its spaces must match the simulator's); default: the env the
            simulator's data was collected with, and its keyword arguments.
        param: Env keyword arguments as key=value, e.g. --param delay=1 horizon=10 (with no
            --env: changes to the data's env's).
    """
    from simagents.agents.rl import finetune
    from simagents.data.collect import make_env
    from simagents.data.minari_io import check_env_spaces
    from simagents.model import Simulator

    simulator = Simulator.load(run)
    env, env_kwargs = chosen_env(run, env, param)
    environment = make_env(env, env_kwargs)
    check_env_spaces(simulator.observation_space, simulator.action_space, environment, str(run))
    source = {"run": str(run), "env": env, "env_kwargs": env_kwargs}
    finetune(simulator, environment, out, config, source=source, progress=sys.stderr.isatty())
    print(f"wrote {out}; metrics in {out}/metrics.jsonl")


def study_command(
    profile: str = "quick",
    out: Path | None = None,
    seed: int = 0,
    resume: bool = False,
    seeds: int | None = None,
    only: str = "",
    workers: int = 1,
) -> None:
    """Run the study: collect data, train simulators, build every agent, evaluate, write a report.

    Args:
        profile: quick (one seed; about 26 minutes on 2 cores with --workers 2, most of it the
            Connect Four cell), full (three seeds, 95% confidence intervals, bigger budgets) or
            smoke (seconds, for tests).
        out: Run folder (default runs/<date>-<profile>).
        seed: First seed; the study's seeds are seed, seed+1, ...
        resume: Finish an interrupted study in --out, skipping its finished cells.
        seeds: Number of seeds per cell (default: the profile's).
        only: Comma-separated cells to run, e.g. newcomb,cartpole (default: all).
        workers: Run this many cells at a time in worker processes (one torch thread each); the
            results equal a serial run's with one torch thread.
    """
    from simagents.study.run import run_study

    names = [n.strip() for n in only.split(",") if n.strip()]
    folder = run_study(
        profile=profile,
        out=out,
        seed=seed,
        progress=sys.stderr.isatty(),
        resume=resume,
        seeds=seeds,
        only=names or None,
        workers=workers,
    )
    print(f"wrote {folder}/report.md")


def testbed_command(
    name: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="NAME")],
    out: Path,
    param: tuple[str, ...] = (),
    agents: str = "imitation,dt,edt,cdt",
    seed: int = 0,
    budget: str = "default",
    sweep: tuple[str, ...] = (),
    precision: str = "fp32",
) -> None:
    """Run one decision testbed: data, one simulator, every agent, theory beside measurement.

    Args:
        name: Testbed: newcomb, twin_pd, smoking_lesion, delusion_boxes, gamble, prophecy, connect_four
            (or its env id).
        out: Run folder to create (must be absent or empty); results go to OUT/results.json.
        param: Testbed parameters as key=value, e.g. --param accuracy=0.6 big=1e6 (one --param flag).
        agents: Comma-separated decision procedures to compare, each AGENT or AGENT[KEY=VALUE,...]
            with options, e.g. "edt,edt[horizon=3]" (connect_four also takes imitation[NAME],
            imitation conditioned on player NAME, and imitation[labels], one per player).
        seed: Seed of the data, the training and the evaluation.
        budget: Data, training and evaluation budget: default (minutes; connect_four about 20 min
            at one thread), fast (for tests), smoke (seconds: checks the plumbing, learns nothing), or for
            connect_four full (twice the default's games and steps, about 40 min).
        sweep: prophecy only: values to sweep, e.g. --sweep gamma=0,0.5,0.9,0.99 (the rl agent is
            fine-tuned once per discount; OUT/figures/index_vs_gamma.png plots each agent's index).
        precision: connect_four only: the simulator's training arithmetic, fp32 or bf16 (the
            forward pass in bfloat16, weights in fp32; faster on CPUs with bfloat16 units).
    """
    from simagents.agents.base import split_agent_specs
    from simagents.envs import get_testbed
    from simagents.study.testbed import run_testbed

    testbed = get_testbed(name).name
    if precision != "fp32" and testbed != "connect_four":
        raise SimagentsError(f"--precision applies to the connect_four testbed only, not {name}")
    if testbed == "prophecy":  # Box forecasts, retraining and fine-tuning: its own runner
        from simagents.study.prophecy import DEFAULT_AGENTS, format_results, run_prophecy

        chosen = split_agent_specs(agents)
        if agents == "imitation,dt,edt,cdt":  # the one-shot testbeds' default: use prophecy's own
            chosen = list(DEFAULT_AGENTS)
        results = run_prophecy(
            parse_pairs(param, "--param", "delay=1"),
            chosen,
            seed=seed,
            out=out,
            budget=budget,
            sweep=parse_pairs(sweep, "--sweep", "gamma=0,0.5,0.9,0.99"),
            progress=sys.stderr.isatty(),
        )
        print(format_results(results))
        print(f"wrote {Path(out).expanduser().absolute() / 'results.json'}")
        return
    if sweep:
        raise SimagentsError(f"--sweep applies to the prophecy testbed only, not {name}")
    if testbed == "connect_four":  # games against a population: its own runner
        from dataclasses import replace

        from simagents.study import connect_four

        chosen = split_agent_specs(agents)
        results = connect_four.run_connect_four(
            parse_pairs(param, "--param", "opponent_depth=2"),
            out=out,
            budget=replace(connect_four.resolve_budget(budget), precision=precision),
            seed=seed,
            progress=sys.stderr.isatty(),
            agents=connect_four.DEFAULT_AGENTS if agents == "imitation,dt,edt,cdt" else chosen,
        )
        print(connect_four.format_results(results))
        print(f"wrote {Path(out).expanduser().absolute() / 'results.json'}")
        return

    params = parse_pairs(param, "--param", "accuracy=0.6")  # the testbed converts and checks the values
    names = split_agent_specs(agents)
    results = run_testbed(
        name, params, agents=names, seed=seed, out=out, budget=budget, progress=sys.stderr.isatty()
    )
    print(format_testbed_results(results))
    print(f"wrote {Path(out).expanduser().absolute() / 'results.json'}")


def format_testbed_results(results: dict[str, Any]) -> str:
    """A compact table of a testbed run: per agent, its choices, returns and the theory's choice."""
    from simagents.study.report import fmt  # the report's numbers, read the same way

    def exact(value: Any) -> str:  # a parameter as given: Newcomb's big=1e6 as 1,000,000, not 1e+06
        if isinstance(value, float) and value.is_integer() and abs(value) >= 1e3:
            return f"{value:,.0f}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    params = ", ".join(f"{k}={exact(v)}" for k, v in results["params"].items())
    rows = [("agent", "choice rates", "mean return", "steps", "delusion gap", "theory")]
    for agent, r in results["agents"].items():
        rates = " ".join(f"{choice} {rate:.2f}" for choice, rate in r["choice_rates"].items())
        gap = r.get("delusion_gap")
        rows.append(
            (
                agent,
                rates,
                f"{fmt(r['mean_return'])} ± {fmt(r['std_return'])}",
                f"{r['mean_steps']:.2f}",
                "-" if gap is None else ("+" if gap > 0 else "") + fmt(gap),
                r.get("theory_choice") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{results['testbed']} ({params}), seed {results['seed']}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


PLUGIN_HELP = (
    "Simulators of agents, and the agents you can make from them. "
    "Your own agents and testbeds: --plugin FILE.py or MODULE (repeatable, anywhere on the line) "
    "or SIMAGENTS_PLUGINS=a.py:b.py imports them before the command runs."
)


def main(argv: list[str] | None = None) -> int:
    from simagents.agents.rl import FinetuneConfig
    from simagents.data.collect import CollectConfig
    from simagents.plugins import load_plugins, split_plugin_args
    from simagents.train import TrainConfig

    # tyro reads the dataclass from the annotation; bind the real config types here so that
    # importing this module stays cheap.
    collect_command.__annotations__["config"] = Annotated[CollectConfig, tyro.conf.arg(name="")]
    train_command.__annotations__["config"] = Annotated[TrainConfig, tyro.conf.arg(name="")]
    finetune_command.__annotations__["config"] = Annotated[FinetuneConfig, tyro.conf.arg(name="")]
    commands: dict[str, Callable[..., None]] = {
        "collect": collect_command,
        "train": train_command,
        "info": info_command,
        "eval": eval_command,
        "study": study_command,
        "testbed": testbed_command,
        "finetune": finetune_command,
    }
    try:
        # Plugins register their agents and testbeds before the command looks them up.
        plugins, args = split_plugin_args(sys.argv[1:] if argv is None else argv)
        load_plugins(plugins)
        tyro.extras.subcommand_cli_from_dict(commands, args=args, prog="simagents", description=PLUGIN_HELP)
    except SimagentsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
