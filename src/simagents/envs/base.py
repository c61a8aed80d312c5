"""What every testbed shares: the :class:`Testbed` record, the registry, parameter checking.

A testbed is a decision problem where evidential decision theory (EDT), causal decision
theory (CDT) and return-conditioned imitation (Decision Transformer) are known to
disagree. Each one is a small module with

- a parameters dataclass: every number of the problem, with its default (the single source
  of defaults; ``gymnasium.make`` keyword arguments are its fields);
- a gymnasium env: the problem as the *deployed* agent meets it;
- ``demonstrations(env_kwargs, episodes, rng, intervene)``: observational data from a
  demonstrator population, or interventional data in which the acting choice is drawn
  independently of every hidden variable (counterfactual teaching);
- ``theory(**params)``: what EDT and CDT choose and what each choice is worth, as a
  function of the parameters, so tests and reports can put theory beside measurement.

The registry :data:`TESTBEDS` maps short names (``newcomb``, ...) to these records;
:func:`register_testbed` adds more, and registers the env with gymnasium too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import gymnasium as gym
import numpy as np

from simagents.data.episodes import Episode, episode_from_arrays
from simagents.errors import SimagentsError

Theory = dict[str, Any]
"""What ``theory(**params)`` returns; see :func:`decision_summary` for the keys."""

DemonstrationsFn = Callable[..., list[Episode]]
"""``demonstrations(env_kwargs, episodes, rng, intervene=False) -> list[Episode]``."""

#: Where expected returns come from: the data's conditionals given the action (what a
#: simulator trained on observational data believes), the world with the action set by
#: intervention (what a simulator trained on interventional data believes), and the
#: deployed env (what the agent actually gets).
BELIEFS = ("evidential", "interventional", "deployment")


@dataclass(frozen=True)
class Testbed:
    """One registered testbed: the env, its parameters, its theory and its data.

    Example:

    >>> from simagents.envs import TESTBEDS
    >>> newcomb = TESTBEDS["newcomb"]
    >>> newcomb.env_id, newcomb.theory(accuracy=0.9)["edt"]["choice"], newcomb.theory(accuracy=0.4)["edt"]["choice"]
    ('simagents/Newcomb-v0', 'one_box', 'two_box')
    >>> env = newcomb.make(accuracy=0.6)  # every number of the problem is a keyword
    """

    name: str
    """Short name used by the CLI and the registry, e.g. ``newcomb``."""
    env_id: str
    """Gymnasium id, e.g. ``simagents/Newcomb-v0``."""
    env_class: type[gym.Env]
    """The env; ``gymnasium.make(env_id, **params)`` builds it."""
    params_class: type
    """Frozen dataclass of the problem's numbers; its field defaults are the testbed's defaults."""
    theory: Callable[..., Theory]
    """``theory(**params)``: EDT's and CDT's choices and every choice's expected return."""
    demonstrations: DemonstrationsFn
    """``demonstrations(env_kwargs, episodes, rng, intervene=False)``: the testbed's data."""
    action_names: tuple[str, ...]
    """Name of each discrete action, by index."""
    description: str = ""
    """One line for listings."""

    @property
    def default_params(self) -> dict[str, Any]:
        """Every parameter with its default value."""
        return dataclasses.asdict(self.params_class())

    def check_params(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full parameter dict (defaults filled in); :class:`SimagentsError` if any is bad."""
        return dataclasses.asdict(parse_params(self.params_class, params, where=self.name))

    def make(self, **params: Any) -> gym.Env:
        """``gymnasium.make(env_id, **params)``: the env as a deployed agent meets it."""
        return gym.make(self.env_id, **self.check_params(params))


TESTBEDS: dict[str, Testbed] = {}
"""Registered testbeds by short name; add your own with :func:`register_testbed`."""


def register_testbed(testbed: Testbed, *, overwrite: bool = False) -> Testbed:
    """Add ``testbed`` to :data:`TESTBEDS` and register its env id with gymnasium.

    The gymnasium entry point is the env class's import path (a string, not the class), so
    gymnasium and minari can record the env spec as JSON and rebuild the env later; the
    class must therefore be importable from its module.

    Example: ``examples/custom_testbed.py`` registers Death in Damascus this way; loaded as a
    plugin, ``simagents testbed death_in_damascus`` runs it:

    >>> import simagents
    >>> from simagents.envs import TESTBEDS
    >>> _ = simagents.load_plugins(["examples/custom_testbed.py"])  # calls register_testbed
    >>> TESTBEDS["death_in_damascus"].env_id
    'examples/DeathInDamascus-v0'
    """
    if not overwrite and testbed.name in TESTBEDS:
        raise ValueError(f"a testbed named {testbed.name!r} is already registered; pass overwrite=True")
    cls = testbed.env_class
    gym.register(id=testbed.env_id, entry_point=f"{cls.__module__}:{cls.__qualname__}")
    TESTBEDS[testbed.name] = testbed
    return testbed


def get_testbed(name: str) -> Testbed:
    """The testbed called ``name`` (short name or gymnasium id); :class:`SimagentsError` if none."""
    if name in TESTBEDS:
        return TESTBEDS[name]
    for testbed in TESTBEDS.values():
        if testbed.env_id == name:
            return testbed
    raise SimagentsError(
        f"unknown testbed {name!r}; valid names: {', '.join(sorted(TESTBEDS))} "
        f"(or their env ids: {', '.join(t.env_id for t in TESTBEDS.values())})"
    )


def check_params(testbed: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check ``params`` for the testbed called ``testbed``; return all its parameters.

    Unknown names and values of the wrong type or out of range raise :class:`SimagentsError`
    naming the valid parameters. String values (as from a command line, ``accuracy=0.8``)
    are converted to the parameter's type.
    """
    return get_testbed(testbed).check_params(params)


# --------------------------------------------------------------------------- parameters


def parse_params(params_class: type, params: Mapping[str, Any] | None, where: str) -> Any:
    """Build ``params_class(**params)``, raising :class:`SimagentsError` on any bad name or value."""
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(params_class)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise SimagentsError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; {describe_params(params_class)}"
        )
    defaults = params_class()
    values = {
        name: _coerce(value, getattr(defaults, name), f"{where}: parameter {name}")
        for name, value in params.items()
    }
    return params_class(**values)


def describe_params(params_class: type) -> str:
    """``valid parameters: a=1.0, b=2`` for error messages and help."""
    defaults = dataclasses.asdict(params_class())
    return "valid parameters: " + ", ".join(f"{k}={v!r}" for k, v in defaults.items())


def _coerce(value: Any, default: Any, where: str) -> Any:
    # The default's type is the parameter's type: every field has a plain bool/int/float default.
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise SimagentsError(f"{where} must be true or false, got {value!r}")
    if isinstance(value, bool | np.bool_):
        raise SimagentsError(f"{where} must be a number, got {value!r}")
    if kind is int:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SimagentsError(f"{where} must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise SimagentsError(f"{where} must be an integer, got {value!r}")
        return int(number)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SimagentsError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SimagentsError(f"{where} must be finite, got {value!r}")
    return number


def check_probability(where: str, **values: float) -> None:
    """Raise :class:`SimagentsError` unless every value is a probability in [0, 1]."""
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise SimagentsError(f"{where}: {name} must be a probability in [0, 1], got {value}")


def init_params(env: gym.Env, params_class: type, params: Mapping[str, Any]) -> Any:
    """The env's parameters; unknown names raise ``TypeError`` like any bad keyword argument.

    ``gymnasium.make`` callers (``simagents.data.collect.make_env``) turn ``TypeError`` into a
    user-facing error; bad values raise :class:`SimagentsError` directly.
    """
    unknown = sorted(set(params) - {f.name for f in dataclasses.fields(params_class)})
    if unknown:
        raise TypeError(
            f"{type(env).__name__} got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"{describe_params(params_class)}"
        )
    return parse_params(params_class, params, where=type(env).__name__)


# --------------------------------------------------------------------------- theory


def decision_summary(table: Mapping[str, Mapping[str, float]], tie_order: Iterable[str]) -> Theory:
    """Turn a table ``{choice: {belief: expected return}}`` into the common theory dict.

    Returns ``{"edt": {"choice", "expected_return", "deployment_return"}, "cdt": {...},
    "deployment_best": choice, "expected_return": table}``. EDT maximises the
    ``evidential`` column, CDT the ``interventional`` one; ``expected_return`` is the value
    the agent believes it gets, ``deployment_return`` what it gets. Exact ties go to the
    earliest choice in ``tie_order``. A NaN entry (a choice the data never shows, so its
    conditional is undefined) is never chosen; if every entry is NaN the choice is None.
    """
    order = list(tie_order)

    def best(belief: str) -> str | None:
        choice = None
        for name in order:
            value = table[name][belief]
            if not math.isnan(value) and (choice is None or value > table[choice][belief]):
                choice = name
        return choice

    def agent(belief: str) -> dict[str, Any]:
        choice = best(belief)
        return {
            "choice": choice,
            "expected_return": math.nan if choice is None else table[choice][belief],
            "deployment_return": math.nan if choice is None else table[choice]["deployment"],
        }

    return {
        "edt": agent("evidential"),
        "cdt": agent("interventional"),
        "deployment_best": best("deployment"),
        "expected_return": {name: dict(values) for name, values in table.items()},
    }


# --------------------------------------------------------------------------- data


def one_step_episodes(
    env: gym.Env[Any, Any],
    actions: np.ndarray,
    rewards: np.ndarray,
    intervene: bool,
    labels: Sequence[str] | str,
    blocks: np.ndarray,
    observations: np.ndarray | None = None,
) -> list[Episode]:
    """A one-shot problem's episodes, one per action: one step, the same observation before and
    after it (0, or each episode's from ``observations``), in ``env``'s spaces.

    ``labels``: the policy that chose each action, or one name for all; ``blocks``: each
    episode's block of interventions (-1 for observational data).
    """
    n = len(actions)
    seen = np.zeros(n, dtype=np.int64) if observations is None else observations
    names = [labels] * n if isinstance(labels, str) else labels
    return [
        episode_from_arrays(
            observations=np.array([seen[i], seen[i]]),
            actions=np.array([actions[i]]),
            rewards=np.array([rewards[i]], dtype=np.float64),
            terminations=np.array([True]),
            truncations=np.array([False]),
            observation_space=env.observation_space,
            action_space=env.action_space,
            interventions=np.array([intervene]),
            policy=names[i],
            block=int(blocks[i]),
        )
        for i in range(n)
    ]


def blocked_interventions(episodes: int, n_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked randomisation for interventional data: ``(source, action)`` per episode.

    Episode ``i`` replays the hidden draw of episode ``source[i]`` (the world: lesion,
    prediction, the copy's move...) with action ``action[i]``; every hidden draw is played
    with every action. The action is then independent of the hidden state in the sample
    itself, not only in expectation, so the simulator's interventional values differ by
    exactly the causal effect of the action. Without blocking, a small causal effect
    (Newcomb's transparent 1,000 beside an opaque 1,000,000) drowns in sampling noise of
    the hidden state: resolving it would take millions of episodes. ``source`` doubles as
    the episodes' block id (:attr:`Episode.block`), which keeps a block in one batch.
    """
    index = np.arange(episodes)
    return index - index % n_actions, index % n_actions


def mirrored_population(
    rng: np.random.Generator,
    episodes: int,
    shares: tuple[float, float],
    undecided_first: float,
    mirror_accuracy: float,
    intervene: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Demonstrators of a two-action problem in which something mirrors the chooser's disposition
    (Newcomb's predictor, the twin's copy). Returns ``(kind, action, mirror, block)`` per episode
    (``block`` -1 for observational data).

    ``kind`` 0 always takes action 0, 1 always action 1, 2 is undecided (action 0 with
    probability ``undecided_first``); ``shares`` are the first two kinds' shares. The mirror
    matches the disposition with probability ``mirror_accuracy``. With ``intervene`` the actions
    are blocked interventions and each block replays one demonstrator's world.
    """
    undecided = max(0.0, 1.0 - shares[0] - shares[1])
    weights = np.array([shares[0], shares[1], undecided])
    kind = rng.choice(3, size=episodes, p=weights / weights.sum())
    coin = np.where(rng.random(episodes) < undecided_first, 0, 1)
    disposition = np.select([kind == 0, kind == 1], [0, 1], default=coin)
    matches = rng.random(episodes) < mirror_accuracy
    mirror = np.where(matches, disposition, 1 - disposition)
    action, block = disposition, np.full(episodes, -1)
    if intervene:
        block, action = blocked_interventions(episodes, 2)
        kind, mirror = kind[block], mirror[block]
    return kind, action, mirror, block


def check_population(where: str, **shares: float) -> None:
    """The two pure kinds' shares may not exceed 1 together: the rest are undecided."""
    (first, a), (second, b) = shares.items()
    if a + b > 1.0 + 1e-12:
        raise SimagentsError(
            f"{where}: {first} + {second} must be at most 1 (the rest are undecided), got {a} + {b}"
        )


def check_episodes(episodes: int, where: str) -> None:
    """Raise :class:`SimagentsError` unless ``episodes`` is a positive count."""
    if int(episodes) != episodes or episodes < 1:
        raise SimagentsError(f"{where}: episodes must be a positive integer, got {episodes!r}")


# --------------------------------------------------------------------------- envs


ObsT = TypeVar("ObsT")


class TestbedEnv(gym.Env[ObsT, np.int64]):
    """Shared plumbing of the testbed envs: keyword parameters, discrete named actions.

    Subclasses set ``params_class`` and ``action_names`` and implement ``reset`` and ``step``;
    ``ObsT`` is their observation type (``np.int64`` for a Discrete observation space).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)
    params_class: ClassVar[type]
    action_names: ClassVar[tuple[str, ...]]

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        self.params = init_params(self, self.params_class, params)
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(len(self.action_names))

    def _check_action(self, action: Any) -> int:
        if not self.action_space.contains(action):
            raise gym.error.InvalidAction(
                f"{type(self).__name__}: action {action!r} is not in {self.action_space} "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(self.action_names))})"
            )
        return int(action)


class OneShotEnv(TestbedEnv[np.int64]):
    """A one-step decision: ``reset`` draws the hidden state, ``step`` pays the outcome and ends.

    The observation is a constant 0 (``Discrete(1)``) unless a subclass reveals something
    (the smoking lesion's optional tickle). Subclasses implement ``_draw`` (hidden state at
    reset, returning the observation) and ``_outcome`` (reward and info for an action).
    """

    def __init__(self, render_mode: str | None = None, **params: Any) -> None:
        super().__init__(render_mode=render_mode, **params)
        self.observation_space = gym.spaces.Discrete(self._n_observations())
        self._observation = 0
        self._done = True

    def _n_observations(self) -> int:
        return 1

    def _draw(self) -> int:
        raise NotImplementedError

    def _outcome(self, action: int) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        self._observation = self._draw()
        self._done = False
        return np.int64(self._observation), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        action = self._check_action(action)
        if self._done:
            raise gym.error.ResetNeeded(f"{type(self).__name__}: the episode is over; call reset()")
        reward, info = self._outcome(action)
        self._done = True
        # The hidden state goes in the final info only (for diagnostics), never in observations.
        return np.int64(self._observation), float(reward), True, False, info
