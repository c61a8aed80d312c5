"""Acting latency at the Decision Transformer's reference size, with and without the KV cache.

State 11, action 3 (Box), K=20 timesteps, hidden 128, 3 layers, 1 head, MLP 512, fp32,
batch 1, mid-episode (window full). The reference, measured in the same run, is our own
model recomputing the whole window for every action (what a cache-less DT does).
Prints one JSON object and writes it to benchmarks/results/<date>-act.json.

    python benchmarks/act_latency.py
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from simagents.agents import make_agent
from simagents.data.episodes import episode_from_arrays
from simagents.data.windows import WindowSampler
from simagents.model import Simulator, SimulatorConfig, Statistics

OBS, ACT, K = 11, 3, 20


def reference_model() -> Simulator:
    torch.manual_seed(0)
    stats = Statistics(
        obs_mean=[0.0] * OBS,
        obs_std=[1.0] * OBS,
        act_low=[-1.0] * ACT,
        act_high=[1.0] * ACT,
        return_low=0.0,
        return_high=3600.0,
        reward_scale=5.0,
        episode_return_percentiles=np.linspace(0, 3600, 21).tolist(),
    )
    cfg = SimulatorConfig(context_len=K, n_embd=128, n_layer=3, n_head=1, mlp_ratio=4, max_timestep=1000)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)
    return Simulator(cfg, obs_space, act_space, stats).eval()


def time_agent(model: Simulator, name: str, steps: int, **options) -> float:
    """Median ms per act over ``steps`` acts after the window has filled."""
    agent = make_agent(name, model, **options)
    agent.reset(seed=0)
    rng = np.random.default_rng(0)
    times = []
    for t in range(2 * K + steps):
        obs = rng.normal(size=OBS).astype(np.float32)
        start = time.perf_counter()
        agent.act(obs, 1.0)
        if t >= 2 * K:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def time_window_recompute(model: Simulator, steps: int) -> float:
    """Median ms per action when the whole K-step window is run through the model every time."""
    rng = np.random.default_rng(0)
    length = K + steps
    episode = episode_from_arrays(
        observations=rng.normal(size=(length + 1, OBS)),
        actions=rng.uniform(-1, 1, (length, ACT)),
        rewards=np.ones(length),
        terminations=np.zeros(length, dtype=bool),
        truncations=np.zeros(length, dtype=bool),
        observation_space=model.observation_space,
        action_space=model.action_space,
    )
    sampler = WindowSampler([episode], K)
    times = []
    for start_step in range(steps):
        windows = sampler.windows(np.array([0]), np.array([start_step]))
        start = time.perf_counter()
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
        batch["return_known"] = torch.tensor([True])
        h = model(batch)
        model.sample_action(h["return"][:, -1], None, 1.0)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> dict:
    model = reference_model()
    steps = 300
    dt_ms = time_agent(model, "dt", steps, target=3600.0)
    edt16_ms = time_agent(model, "edt", steps, candidates=16)
    recompute_ms = time_window_recompute(model, steps)
    result = {
        "benchmark": "act_latency",
        "date": dt.date.today().isoformat(),
        "torch_threads": torch.get_num_threads(),
        "config": {"obs": OBS, "act": ACT, "context_len": K, "n_embd": 128, "n_layer": 3, "n_head": 1},
        "act_ms": round(dt_ms, 3),
        "window_recompute_ms": round(recompute_ms, 3),
        "act_speedup_vs_recompute": round(recompute_ms / dt_ms, 2),
        "edt16_ms": round(edt16_ms, 3),
        "edt16_over_dt": round(edt16_ms / dt_ms, 2),
    }
    out = Path(__file__).parent / "results" / f"{result['date']}-act.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
