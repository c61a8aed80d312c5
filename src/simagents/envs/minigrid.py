"""MiniGrid DoorKey as a control task with simagents-friendly spaces, and its scripted expert.

``simagents/DoorKey-5x5-v0`` wraps MiniGrid's ``DoorKeyEnv``: pick up the key, unlock the
door, walk to the goal. MiniGrid observes a dict (an egocentric image, a direction and a
mission string) and offers seven actions; the simulator wants one ``Box`` and a small
``Discrete``, so:

- **observation**: ``Box(0, 10, (2 * view * view + 4,), float32)``: the partial view's
  object-index channel, then its state channel (door open 0 / closed 1 / locked 2), both
  flattened in MiniGrid's ``[x, y]`` order, then the agent's direction one-hot. The colour
  channel is left out: DoorKey has one key and one door, both yellow. A carried key shows
  in the view at the agent's own cell, as MiniGrid draws it.
- **actions**: ``Discrete(5)``: ``left``, ``right``, ``forward``, ``pickup``, ``toggle``
  (MiniGrid's 0, 1, 2, 3, 5). ``drop`` and ``done`` do nothing useful in DoorKey, and
  leaving them out makes a random policy less hopeless.
- **reward**: MiniGrid's, ``1 - 0.9 * steps / max_steps`` on reaching the goal, else 0;
  truncation at ``max_steps`` (``10 * size**2``, 250 for 5x5).

Keyword arguments of ``gymnasium.make``: ``size`` (5), ``max_steps`` (None: MiniGrid's).

Behaviour policies (registered on import, see :mod:`simagents.data.policies`):
``doorkey-eps<ε>`` is the expert below taking a uniformly random action with probability
ε; ``mixed`` is a graded population of them plus ``random``. Unlike the CartPole controller
the expert reads the full grid from the env, not the partial observation, so its data are
*not* valid interventions for counterfactual teaching.

MiniGrid is imported when an env is made, not when this module is, because importing it
takes about half a second.

>>> import gymnasium as gym
>>> import simagents.envs
>>> env = gym.make("simagents/DoorKey-5x5-v0")
>>> obs, _ = env.reset(seed=0)
>>> obs.shape, int(env.action_space.n)
((102,), 5)
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from simagents.data.policies import Policy, PolicyFamily, register_family
from simagents.errors import SimagentsError

ENV_ID = "simagents/DoorKey-5x5-v0"
ACTION_NAMES = ("left", "right", "forward", "pickup", "toggle")
# MiniGrid's action index for each of ours.
MINIGRID_ACTIONS = (0, 1, 2, 3, 5)
LEFT, RIGHT, FORWARD, PICKUP, TOGGLE = range(len(ACTION_NAMES))
N_DIRECTIONS = 4
# MiniGrid's direction vectors: 0 east, 1 south, 2 west, 3 north.
DIRECTION_VECTORS = ((1, 0), (0, 1), (-1, 0), (0, -1))


class DoorKeyEnv(gym.Env[np.ndarray, int]):
    """MiniGrid DoorKey with a flat float32 observation and the five actions DoorKey needs."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(self, size: int = 5, max_steps: int | None = None) -> None:
        if not isinstance(size, int) or size < 5:
            raise SimagentsError(f"simagents/DoorKey: size must be an integer of at least 5, got {size!r}")
        if max_steps is not None and max_steps < 1:
            raise SimagentsError(
                f"simagents/DoorKey: max_steps must be at least 1 (or None), got {max_steps}"
            )
        try:
            from minigrid.envs.doorkey import DoorKeyEnv as MiniGridDoorKey
        except ModuleNotFoundError as e:
            raise SimagentsError(
                f"simagents/DoorKey needs the minigrid package ({e}); install it with `pip install 'minigrid>=3,<4'`"
            ) from None

        self.minigrid = MiniGridDoorKey(size=size, max_steps=max_steps)
        """The wrapped MiniGrid env (the expert reads its grid)."""
        view = self.minigrid.agent_view_size
        self._view_cells = view * view
        self.observation_space = gym.spaces.Box(
            0.0, 10.0, shape=(2 * self._view_cells + N_DIRECTIONS,), dtype=np.float32
        )
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))

    def _observe(self, minigrid_obs: dict[str, Any]) -> np.ndarray:
        image = minigrid_obs["image"]
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[: self._view_cells] = image[:, :, 0].reshape(-1)
        obs[self._view_cells : 2 * self._view_cells] = image[:, :, 2].reshape(-1)
        obs[2 * self._view_cells + int(minigrid_obs["direction"])] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        minigrid_obs, _ = self.minigrid.reset(seed=seed)
        return self._observe(minigrid_obs), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        minigrid_obs, reward, terminated, truncated, _ = self.minigrid.step(MINIGRID_ACTIONS[int(action)])
        return self._observe(minigrid_obs), float(reward), bool(terminated), bool(truncated), {}


def register_env() -> None:
    """Register ``simagents/DoorKey-5x5-v0`` with gymnasium (again is a no-op)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=f"{__name__}:DoorKeyEnv")


# ---------------------------------------------------------------- the scripted expert


def _find(grid: Any, kind: str) -> tuple[int, int] | None:
    for index, obj in enumerate(grid.grid):
        if obj is not None and obj.type == kind:
            return index % grid.width, index // grid.width
    return None


def _subgoal(world: Any) -> tuple[tuple[int, int], int]:
    """The cell to face next and the action to take there: key, then door, then goal."""
    door_pos = _find(world.grid, "door")
    door = world.grid.get(*door_pos) if door_pos is not None else None
    if door is not None and not door.is_open:
        key_pos = _find(world.grid, "key")
        if door.is_locked and world.carrying is None and key_pos is not None:
            return key_pos, PICKUP
        return door_pos, TOGGLE
    goal_pos = _find(world.grid, "goal")
    if goal_pos is None:
        raise RuntimeError("DoorKey grid without a goal")
    return goal_pos, FORWARD


def expert_action(world: Any) -> int:
    """The first action of a shortest plan (breadth-first over position and direction) to the next subgoal.

    ``world`` is the MiniGrid env; replanning every step makes the expert recover from any
    random action its noise took.
    """
    target, final_action = _subgoal(world)
    start = (int(world.agent_pos[0]), int(world.agent_pos[1]), int(world.agent_dir))
    first_action: dict[tuple[int, int, int], int | None] = {start: None}
    queue = deque([start])
    while queue:
        x, y, direction = state = queue.popleft()
        dx, dy = DIRECTION_VECTORS[direction]
        front = (x + dx, y + dy)
        if front == target:
            action = first_action[state]
            return final_action if action is None else action
        front_cell = world.grid.get(*front)
        moves = [(LEFT, (x, y, (direction - 1) % 4)), (RIGHT, (x, y, (direction + 1) % 4))]
        if front_cell is None or front_cell.can_overlap():
            moves.append((FORWARD, (*front, direction)))
        for action, successor in moves:
            if successor not in first_action:
                first_action[successor] = action if first_action[state] is None else first_action[state]
                queue.append(successor)
    raise RuntimeError(f"DoorKey: no path from {start} to {target}")


@dataclass
class DoorKeyExpert:
    """The BFS expert of :func:`expert_action`; a uniformly random action with probability ``eps``.

    At eps 0 it solves every DoorKey-5x5 layout in about 10 steps (return about 0.96).
    """

    env: gym.Env
    eps: float
    rng: np.random.Generator
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"doorkey-eps{self.eps}"

    def __call__(self, observation: Any) -> int:
        # Draw the coin every step (even at eps 0) so the random stream does not depend on eps.
        explore = self.rng.random() < self.eps
        if explore:
            return int(self.rng.integers(len(ACTION_NAMES)))
        return expert_action(self.env.unwrapped.minigrid)


_DOORKEY_EPS = re.compile(r"doorkey-eps(?P<eps>\d+(?:\.\d*)?)")


def _is_doorkey(env: gym.Env) -> bool:
    return isinstance(env.unwrapped, DoorKeyEnv)


def _make_doorkey(name: str, env: gym.Env, rng: np.random.Generator) -> Policy | None:
    match = _DOORKEY_EPS.fullmatch(name)
    if match is None:
        return None
    eps = float(match["eps"])
    if not 0.0 <= eps <= 1.0:
        raise SimagentsError(f"policy {name!r}: the random-action probability must be in [0, 1], got {eps}")
    return DoorKeyExpert(env=env, eps=eps, rng=rng, name=name)


DOORKEY = PolicyFamily(
    title="DoorKey",
    matches=_is_doorkey,
    make=_make_doorkey,
    names=tuple(f"doorkey-eps{e}" for e in ("0.0", "0.1", "0.3", "0.6", "0.8")),
    # Measured over 40 seeds of 5x5: mean returns 0.965, 0.958, 0.945, 0.886, 0.698 for the
    # noise levels and 0.107 for random (which finds the goal in 28% of episodes), so the
    # noisy levels fill the range between the two ends that the normalised score uses.
    mixed=(
        ("doorkey-eps0.0", 0.2),
        ("doorkey-eps0.1", 0.15),
        ("doorkey-eps0.3", 0.15),
        ("doorkey-eps0.6", 0.15),
        ("doorkey-eps0.8", 0.15),
        ("random", 0.2),
    ),
    hint="doorkey-eps<ε> for any ε in [0, 1]",
)


def register_policies() -> None:
    """Add the DoorKey family to the behaviour-policy registry (again is a no-op)."""
    # Already registered means this module was imported (or reloaded) before.
    with contextlib.suppress(ValueError):
        register_family(DOORKEY)
