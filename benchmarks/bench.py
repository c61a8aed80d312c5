"""Speed (and quality) of our simulator beside Hugging Face's ``DecisionTransformerModel``, in one run.

Run it with ``make bench``: that builds ``benchmarks/.venv`` (our package beside ``transformers`` and
``d3rlpy``, whose gymnasium pin does not fit our main venv) and runs::

    benchmarks/.venv/bin/python benchmarks/bench.py [--quick] [--quality] [--threads N]

It prints one JSON object and writes it to ``benchmarks/results/<date>.json`` (``<date>T<HHMM>.json``
where a run of the same day has that name: a later run keeps the first one).

Method. Both models have the Decision Transformer's reference size: state 11, action 3 (Box),
K=20 timesteps, batch 64, hidden 128, 3 layers, 1 head, MLP 512, GELU, no dropout, fp32, the same
torch thread count, AdamW, action loss only (ours: its Gaussian negative log-likelihood through
``Simulator.loss(heads=("action",))``; HF: mean squared error of its tanh action, its usual loss).
A training step is a real forward, backward and AdamW step on windows cut by our window slicer
from the same synthetic episodes. Other programs share this machine's cores, so absolute numbers
drift from minute to minute: every comparison alternates ours and HF's repeats in one process
(after warm-up) and reports medians, and the JSON records the load average around the run.
On a machine shared with other jobs use ``--threads 1`` (``make bench BENCH_ARGS="--threads 1"``):
with every core taken, a multi-threaded step waits at each parallel region for a descheduled thread
and runs 20-50x slower than alone, for both models, which measures the scheduler, not the models.

``edt16_ms`` scores 16 candidates sampled from the Box policy, which must run before they exist:
two transformer passes per decision. ``edt16_discrete_ms`` is the same model with 16 Discrete
actions: the candidates are known in advance and run in the pass of the step's own tokens.
Our agents' contexts keep half the window when they refill (``min_history``, see
:class:`simagents.agents.SimulatorAgent`), so they act on the last 11 to 20 steps; HF's acts on the
last 20 at every step. ``act_sliding_ms`` is our ``dt`` acting as HF's does (``min_history`` 19):
a pass over the whole window per action. ``act_mean_ms`` is our default ``dt``'s mean, with
its refills (a pass over the 10 steps kept, every 10 steps), where ``act_ms`` is the median.

``act_torch_ops`` counts torch operator calls per action (top-level aten ops under torch.profiler),
each a few microseconds of dispatch at batch 1; our transformer pass is one compiled numba call
(``simagents.kernels``), which the count does not see. ``train_compiled_*``
is our training step with the loss under ``torch.compile`` (inductor, needs a C++ compiler; skip with
``--no-compile``), timed interleaved with the eager step: its compile seconds and its speed.

Our model writes 4 tokens per timestep (o, R, a, r), HF's 3 (R, s, a): ``train_tokens_per_s``
counts each model's own tokens, as the issue asks; ``train_window_speedup`` is the ratio of
training steps per second on the same batch of windows, the stricter number. With the action
loss only, our last block runs its queries, MLP and final norm on the return tokens alone (the
only ones that loss reads; ``Simulator.loss`` does this for any subset of heads), HF's on all
of its tokens: that is most of the difference in ``train_gflop_per_step``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from simagents.agents import make_agent
from simagents.data.episodes import episode_from_arrays
from simagents.data.windows import WindowSampler
from simagents.io import atomic_write_json
from simagents.model import TOKENS_PER_STEP, Simulator, SimulatorConfig, Statistics
from simagents.threads import set_threads
from simagents.train import step_arithmetic

OBS, ACT = 11, 3
REFERENCE = {"n_embd": 128, "context_len": 20, "n_layer": 3, "n_head": 1, "mlp_ratio": 4, "batch": 64}
MAX_TIMESTEP = 1000
RETURN_HIGH = 3600.0
HF_TOKENS_PER_STEP = 3  # R, s, a
RESULTS = Path(__file__).parent / "results"


def result_path(now: datetime.datetime, suffix: str = "") -> Path:
    """``RESULTS/<date><suffix>.json``, or ``<date>T<HHMM><suffix>.json`` where a run of the same
    day has the first name: a later run keeps the earlier one."""
    date = now.date().isoformat()
    first = RESULTS / f"{date}{suffix}.json"
    return RESULTS / f"{date}T{now:%H%M}{suffix}.json" if first.exists() else first


# ---- the two models, same size ------------------------------------------------------------------


def our_model(n_embd: int, context_len: int, discrete_actions: int = 0) -> Simulator:
    """The reference size; ``discrete_actions=N``: N Discrete actions instead of the Box of ACT."""
    torch.manual_seed(0)
    box = discrete_actions == 0
    stats = Statistics(
        obs_mean=[0.0] * OBS,
        obs_std=[1.0] * OBS,
        act_low=[-1.0] * ACT if box else [],
        act_high=[1.0] * ACT if box else [],
        return_low=0.0,
        return_high=RETURN_HIGH,
        reward_scale=5.0,
        episode_return_percentiles=np.linspace(0, RETURN_HIGH, 21).tolist(),
    )
    cfg = SimulatorConfig(
        context_len=context_len,
        n_embd=n_embd,
        n_layer=REFERENCE["n_layer"],
        n_head=REFERENCE["n_head"],
        mlp_ratio=REFERENCE["mlp_ratio"],
        max_timestep=MAX_TIMESTEP,
    )
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    act_space: gym.Space[Any] = (
        gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32) if box else gym.spaces.Discrete(discrete_actions)
    )
    return Simulator(cfg, obs_space, act_space, stats)


def hf_model(n_embd: int, context_len: int) -> torch.nn.Module:
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(0)
    config = DecisionTransformerConfig(
        state_dim=OBS,
        act_dim=ACT,
        hidden_size=n_embd,
        max_length=context_len,
        max_ep_len=MAX_TIMESTEP,
        n_layer=REFERENCE["n_layer"],
        n_head=REFERENCE["n_head"],
        n_inner=REFERENCE["mlp_ratio"] * n_embd,
        activation_function="gelu",  # exact GELU, as ours (HF's default is ReLU)
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return DecisionTransformerModel(config)


def synthetic_sampler(context_len: int, episodes: int = 8, length: int = 300) -> WindowSampler:
    """Random-walk episodes with the reference spaces, cut into windows by our one window slicer."""
    rng = np.random.default_rng(0)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)
    made = [
        episode_from_arrays(
            observations=rng.normal(size=(length + 1, OBS)).cumsum(0) * 0.1,
            actions=rng.uniform(-1, 1, (length, ACT)),
            rewards=rng.uniform(0, 10, length),
            terminations=np.eye(1, length, length - 1, dtype=bool)[0],
            truncations=np.zeros(length, dtype=bool),
            observation_space=obs_space,
            action_space=act_space,
        )
        for _ in range(episodes)
    ]
    return WindowSampler(made, context_len)


def training_steps(
    context_len: int, n_embd: int, batch: int, with_hf: bool, precision: str = "fp32"
) -> tuple[Callable[[], None], Callable[[], None] | None, dict[str, float]]:
    """One real training step (forward, backward, AdamW) of ours and of HF's on the same windows.

    ``precision="bf16"`` runs both forward passes in our trainer's bfloat16 context
    (:func:`simagents.train.step_arithmetic`: autocast, plain attention; weights and AdamW stay
    fp32). Also returns the FLOPs of each step, counted by torch's FlopCounterMode (matmuls and
    attention)."""
    windows = synthetic_sampler(context_len).sample(np.random.default_rng(1), batch)
    ours_batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    ours_batch["return_known"] = torch.ones(batch, dtype=torch.bool)
    ours = our_model(n_embd, context_len).train()
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def ours_step() -> None:
        with step_arithmetic(precision):
            loss = ours.loss(ours_batch, heads=("action",))["action"]
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()

    flops = {"ours": count_flops(ours, ours_step)}
    if not with_hf:
        return ours_step, None, flops

    hf = hf_model(n_embd, context_len).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    states = ours_batch["observations"]
    actions = ours_batch["actions"]
    returns = ours_batch["returns_to_go"].unsqueeze(-1)
    timesteps = ours_batch["timesteps"].clamp(max=MAX_TIMESTEP - 1)
    mask = ours_batch["mask"].long()

    def hf_step() -> None:
        with step_arithmetic(precision):
            _, action_preds, _ = hf(
                states=states,
                actions=actions,
                rewards=None,
                returns_to_go=returns,
                timesteps=timesteps,
                attention_mask=mask,
                return_dict=False,
            )
            loss = ((action_preds - actions) ** 2)[mask.bool()].mean()
        hf_opt.zero_grad(set_to_none=True)
        loss.backward()
        hf_opt.step()

    flops["hf"] = count_flops(hf, hf_step)
    return ours_step, hf_step, flops


def compiled_training_step(context_len: int, n_embd: int, batch: int) -> tuple[Callable[[], None], float]:
    """Our training step with the loss under ``torch.compile`` (inductor), and its compile seconds."""
    windows = synthetic_sampler(context_len).sample(np.random.default_rng(1), batch)
    ours_batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    ours_batch["return_known"] = torch.ones(batch, dtype=torch.bool)
    ours = our_model(n_embd, context_len).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    loss_fn = torch.compile(lambda b: ours.loss(b, heads=("action",))["action"])

    def step() -> None:
        loss = loss_fn(ours_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # compiles forward and backward
    return step, time.perf_counter() - start


def count_flops(model: torch.nn.Module, step: Callable[[], None]) -> float:
    """FLOPs of one training step (forward + backward), leaving the weights as they were."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with FlopCounterMode(display=False) as counter:
        step()
    model.load_state_dict(saved)
    return float(counter.get_total_flops())


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, per_repeat: int) -> dict[str, float]:
    """Median seconds per call of each function, alternating them (and their order) every repeat."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            for _ in range(per_repeat):
                fns[name]()
            times[name].append((time.perf_counter() - start) / per_repeat)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak_flops(seconds: float = 3.0, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of a square matmul in ``dtype`` in this process, over about ``seconds``."""
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# ---- acting --------------------------------------------------------------------------------------


class HFWindowActor:
    """HF's acting recipe: keep the last K steps and run the whole window for every action."""

    def __init__(self, model: torch.nn.Module, context_len: int, target: float) -> None:
        self.model, self.k, self.target = model.eval(), context_len, target
        self.states = torch.zeros(1, 0, OBS)
        self.actions = torch.zeros(1, 0, ACT)
        self.returns = torch.zeros(1, 0, 1)
        self.timesteps = torch.zeros(1, 0, dtype=torch.long)

    @torch.no_grad()
    def act(self, observation: np.ndarray, reward: float) -> np.ndarray:
        t = self.timesteps.shape[1]
        self.target -= reward if t else 0.0
        keep = self.k - 1
        self.states = torch.cat([self.states[:, -keep:], torch.from_numpy(observation).view(1, 1, OBS)], 1)
        self.actions = torch.cat([self.actions[:, -keep:], torch.zeros(1, 1, ACT)], 1)
        self.returns = torch.cat([self.returns[:, -keep:], torch.full((1, 1, 1), self.target)], 1)
        self.timesteps = torch.cat(
            [self.timesteps[:, -keep:], torch.full((1, 1), min(t, MAX_TIMESTEP - 1), dtype=torch.long)], 1
        )
        _, action_preds, _ = self.model(
            states=self.states,
            actions=self.actions,
            rewards=None,
            returns_to_go=self.returns,
            timesteps=self.timesteps,
            attention_mask=torch.ones(1, self.states.shape[1], dtype=torch.long),
            return_dict=False,
        )
        action = action_preds[0, -1]
        self.actions[0, -1] = action
        return action.numpy()


def acting_latency(steps: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per action mid-episode (window full) for our dt and edt(16) agents and HF's recompute
    (and ``dt_mean``: our dt's mean, refills included), and each one's torch operator calls per action."""
    context_len = REFERENCE["context_len"]
    ours = our_model(REFERENCE["n_embd"], context_len).eval()
    agents = {
        "dt": make_agent("dt", ours, target=RETURN_HIGH),
        "edt16": make_agent("edt", ours, candidates=16),
        "edt16_discrete": make_agent("edt", our_model(REFERENCE["n_embd"], context_len, discrete_actions=16)),
        # the last K steps at every step, as HF's and d3rlpy's act: a pass over the window per action
        "dt_sliding": make_agent("dt", ours, target=RETURN_HIGH, min_history=context_len - 1),
        "hf": HFWindowActor(hf_model(REFERENCE["n_embd"], context_len), context_len, RETURN_HIGH),
    }
    for name in ("dt", "edt16", "edt16_discrete", "dt_sliding"):
        agents[name].reset(seed=0)
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(2 * context_len + steps * repeats, OBS)).astype(np.float32)
    for obs in observations[: 2 * context_len]:  # fill the window (and wrap our cache once)
        for agent in agents.values():
            agent.act(obs, 1.0)
    ops = {
        name: torch_ops_per_act(agent, observations[2 * context_len : 3 * context_len])
        for name, agent in agents.items()
    }
    times: dict[str, list[float]] = {name: [] for name in agents}
    names = list(agents)
    for r in range(repeats):
        chunk = observations[2 * context_len + r * steps : 2 * context_len + (r + 1) * steps]
        for name in names if r % 2 == 0 else reversed(names):
            for obs in chunk:
                start = time.perf_counter()
                agents[name].act(obs, 1.0)
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    # The median is an act without a refill; the mean spreads the refills (a pass over the
    # min_history steps kept, every context_len - min_history steps) over the acts.
    ms["dt_mean"] = 1000 * statistics.fmean(times["dt"])
    return ms, ops


def torch_ops_per_act(agent: object, observations: np.ndarray) -> float:
    """Mean number of torch operator calls per ``act`` (top-level aten ops seen by the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for obs in observations:
            agent.act(obs, 1.0)  # type: ignore[attr-defined]
    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
    ]
    return len(top) / len(observations)


# ---- scaling: one child process per size, so peak memory is that size's alone ---------------


def scaling_child(n_embd: int, context_len: int, batch: int, steps: int) -> dict[str, float]:
    base_mb = current_rss_mb()  # the interpreter and its imports
    ours_step, _, _ = training_steps(context_len, n_embd, batch, with_hf=False)
    ours_step()  # warm-up; allocations of the optimizer state happen here
    start = time.perf_counter()
    for _ in range(steps):
        ours_step()
    seconds = (time.perf_counter() - start) / steps
    # ru_maxrss is the process's high-water mark in KiB (Linux): model, optimizer and activations.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = batch * context_len * TOKENS_PER_STEP
    return {
        "n_embd": n_embd,
        "context_len": context_len,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": peak_mb,
        "training_peak_mb": peak_mb - base_mb,  # model, AdamW state, activations and gradients
    }


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def scaling(threads: int, steps: int) -> list[dict[str, float]]:
    rows = []
    for n_embd in (128, 256, 512):
        for context_len in (20, 50, 100):
            cmd = [
                sys.executable,
                __file__,
                "--threads",
                str(threads),
                "--scaling-child",
                f"{n_embd},{context_len}",
            ]
            cmd += ["--scaling-steps", str(steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
    return rows


# ---- the whole run -----------------------------------------------------------------------------


def speed(args: argparse.Namespace) -> dict[str, object]:
    batch, context_len, n_embd = REFERENCE["batch"], REFERENCE["context_len"], REFERENCE["n_embd"]
    ours_step, hf_step, flops = training_steps(context_len, n_embd, batch, with_hf=True)
    assert hf_step is not None
    for _ in range(args.warmup):
        ours_step()
        hf_step()
    peak_before = matmul_peak_flops()
    step_s = interleaved({"ours": ours_step, "hf": hf_step}, args.repeats, per_repeat=2)
    peak = max(peak_before, matmul_peak_flops())
    windows = batch * context_len
    ours_tps = windows * TOKENS_PER_STEP / step_s["ours"]
    hf_tps = windows * HF_TOKENS_PER_STEP / step_s["hf"]
    compiled: dict[str, object] = {}
    if args.compile:
        compiled_step, compile_s = compiled_training_step(context_len, n_embd, batch)
        with_compiled = interleaved(
            {"ours": ours_step, "compiled": compiled_step}, args.repeats, per_repeat=2
        )
        compiled = {
            "train_compile_s": round(compile_s, 1),
            "train_compiled_step_ms": round(1000 * with_compiled["compiled"], 1),
            "train_eager_step_ms_beside_compiled": round(1000 * with_compiled["ours"], 1),
            "train_compiled_over_eager": round(with_compiled["ours"] / with_compiled["compiled"], 2),
            # train_speedup scaled by compiled-over-eager, each ratio measured interleaved
            "train_compiled_speedup": round(
                ours_tps / hf_tps * with_compiled["ours"] / with_compiled["compiled"], 2
            ),
        }
    bf16 = bf16_training(args, {"ours": ours_step, "hf": hf_step}) if args.bf16 else {}
    act_ms, act_ops = acting_latency(args.act_steps, args.repeats)
    return {
        "train_tokens_per_s": round(ours_tps),
        "hf_train_tokens_per_s": round(hf_tps),
        "train_speedup": round(ours_tps / hf_tps, 2),
        "train_window_speedup": round(step_s["hf"] / step_s["ours"], 2),
        "train_step_ms": round(1000 * step_s["ours"], 1),
        "hf_train_step_ms": round(1000 * step_s["hf"], 1),
        "act_ms": round(act_ms["dt"], 3),
        "act_mean_ms": round(act_ms["dt_mean"], 3),
        "hf_act_ms": round(act_ms["hf"], 3),
        "act_speedup": round(act_ms["hf"] / act_ms["dt"], 2),
        "edt16_ms": round(act_ms["edt16"], 3),
        "edt16_over_dt": round(act_ms["edt16"] / act_ms["dt"], 2),
        "edt16_discrete_ms": round(act_ms["edt16_discrete"], 3),
        "edt16_discrete_over_dt": round(act_ms["edt16_discrete"] / act_ms["dt"], 2),
        "act_sliding_ms": round(act_ms["dt_sliding"], 3),
        "act_sliding_speedup": round(act_ms["hf"] / act_ms["dt_sliding"], 2),
        "act_torch_ops": {name: round(n, 1) for name, n in act_ops.items()},
        **compiled,
        **bf16,
        "train_gflop_per_step": round(flops["ours"] / 1e9, 2),
        "hf_train_gflop_per_step": round(flops["hf"] / 1e9, 2),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(flops["ours"] / step_s["ours"] / peak, 3),
        "hf_mfu": round(flops["hf"] / step_s["hf"] / peak, 3),
    }


def bf16_training(args: argparse.Namespace, fp32_steps: dict[str, Callable[[], None]]) -> dict[str, object]:
    """Both training steps with their forward passes autocast to bfloat16 (``--precision bf16``),
    timed interleaved with the fp32 steps ``fp32_steps`` (``ours``, ``hf``) in one run. Not the
    issue's fp32 comparison: what a CPU with bfloat16 matrix units (AMX) makes of either model."""
    batch, context_len, n_embd = REFERENCE["batch"], REFERENCE["context_len"], REFERENCE["n_embd"]
    ours_bf16, hf_bf16, _ = training_steps(context_len, n_embd, batch, with_hf=True, precision="bf16")
    assert hf_bf16 is not None
    for _ in range(args.warmup):
        ours_bf16()
        hf_bf16()
    step_s = interleaved(
        {**fp32_steps, "ours_bf16": ours_bf16, "hf_bf16": hf_bf16}, args.repeats, per_repeat=2
    )
    windows = batch * context_len
    ours_tps = windows * TOKENS_PER_STEP / step_s["ours_bf16"]
    hf_tps = windows * HF_TOKENS_PER_STEP / step_s["hf_bf16"]
    return {
        "train_bf16_tokens_per_s": round(ours_tps),
        "hf_train_bf16_tokens_per_s": round(hf_tps),
        "train_bf16_speedup": round(ours_tps / hf_tps, 2),
        "train_bf16_over_hf_fp32": round(ours_tps / (windows * HF_TOKENS_PER_STEP / step_s["hf"]), 2),
        "train_bf16_over_fp32": round(step_s["ours"] / step_s["ours_bf16"], 2),
        "hf_train_bf16_over_fp32": round(step_s["hf"] / step_s["hf_bf16"], 2),
        "train_bf16_step_ms": round(1000 * step_s["ours_bf16"], 1),
        "hf_train_bf16_step_ms": round(1000 * step_s["hf_bf16"], 1),
        "bf16_matmul_peak_gflops": round(matmul_peak_flops(dtype=torch.bfloat16) / 1e9, 1),
    }


def machine(threads: int) -> dict[str, object]:
    import transformers

    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch and numpy BLAS threads, for every model",
    )
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not numbers to quote")
    parser.add_argument("--quality", action="store_true", help="also the CartPole comparison with d3rlpy")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile training step"
    )
    parser.add_argument(
        "--no-bf16", dest="bf16", action="store_false", help="skip the bfloat16 (autocast) training steps"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result file (default results/<date>.json, or <date>T<HHMM>.json if that exists)",
    )
    parser.add_argument("--scaling-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.scaling_child:
        n_embd, context_len = (int(v) for v in args.scaling_child.split(","))
        print(json.dumps(scaling_child(n_embd, context_len, REFERENCE["batch"], args.scaling_steps)))
        return
    args.warmup, args.repeats, args.act_steps = (1, 3, 20) if args.quick else (3, 9, 60)

    now = datetime.datetime.now(datetime.UTC)
    date = now.date().isoformat()
    load_before = os.getloadavg()
    started = time.perf_counter()
    result: dict[str, object] = {
        "benchmark": "simagents vs transformers.DecisionTransformerModel",
        "date": date,
        "machine": machine(args.threads),
        "config": {**REFERENCE, "obs": OBS, "act": ACT, "activation": "gelu", "dtype": "float32"},
    }
    result.update(speed(args))
    result["scaling"] = scaling(args.threads, 1 if args.quick else 3)
    if args.quality:
        from quality import quality  # the d3rlpy side is imported only when it runs

        result["quality"] = quality(quick=args.quick)
    result["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(args.out or result_path(now), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
