"""MiniGrid DoorKey as a control task with simagents-friendly spaces, and its scripted expert.

``simagents/DoorKey-5x5-v0`` wraps MiniGrid's ``DoorKeyEnv``: pick up the key, unlock the
door, walk to the goal. MiniGrid observes a dict (an egocentric image, a direction and a
mission string) and offers seven actions; the simulator wants one ``Box`` and a small
``Discrete``, so:

- **observation**: ``Box(0, 1, (view * view * 8 + 4,), float32)``: each cell of the
  egocentric view (``view`` = 5 by default, MiniGrid's ``[x, y]`` order) one-hot over
  :data:`CELL_KINDS` (unseen, empty, wall, open / closed / locked door, key, goal), then the
  agent's direction one-hot. One-hot because a linear embedding cannot read categories
  from MiniGrid's object indices; the colour channel is left out because DoorKey has one
  key and one door. A carried key shows at the agent's own cell, as MiniGrid draws it.
  A 5x5 view sees as much of a 5x5 grid as MiniGrid's 7x7 one (the rest is outside).
- **actions**: ``Discrete(5)``: ``left``, ``right``, ``forward``, ``pickup``, ``toggle``
  (MiniGrid's 0, 1, 2, 3, 5). ``drop`` and ``done`` do nothing useful in DoorKey, and
  leaving them out makes a random policy less hopeless.
- **reward**: MiniGrid's, ``1 - 0.9 * steps / max_steps`` on reaching the goal, else 0;
  truncation at ``max_steps``, 50 by default. MiniGrid's 250 for 5x5 lets failing episodes
  (most of the data's steps and of the evaluation time) run five times longer, and at the
  quick study budget a simulator learned less from such data: normalised ``dt`` score 31
  with ``max_steps`` 100 and 47 with 50 (one seed each, same population).

Keyword arguments of ``gymnasium.make``: ``size`` (5), ``max_steps`` (50), ``view`` (5).

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
((204,), 5)
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


#: What one cell of the view can hold in DoorKey; anything else is an error.
CELL_KINDS = ("unseen", "empty", "wall", "door_open", "door_closed", "door_locked", "key", "goal")


def _cell_kind_table() -> np.ndarray:
    """(object index, state) -> index in :data:`CELL_KINDS`, -1 where DoorKey has no such cell."""
    from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX

    table = np.full((max(OBJECT_TO_IDX.values()) + 1, max(STATE_TO_IDX.values()) + 1), -1, dtype=np.int64)
    for kind in ("unseen", "empty", "wall", "key", "goal"):
        table[OBJECT_TO_IDX[kind], :] = CELL_KINDS.index(kind)
    for state in ("open", "closed", "locked"):
        table[OBJECT_TO_IDX["door"], STATE_TO_IDX[state]] = CELL_KINDS.index(f"door_{state}")
    return table


class DoorKeyEnv(gym.Env[np.ndarray, np.int64]):
    """MiniGrid DoorKey with a flat one-hot float32 observation and the five actions DoorKey needs."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(self, size: int = 5, max_steps: int = 50, view: int = 5) -> None:
        if not isinstance(size, int) or size < 5:
            raise SimagentsError(f"simagents/DoorKey: size must be an integer of at least 5, got {size!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise SimagentsError(
                f"simagents/DoorKey: max_steps must be a positive integer, got {max_steps!r}"
            )
        if not isinstance(view, int) or view < 3 or view % 2 == 0:
            raise SimagentsError(
                f"simagents/DoorKey: view must be an odd integer of at least 3, got {view!r}"
            )
        try:
            from minigrid.envs.doorkey import DoorKeyEnv as MiniGridDoorKey
        except ModuleNotFoundError as e:
            raise SimagentsError(
                f"simagents/DoorKey needs the minigrid package ({e}); install it with `pip install 'minigrid>=3,<4'`"
            ) from None

        self.minigrid = MiniGridDoorKey(size=size, max_steps=max_steps, agent_view_size=view)
        """The wrapped MiniGrid env (the expert reads its grid)."""
        self._kinds = _cell_kind_table()
        self._view_cells = view * view
        self._obs_size = self._view_cells * len(CELL_KINDS) + N_DIRECTIONS
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self._obs_size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))

    def _observe(self, minigrid_obs: dict[str, Any]) -> np.ndarray:
        image = minigrid_obs["image"]
        kinds = self._kinds[image[:, :, 0], image[:, :, 2]].reshape(-1)
        if (kinds < 0).any():
            raise RuntimeError("DoorKey view holds an object that DoorKey does not have")
        obs = np.zeros(self._obs_size, dtype=np.float32)
        obs[np.arange(self._view_cells) * len(CELL_KINDS) + kinds] = 1.0
        obs[self._view_cells * len(CELL_KINDS) + int(minigrid_obs["direction"])] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        minigrid_obs, _ = self.minigrid.reset(seed=seed)
        return self._observe(minigrid_obs), {}

    def step(self, action: int | np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
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
    if door_pos is not None and door is not None and not door.is_open:
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

    At eps 0 it solves every DoorKey-5x5 layout in about 10 steps (return about 0.82 at max_steps 50).
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
        world = self.env.unwrapped
        if not isinstance(world, DoorKeyEnv):
            raise SimagentsError(f"the DoorKey expert plays simagents/DoorKey, not {world}")
        return expert_action(world.minigrid)


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
    # Measured over 60 seeds of 5x5 (max_steps 50): mean returns 0.82, 0.73, 0.42 and 0.11 at
    # eps 0.0, 0.3, 0.6 and 0.8 (reaching the goal in 100, 100, 92 and 30% of episodes), 0 for
    # random (never), so the levels fill the range between the ends of the normalised score.
    # The expert levels carry most of the weight because noisy episodes are longer and their
    # random actions would otherwise be most of what the simulator learns from.
    mixed=(
        ("doorkey-eps0.0", 0.35),
        ("doorkey-eps0.3", 0.25),
        ("doorkey-eps0.6", 0.2),
        ("doorkey-eps0.8", 0.1),
        ("random", 0.1),
    ),
    hint="doorkey-eps<ε> for any ε in [0, 1]",
)


def register_policies() -> None:
    """Add the DoorKey family to the behaviour-policy registry (again is a no-op)."""
    # Already registered means this module was imported (or reloaded) before.
    with contextlib.suppress(ValueError):
        register_family(DOORKEY)
