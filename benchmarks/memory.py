"""Peak memory of training on a dataset larger than memory: the memory-mapped path against the in-memory one.

Run it with ``make bench-memory`` (``BENCH_MEMORY_ARGS="--steps 1000000"`` for a quick run), or::

    .venv/bin/python benchmarks/memory.py [--steps 10000000] [--reference-steps 1000000] [--train-steps 50]

It prints one JSON object and writes it to ``benchmarks/results/memory-<date>.json``.

Method. A CartPole-shaped dataset (Box(4) float32 observations, Discrete(2) actions, episodes of 100
to 400 steps, random data) of ``--steps`` steps is written as an ordinary Minari dataset, a chunk of
episodes at a time, so that writing it needs little memory either. Each phase then runs in its own
process, whose peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which counts
the memory-mapped pages a process touched as well as its heap) is its figure:

- ``convert``: the HDF5 file streamed into the memory-mapped cache (``simagents.data.flat``);
- ``train``: ``simagents.train`` for ``--train-steps`` steps on the full dataset, reading its windows
  from the memory-mapped cache (its statistics streamed over the whole dataset);
- ``in_memory``: the in-memory path on datasets of ``--reference-steps`` and a quarter of that:
  every episode loaded whole (``load_dataset``), concatenated into an in-memory sampler, statistics
  fitted, and the same training steps. The JSON projects its peak to ``--steps`` along the slope
  between the two sizes (so fixed costs such as torch and the model are not multiplied).

All phases use one torch thread. Disk: about 2.5 GB per 10 million steps under ``--work``
(a temporary folder by default, deleted at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from simagents.io import atomic_write_text

RESULTS = Path(__file__).parent / "results"
OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACT_SPACE = gym.spaces.Discrete(2)
CHUNK_EPISODES = 2000


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def generate(path: Path, steps: int, seed: int) -> dict[str, float]:
    """A random CartPole-shaped Minari dataset of ``steps`` steps, written a chunk of episodes at a time."""
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    from simagents.data.episodes import episode_from_arrays
    from simagents.data.minari_io import save_dataset

    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < steps:
        lengths.append(int(rng.integers(100, 401)))
    lengths[-1] -= sum(lengths) - steps
    if lengths[-1] <= 0:
        lengths.pop()

    def episode(n: int):
        terminations = np.zeros(n, dtype=bool)
        terminations[-1] = True
        return episode_from_arrays(
            observations=rng.normal(size=(n + 1, 4)).astype(np.float32),
            actions=rng.integers(0, 2, size=n),
            rewards=np.ones(n, dtype=np.float32),
            terminations=terminations,
            truncations=np.zeros(n, dtype=bool),
            observation_space=OBS_SPACE,
            action_space=ACT_SPACE,
            policy="random",
        )

    start = time.perf_counter()
    first = [episode(n) for n in lengths[:CHUNK_EPISODES]]
    save_dataset(first, path, observation_space=OBS_SPACE, action_space=ACT_SPACE)
    storage = MinariStorage.read(path / "data")
    for lo in range(CHUNK_EPISODES, len(lengths), CHUNK_EPISODES):
        buffers = []
        for n in lengths[lo : lo + CHUNK_EPISODES]:
            ep = episode(n)
            buffers.append(
                EpisodeBuffer(
                    observations=ep.observations,
                    actions=ep.actions,
                    rewards=ep.rewards,
                    terminations=ep.terminations,
                    truncations=ep.truncations,
                    infos={  # as save_dataset writes them
                        "intervention": np.zeros(n + 1, dtype=bool),
                        "policy_id": np.zeros(n + 1, dtype=np.int64),
                        "block": np.full(n + 1, -1, dtype=np.int64),
                    },
                )
            )
        storage.update_episodes(buffers)
    return {
        "episodes": len(lengths),
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "hdf5_mb": (path / "data" / "main_data.hdf5").stat().st_size / 2**20,
    }


def phase_convert(data: Path, run: Path) -> dict[str, float]:
    from simagents.data.flat import cache_bytes, prepare_cache
    from simagents.train import CACHE_DIR

    start = time.perf_counter()
    _, flat = prepare_cache((str(data),), run / CACHE_DIR)
    return {"seconds": time.perf_counter() - start, "cache_mb": cache_bytes(flat) / 2**20}


def small_config(data: Path, run: Path, train_steps: int):
    from simagents.model import SimulatorConfig
    from simagents.train import TrainConfig

    return TrainConfig(
        data=(str(data),),
        out=run,
        steps=train_steps,
        batch_size=64,
        warmup_steps=10,
        eval_every=train_steps,
        log_every=train_steps,
        threads=1,
        model=SimulatorConfig(n_embd=64, n_layer=2, n_head=2, context_len=20),
    )


def phase_train(data: Path, run: Path, train_steps: int) -> dict[str, float]:
    from simagents.train import train

    start = time.perf_counter()
    train(small_config(data, run, train_steps), progress=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {"seconds": time.perf_counter() - start, "final_loss": last["train/loss"]}


def phase_in_memory(data: Path, run: Path, train_steps: int) -> dict[str, float]:
    """The in-memory path: every episode loaded, concatenated in RAM, then the same training steps."""
    import torch

    from simagents.data.flat import FlatEpisodes
    from simagents.data.windows import WindowSampler
    from simagents.model import Simulator
    from simagents.train import fit_statistics, load_training_data, make_optimizer, training_batch

    torch.set_num_threads(1)
    cfg = small_config(data, run, train_steps)
    start = time.perf_counter()
    dataset = load_training_data(cfg.data)
    episodes = dataset.episodes
    stats = fit_statistics(
        FlatEpisodes.from_episodes(episodes),
        np.arange(len(episodes)),
        dataset.observation_space,
        dataset.action_space,
    )
    sampler = WindowSampler(episodes, cfg.model.context_len)
    loaded = time.perf_counter() - start
    model_cfg = cfg.model.__class__(**{**cfg.model.__dict__, "max_timestep": 401})
    torch.manual_seed(0)
    model = Simulator(model_cfg, dataset.observation_space, dataset.action_space, stats)
    optimizer = make_optimizer(model, cfg)
    for step in range(train_steps):
        total = sum(model.loss(training_batch(sampler, cfg, step)).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return {"seconds": time.perf_counter() - start, "load_seconds": loaded, "final_loss": float(total)}


def phase_baseline() -> dict[str, float]:
    """The interpreter with the same imports and nothing loaded: subtracted before projecting."""
    import torch  # noqa: F401

    import simagents.train  # noqa: F401

    return {}


def run_phase(name: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000_000, help="steps of the large dataset")
    parser.add_argument(
        "--reference-steps", type=int, default=1_000_000, help="steps of the in-memory reference"
    )
    parser.add_argument("--train-steps", type=int, default=50, help="training steps in each training phase")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the datasets (default: a temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:  # one measured phase, in its own process
        phases = {
            "baseline": lambda: phase_baseline(),
            "generate": lambda: generate(args.data, args.steps, seed=0),
            "convert": lambda: phase_convert(args.data, args.run),
            "train": lambda: phase_train(args.data, args.run, args.train_steps),
            "in_memory": lambda: phase_in_memory(args.data, args.run, args.train_steps),
        }
        result = phases[args.phase]()
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="simagents-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small, quarter_ref = work / "big", work / "reference", work / "reference_quarter"
    began = time.perf_counter()
    try:
        generated = run_phase("generate", "--data", str(big), "--steps", str(args.steps))
        run_phase("generate", "--data", str(small), "--steps", str(args.reference_steps))
        run_phase("generate", "--data", str(quarter_ref), "--steps", str(args.reference_steps // 4))
        baseline = run_phase("baseline")
        convert = run_phase("convert", "--data", str(big), "--run", str(work / "run"))
        trained = run_phase(
            "train", "--data", str(big), "--run", str(work / "run"), "--train-steps", str(args.train_steps)
        )
        in_memory, quarter = (
            run_phase(
                "in_memory",
                "--data",
                str(path),
                "--run",
                str(work / path.name),
                "--train-steps",
                str(args.train_steps),
            )
            for path in (small, quarter_ref)
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    # The in-memory path's peak grows with the data: its slope between the two reference sizes,
    # carried on to --steps (fixed costs, torch and the model, stay out of the slope).
    slope = (in_memory["peak_rss_mb"] - quarter["peak_rss_mb"]) / (
        args.reference_steps - args.reference_steps // 4
    )
    projected = in_memory["peak_rss_mb"] + slope * (args.steps - args.reference_steps)
    result = {
        "benchmark": "memory",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "steps": args.steps,
        "episodes": generated["episodes"],
        "train_steps": args.train_steps,
        "torch_threads": 1,
        "generate": generated,
        "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        "convert": convert,
        "train_memmap": trained,
        "in_memory_reference": {"steps": args.reference_steps, **in_memory},
        "in_memory_reference_quarter": {"steps": args.reference_steps // 4, **quarter},
        "in_memory_mb_per_million_steps": slope * 1e6,
        "in_memory_projected_peak_rss_mb": projected,
        "peak_rss_mb": max(convert["peak_rss_mb"], trained["peak_rss_mb"]),
        "target_mb": 4096,
        "under_target": max(convert["peak_rss_mb"], trained["peak_rss_mb"]) < 4096,
        "total_seconds": time.perf_counter() - began,
    }
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    atomic_write_text(RESULTS / f"memory-{stamp}.json", text + "\n")


if __name__ == "__main__":
    main()
