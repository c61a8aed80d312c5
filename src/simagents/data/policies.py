"""Behaviour policies that generate offline data.

A policy maps an observation to an action and carries a ``name`` that labels the
episodes it produced. Policies see only the observation, never hidden env state,
so their actions are valid interventions for counterfactual teaching.

Names:

- ``random``: uniform over a Discrete or bounded Box action space (standard normal
  on unbounded Box dimensions). Works for every env.
- ``cartpole-eps<ε>`` (e.g. ``cartpole-eps0.1``): a linear CartPole controller that
  takes a uniformly random action with probability ε. At ε = 0 it balances for the
  full 500 steps of ``CartPole-v1``.

A population spec (``--policy``) is one name, ``mixed`` (the env family's graded
population, e.g. CartPole experts at several noise levels plus random), or a
weighted list ``name:weight,name:weight`` (a missing weight counts as 1).

Testbeds can add their own scripted policies with :func:`register_family`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from simagents.errors import SimagentsError


@runtime_checkable
class Policy(Protocol):
    """A behaviour policy: ``policy(observation) -> action``, labelled by ``name``."""

    name: str

    def __call__(self, observation: Any) -> Any: ...


@dataclass
class RandomPolicy:
    """Uniform random actions; independent of the observation."""

    action_space: gym.Space[Any]
    rng: np.random.Generator
    name: str = "random"

    def __post_init__(self) -> None:
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            low = np.asarray(space.low, dtype=np.float64)
            high = np.asarray(space.high, dtype=np.float64)
            self._bounded = np.isfinite(low) & np.isfinite(high)
            # Unbounded dimensions cannot be sampled uniformly; use N(0, 1) there.
            self._low = np.where(self._bounded, low, 0.0)
            self._high = np.where(self._bounded, high, 1.0)
        elif not isinstance(space, gym.spaces.Discrete):
            raise SimagentsError(
                f"policy 'random' supports Discrete and Box action spaces, not {space}; "
                "wrap the env so its action space is Discrete or Box"
            )

    def __call__(self, observation: Any) -> int | np.ndarray:
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(space.start + self.rng.integers(space.n))
        uniform = self.rng.uniform(self._low, self._high)
        normal = self.rng.standard_normal(np.shape(self._low))
        return np.where(self._bounded, uniform, normal).astype(space.dtype)


@dataclass
class CartPoleController:
    """Push the cart towards where the pole is falling; random action with probability ``eps``.

    The action is the sign of ``w · (x, x_dot, theta, theta_dot)``. The weights were tuned on
    ``CartPole-v1``: at eps 0 every one of 100 seeded episodes lasts the full 500 steps;
    mean returns are about 480 at eps 0.2, 430 at 0.3, 280 at 0.4, 195 at 0.45, 80 at 0.6 and
    25 for random, so a few noise levels span the whole range of returns.
    """

    eps: float
    rng: np.random.Generator
    name: str = ""
    weights: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.5, 1.0, 1.0]))

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"cartpole-eps{self.eps}"

    def __call__(self, observation: Any) -> int:
        # Draw the coin every step (even at eps 0) so the random stream does not depend on eps.
        explore = self.rng.random() < self.eps
        if explore:
            return int(self.rng.integers(2))
        return int(np.dot(self.weights, np.asarray(observation, dtype=np.float64)) > 0.0)


PolicyMaker = Callable[[str, gym.Env, np.random.Generator], "Policy | None"]


@dataclass(frozen=True)
class PolicyFamily:
    """Scripted policies for a family of envs.

    ``matches(env)`` says whether the family applies; ``make(name, env, rng)`` returns a
    policy for a name it knows or None; ``names`` are the names to advertise in errors and
    help (``hint`` describes any pattern beyond them); ``mixed`` is the weighted population
    that ``--policy mixed`` expands to.
    """

    title: str
    matches: Callable[[gym.Env], bool]
    make: PolicyMaker
    names: tuple[str, ...]
    mixed: tuple[tuple[str, float], ...]
    hint: str = ""


_CARTPOLE_EPS = re.compile(r"cartpole-eps(?P<eps>\d+(?:\.\d*)?)")


def _is_cartpole(env: gym.Env) -> bool:
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return isinstance(env.unwrapped, CartPoleEnv)


def _make_cartpole(name: str, env: gym.Env, rng: np.random.Generator) -> Policy | None:
    match = _CARTPOLE_EPS.fullmatch(name)
    if match is None:
        return None
    eps = float(match["eps"])
    if not 0.0 <= eps <= 1.0:
        raise SimagentsError(f"policy {name!r}: the random-action probability must be in [0, 1], got {eps}")
    return CartPoleController(eps=eps, rng=rng, name=name)


CARTPOLE = PolicyFamily(
    title="CartPole",
    matches=_is_cartpole,
    make=_make_cartpole,
    names=tuple(f"cartpole-eps{e}" for e in ("0.0", "0.1", "0.3", "0.45", "0.6")),
    # Weights chosen so episode returns cover ~10..500 broadly: two near-perfect levels,
    # two that fail at varied times, and two that fail fast.
    mixed=(
        ("cartpole-eps0.0", 0.2),
        ("cartpole-eps0.1", 0.1),
        ("cartpole-eps0.3", 0.2),
        ("cartpole-eps0.45", 0.2),
        ("cartpole-eps0.6", 0.15),
        ("random", 0.15),
    ),
    hint="cartpole-eps<ε> for any ε in [0, 1]",
)

_FAMILIES: list[PolicyFamily] = [CARTPOLE]


def register_family(family: PolicyFamily) -> None:
    """Add scripted policies for more envs (testbeds call this when they are imported)."""
    if any(f.title == family.title for f in _FAMILIES):
        raise ValueError(f"a policy family titled {family.title!r} is already registered")
    _FAMILIES.append(family)


def families_for(env: gym.Env) -> list[PolicyFamily]:
    """The registered families that apply to ``env``."""
    return [f for f in _FAMILIES if f.matches(env)]


def valid_policy_names(env: gym.Env) -> list[str]:
    """Names worth listing for ``env``: ``random``, ``mixed`` and every family's names."""
    names = ["random", "mixed"]
    for family in families_for(env):
        names.extend(family.names)
    return names


def _env_name(env: gym.Env) -> str:
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def make_policy(name: str, env: gym.Env, rng: np.random.Generator) -> Policy:
    """Build the policy called ``name`` for ``env``; its randomness comes from ``rng`` only."""
    name = name.strip()
    if name == "random":
        return RandomPolicy(env.action_space, rng)
    for family in families_for(env):
        policy = family.make(name, env, rng)
        if policy is not None:
            return policy
    if name == "mixed":
        raise SimagentsError(
            "'mixed' is a population of policies, not one policy; expand it with parse_population"
        )
    valid = ", ".join(valid_policy_names(env) + [f.hint for f in families_for(env) if f.hint])
    raise SimagentsError(
        f"unknown policy {name!r} for env {_env_name(env)}; valid names: {valid}; "
        "or a weighted list like 'random:0.3,<name>:0.7'"
    )


def parse_population(spec: str, env: gym.Env) -> list[tuple[str, float]]:
    """Expand a ``--policy`` spec into ``(name, probability)`` pairs that sum to 1.

    ``mixed`` for an env with no scripted policies falls back to ``random`` with a warning.
    Every name is checked now, so a typo fails before any data is collected.
    """
    spec = spec.strip()
    if spec == "mixed":
        families = families_for(env)
        if not families:
            warnings.warn(
                f"no scripted policies are registered for env {_env_name(env)}, so 'mixed' means "
                "'random' only; pass --policy with your own names or register a PolicyFamily",
                UserWarning,
                stacklevel=2,
            )
            return [("random", 1.0)]
        pairs: list[tuple[str, float]] = [p for f in families for p in f.mixed]
    else:
        pairs = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise SimagentsError(
                    f"policy spec {spec!r} has an empty entry; write 'name:weight,name:weight'"
                )
            name, _, weight_text = part.partition(":")
            try:
                weight = float(weight_text) if weight_text else 1.0
            except ValueError:
                raise SimagentsError(
                    f"policy spec {spec!r}: weight {weight_text!r} of {name!r} is not a number"
                ) from None
            if not np.isfinite(weight) or weight <= 0:
                raise SimagentsError(
                    f"policy spec {spec!r}: weight of {name!r} must be positive, got {weight}"
                )
            if name.strip() == "mixed":
                raise SimagentsError(f"policy spec {spec!r}: 'mixed' cannot be part of a weighted list")
            pairs.append((name.strip(), weight))
    # Fail on unknown names now, with a throwaway generator.
    for name, _ in pairs:
        make_policy(name, env, np.random.default_rng(0))
    return _normalise(pairs)


def _normalise(pairs: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    merged: dict[str, float] = {}
    for name, weight in pairs:
        merged[name] = merged.get(name, 0.0) + weight
    total = sum(merged.values())
    return [(name, weight / total) for name, weight in merged.items()]
