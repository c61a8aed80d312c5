"""The agent protocol, the registry of decision procedures, and the shared acting loop.

An agent is a decision procedure over a simulator, not a new model. Every agent
keeps one episode's context in the simulator's KV cache and follows the same
token protocol: the reward of its previous action, then the new observation,
then a return token and an action chosen by the procedure.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from simagents.errors import SimagentsError
from simagents.io import option_value
from simagents.model import Context, Simulator


@runtime_checkable
class Agent(Protocol):
    """What every decision procedure offers: stateful over one episode.

    Any object with these two methods is an agent; :func:`~simagents.agents.evaluate` plays it:

    >>> import gymnasium
    >>> from simagents import Agent, evaluate
    >>> class AlwaysLeft:
    ...     def reset(self, seed=None):
    ...         pass
    ...     def act(self, observation, reward=0.0):
    ...         return 0
    >>> isinstance(AlwaysLeft(), Agent)
    True
    >>> len(evaluate(AlwaysLeft(), gymnasium.make("CartPole-v1"), episodes=3).returns)
    3
    """

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` fixes any sampling the agent does."""

    def act(self, observation: Any, reward: float = 0.0, action_mask: np.ndarray | None = None) -> Any:
        """The action for ``observation``; ``reward`` is what the previous action earned (ignored at
        the first step of an episode). ``action_mask`` (Discrete actions only: one entry per
        action, nonzero where legal, as envs put it in ``info["action_mask"]``) limits the choice
        to legal actions; None allows every action."""


SAMPLE_LABEL = "sample"
"""The ``label`` that draws each episode's player from the training data's shares."""


def label_shares(simulator: Simulator) -> Tensor:
    """(labels + 1,) probability of each label in the training episodes, the unlabelled share last."""
    stats = simulator.stats
    if simulator.label_embed is None or not stats.labels:
        raise SimagentsError(
            f"label={SAMPLE_LABEL!r} draws a player label per episode, but this simulator was trained "
            "without label conditioning; train it with --model.condition-on-label on labelled data"
        )
    if not stats.label_shares:
        raise SimagentsError(
            f"label={SAMPLE_LABEL!r}: this simulator's statistics.json has no label_shares (saved by an "
            "older simagents); train it again to record them"
        )
    shares = torch.tensor(stats.label_shares, dtype=torch.float64)
    return torch.cat([shares, (1 - shares.sum()).clamp(min=0).reshape(1)])


class SimulatorAgent:
    """Shared acting loop over a simulator. Subclasses implement :meth:`choose`.

    ``intervention`` says how the agent's own actions enter its context: as evidence
    (False: like a demonstrator's choice) or as interventions (True: counterfactual teaching).
    ``label`` (a behaviour-policy label of the simulator's training data; needs a simulator
    trained with label conditioning) puts that label in every episode's context, so the
    simulator continues it as that policy would; None leaves the label unknown.
    ``label="sample"`` draws each episode's label at :meth:`reset`, with the probability of
    its share of the training episodes: the simulator then plays the data's population one
    whole episode per player, as the data did, instead of re-guessing who is playing from the
    last ``context_len`` steps.

    ``min_history`` (every built-in agent takes it): the fewest past steps the agent's context
    keeps once an episode outgrows it (:class:`~simagents.model.Context`). By default half the
    context: the agent acts on the last ``context_len // 2 + 1`` to ``context_len`` steps, at the
    cost of about two steps' tokens per action. ``context_len - 1`` acts on the last
    ``context_len`` steps at every step, as the reference Decision Transformer (and d3rlpy's)
    does, at the cost of a pass over the whole window per action (a ``dt`` action at the
    benchmark's reference size: 1.11 ms against 0.108, ``make bench``, 2026-12-07). Decisions
    depend on it where the simulator is unsure: on the quality benchmark's CartPole data (100
    episodes per training seed, 2026-12-07), the default against 19 of 20: ``dt`` (temperature
    1) 419.6 / 463.0 / 460.4 against 448.4 / 479.7 / 476.0 for seeds 0-2 after 125 updates;
    ``edt`` after 250 updates 235.8 / 407.4 against 348.4 / 435.6 (seeds 1, 2), after 125
    updates 234.0 / 181.9 / 352.8 against 260.3 / 143.2 / 311.9, no better.

    Example: the imitator's most likely action instead of a sample (``examples/custom_agent.py``
    is a planner built this way):

    >>> from simagents import SimulatorAgent, register_agent
    >>> @register_agent("mode")
    ... class Mode(SimulatorAgent):
    ...     def choose(self):
    ...         hidden = self.context.push_return(None)  # the unknown return: no goal given
    ...         return self.simulator.sample_action(hidden, self.generator, temperature=0.0)[0]
    """

    intervention: bool = False
    action_probabilities: np.ndarray | None = None
    """(act_dim,) the distribution the last action was sampled from, where the procedure sampled
    one from the policy head (Discrete actions); None where it chose deterministically (a
    planner's argmax, temperature 0). Move statistics read it instead of counting single draws."""

    def __init__(
        self, simulator: Simulator, label: str | None = None, min_history: int | None = None
    ) -> None:
        self.simulator = simulator.eval()
        self.min_history = min_history
        # A label the simulator cannot take (or cannot draw) fails here, not at reset.
        self.player_shares = label_shares(simulator) if label == SAMPLE_LABEL else None
        if self.player_shares is None:
            simulator.label_index(label)
        self.label = label
        self.generator = torch.Generator()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.generator.manual_seed(0 if seed is None else seed)
        self.episode_label = self.label
        if self.player_shares is not None:
            draw = int(torch.multinomial(self.player_shares, 1, generator=self.generator))
            self.episode_label = (
                self.simulator.stats.labels[draw] if draw < len(self.player_shares) - 1 else None
            )
        self.context = Context(self.simulator, self.episode_label, self.min_history)
        self.started = False
        self.step_records: list[dict[str, float]] = []
        self.legal: Tensor | None = None  # (act_dim,) bool for this step's choice; None: all legal

    def act(self, observation: Any, reward: float = 0.0, action_mask: np.ndarray | None = None) -> Any:
        grad = torch.is_grad_enabled()  # as torch.no_grad() does, in fewer steps (a few us an act)
        torch.set_grad_enabled(False)
        try:
            self.legal = legal_actions(action_mask, self.simulator)
            if self.started:
                self.context.push_reward(float(reward))
                self.observe_reward(float(reward))
            self.context.push_observation(observation)
            self.action_probabilities = None
            action = self.choose()
            self.context.push_action(action, self.intervention)
            self.started = True
            return to_env_action(action, self.simulator.action_space)
        finally:
            torch.set_grad_enabled(grad)

    def choose(self) -> Tensor:
        """Push the return token and pick the action (model input form); the observation is in context."""
        raise NotImplementedError

    def sample_action(self, temperature: float) -> Tensor:
        """The policy head's sample at the return token just pushed, illegal actions given
        probability 0: one action, () long or (act_dim,).

        For Discrete actions the distribution it was drawn from is kept in
        :attr:`action_probabilities` (None at temperature 0: a choice, not a draw)."""
        params = self.context.policy_params()
        if not self.simulator.act_discrete:
            return self.simulator.gaussian_sample(params, self.generator, temperature)  # (act_dim,)
        logits = torch.from_numpy(params.copy())
        if self.legal is not None:
            logits = logits.masked_fill(~self.legal, -torch.inf)
        if temperature == 0:
            return logits.argmax() + self.simulator.act_start
        probs = torch.softmax(logits / temperature, -1)
        self.action_probabilities = probs.numpy()
        return torch.multinomial(probs, 1, generator=self.generator)[0] + self.simulator.act_start

    def observe_reward(self, reward: float) -> None:
        """Hook: the reward just received (e.g. a Decision Transformer lowers its target)."""

    def episode_metrics(self) -> dict[str, float]:
        """Averages of what the agent recorded per step this episode (e.g. predicted returns)."""
        if not self.step_records:
            return {}
        keys = self.step_records[0].keys()
        return {k: float(np.mean([r[k] for r in self.step_records])) for k in keys}


def check_temperature(temperature: float) -> float:
    """A sampling temperature, refused below 0 (0 takes the policy's mode)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return temperature


def legal_actions(action_mask: Any, simulator: Simulator) -> Tensor | None:
    """An env's action mask as a (act_dim,) bool tensor; None if there is no mask.

    Raises :class:`SimagentsError` for a mask on Box actions, of the wrong length, or with no
    legal action."""
    if action_mask is None:
        return None
    if not simulator.act_discrete:
        raise SimagentsError(
            f"an action mask was given but the action space is {simulator.action_space}; "
            "masks apply to Discrete actions only: drop info['action_mask'] from this env"
        )
    legal = torch.as_tensor(np.asarray(action_mask) != 0).reshape(-1)
    if legal.numel() != simulator.act_dim:
        raise SimagentsError(
            f"action mask has {legal.numel()} entries but the simulator has {simulator.act_dim} actions "
            f"({simulator.action_space}); the env and the simulator's dataset do not match"
        )
    if not legal.any():
        raise SimagentsError("action mask allows no action; an agent cannot act in a finished episode")
    return legal


def to_env_action(action: Tensor, space: gym.Space[Any]) -> Any:
    if isinstance(space, gym.spaces.Discrete):
        return int(action.reshape(()).item())
    if space.shape is None:
        raise SimagentsError(f"unsupported action space {space}: use Discrete or Box")
    return action.numpy().reshape(space.shape).astype(space.dtype)  # a copy: the env may keep it


AgentFactory = Callable[..., Agent]
AGENTS: dict[str, AgentFactory] = {}


def register_agent(name: str) -> Callable[[AgentFactory], AgentFactory]:
    """Register a decision procedure under ``name`` for :func:`make_agent`, the CLI and the study.

    The factory is called as ``factory(simulator, **options)``; its keyword arguments are the
    agent's options (``--option key=value`` on the command line). Example, an imitator that
    samples at a fixed temperature (``runs/cartpole`` as trained by ``train``'s example):

    >>> from simagents import Simulator, make_agent, register_agent
    >>> from simagents.agents.imitation import ImitationAgent
    >>> @register_agent("cautious_imitation")
    ... def cautious_imitation(simulator, temperature=0.5):
    ...     return ImitationAgent(simulator, temperature=temperature)
    >>> agent = make_agent("cautious_imitation", Simulator.load("runs/cartpole"), temperature=0.1)
    >>> agent.temperature
    0.1
    """

    def add(factory: AgentFactory) -> AgentFactory:
        if name in AGENTS and AGENTS[name] is not factory:
            raise ValueError(f"an agent named {name!r} is already registered")
        AGENTS[name] = factory
        return factory

    return add


def check_agent_options(name: str, options: Collection[str]) -> None:
    """Refuse an unregistered agent ``name`` or an option its factory does not take."""
    if name not in AGENTS:
        raise SimagentsError(f"agent {name!r} is not registered; choose one of: {', '.join(sorted(AGENTS))}")
    accepted = inspect.signature(AGENTS[name]).parameters
    unknown = sorted(set(options) - set(accepted) - {"simulator"})
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        valid = [p for p in accepted if p != "simulator"]
        raise SimagentsError(
            f"agent {name!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(valid) or 'none'}"
        )


def make_agent(name: str, simulator: Simulator, **options: Any) -> Agent:
    """Wrap ``simulator`` in the decision procedure ``name`` (see ``AGENTS`` for the names).

    Example (``runs/cartpole`` as trained by :func:`~simagents.train.train`'s example):

    >>> import gymnasium
    >>> from simagents import Simulator, evaluate, make_agent
    >>> simulator = Simulator.load("runs/cartpole")
    >>> agent = make_agent("dt", simulator, target="max")
    >>> result = evaluate(agent, gymnasium.make("CartPole-v1"), episodes=2, seed=0)
    >>> len(result.returns)
    2
    """
    check_agent_options(name, options)
    try:
        return AGENTS[name](simulator, **options)
    except (TypeError, ValueError) as exc:
        raise SimagentsError(f"agent {name!r}: {exc}") from None


def parse_agent_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """An agent as the command line and the testbeds name it: ``NAME`` or ``NAME[KEY=VALUE,...]``.

    Returns the registered name and its options (values read as JSON where they parse), checked
    against the registry, so that a typo fails before any training:

    >>> parse_agent_spec("edt[horizon=3,value=bayes]")
    ('edt', {'horizon': 3, 'value': 'bayes'})
    """
    name, options = spec.strip(), {}
    if name.endswith("]") and "[" in name:
        name, inside = name[:-1].split("[", 1)
        for pair in inside.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise SimagentsError(
                    f"agent {spec!r}: options go as {name}[KEY=VALUE,...], e.g. edt[horizon=3]; got {pair!r}"
                )
            options[key.strip()] = option_value(value.strip())
    elif "[" in name or "]" in name:
        raise SimagentsError(f"agent {spec!r}: options go as NAME[KEY=VALUE,...], e.g. edt[horizon=3]")
    check_agent_options(name, options)
    return name, options


def split_agent_specs(text: str) -> list[str]:
    """A comma-separated list of agents, commas inside an agent's brackets kept:
    ``"dt,edt[horizon=3,beam=2]"`` -> ``["dt", "edt[horizon=3,beam=2]"]``."""
    specs, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            specs.append(text[start:i].strip())
            start = i + 1
    specs.append(text[start:].strip())  # unbalanced brackets stay in one spec, for its check to name
    return [spec for spec in specs if spec]
