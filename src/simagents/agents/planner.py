"""Route 5, outer-loop planning: score every candidate action by its predicted return, take the best.

The same planner makes two decision theorists, depending only on how it asks the
simulator about its own action (seed 000):

- ``edt``: the action enters as *evidence*, as a demonstrator's choice would. The
  simulator answers "what return follows, among trajectories where this action
  was taken?" — an evidential decision theorist (one-boxes, cooperates with its
  twin, abstains in the smoking lesion).
- ``cdt``: the action enters as an *intervention*. A simulator trained with
  counterfactual teaching answers "what return follows if I set this action?" —
  a causal decision theorist.

Candidates: every action of a Discrete space; for Box, ``candidates`` samples from
the imitation policy plus its mode. All are scored in one batch on the shared
cached prefix.

Support: a predicted return is an average over the data's trajectories that took
the action, so an action the data's agents almost never take in this situation
has its value estimated from next to no evidence. The planner therefore only
chooses among candidates whose probability under the simulator's own policy (the
imitation policy, return unknown; a density for Box actions) is at least
``support`` times the most probable candidate's — the action filter of batch-
constrained Q-learning (BCQ, Fujimoto et al. 2019). The default 0.05 drops only
actions the policy gives under 1/20 of its favourite's probability; ``support=0``
is the bare argmax. Measured on the quick study's CartPole simulator (20
episodes): edt 492.5 ± 9.8 with ``support=0`` (near-ties late in an episode, where
every trajectory in the data is truncated at 500 whichever action it took, flip
the pole down), 500.0 ± 0.0 with 0.05 to 0.3.

Scoring, by ``horizon``:

- ``horizon=0`` (default): the one-step action-value head at a_t; or, for ``edt`` with
  ``value="bayes"``, Bayes' rule over the simulator's return-conditioned policy:
  P(R | h, a) ∝ P(R | h) · P(a | h, R), with P(R | h) the value head at o_t (return unknown)
  and P(a | h, R) the policy head prompted with each return R that P(R | h) gives weight
  (the Decision Transformer's own head, trained on every window that shows its return), and
  the candidate scored by the posterior mean of R. It is the same evidential quantity
  E[R | h, a] as the action-value head's, read from the heads that learn most: on the Connect
  Four testbed's quick-study simulator (100 games against the reference opponent) the
  action-value head's argmax won 0.18 with 0.108 blunders per move, Bayes' rule 0.51 with 0.040
  (the players' average: 0.44 and 0.076). It needs the action to be evidence, so ``cdt``
  has no such option; and it holds only for a simulator of observational data: the value
  head learns P(R | h) from every episode, the policy only from actions that are evidence,
  so with interventional episodes in the data the prior is the mixture's (in the twin
  prisoner's dilemma, trained on both, it defects where the action-value head cooperates).
  Each return prompted is a row of one more pass over the window, so ``hypotheses``
  (default 8) caps them: where P(R | h) spreads over more bins, neighbouring ones merge into
  that many groups of equal probability (:func:`return_hypotheses`). On CartPole (returns
  0-500, 201 bins), after 250 updates on the quality benchmark's data (with the warmup of 100
  steps that was then the default), 20 episodes: mean
  return 328 at 12 ms a decision with 8, 332 with 16, against 170-270 ms a decision uncapped
  (305 over its first 5 episodes, 307 capped). With Connect Four's returns (-1, 0, 1) the
  default-budget simulator kept at most 5 of its 21 bins (20 games), so the cap did not merge.
- ``horizon=H``: roll the simulator's own world model H steps forward from each
  candidate (trajectory-transformer style) and score it by the predicted rewards of
  those steps plus the value head's expected return at the last predicted
  observation. A continuation stops accumulating once the termination head says
  P(done) > 0.5 (no value after termination). Later actions come from the imitation
  policy (unknown return token): its mode with ``beam=1``; with ``beam=W > 1`` each
  continuation is expanded with its W most probable actions (Discrete) or W sampled
  ones (Box), and the W best per candidate by accumulated reward + value are kept.
  The planner's own later actions carry its intervention flag. All candidates and
  beams run as one batch: one transformer pass per token kind per step. It reads what the
  world model has learnt of an action's effect, which can come before the action-value head
  has separated it from the returns' noise: on the quality benchmark's CartPole data (three
  training seeds, 20 episodes each) ``horizon=3`` scored 499.4 after 250 updates against the
  head's 287.5, level with it at 500 and 125 (benchmarks/README.md). Each predicted step is
  three eager passes (18 ms a decision at horizon 3 against 0.2 ms for ``horizon=0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simagents.agents.base import SimulatorAgent, register_agent
from simagents.kernels import best_supported as supported_argmax
from simagents.model import TOKENS_PER_STEP, Context, Simulator, as_model_input

VALUES = ("head", "bayes")
"""How ``horizon=0`` scores a candidate: the action-value head, or Bayes' rule over the
return-conditioned policy (``edt`` only; see the module docstring)."""

MIN_RETURN_PROBABILITY = 1e-3
"""Return bins below this probability under P(R | h) are left out of Bayes' rule, so that the
policy is prompted with the few returns that are likely instead of every bin (201 by default).
A bin left out weighs at most this much in the prior; it can matter only for an action much
likelier under that return than under the returns kept."""


@dataclass
class PlanScores:
    """What the planner knows about each of N candidates."""

    total: Tensor  # (N,) predicted return: action value (horizon 0) or rewards + value of the best beam
    reward: Tensor  # (N,) predicted immediate reward


def policy_actions(
    model: Simulator, h_return: Tensor, beam: int, generator: torch.Generator | None
) -> Tensor:
    """Hidden at R (B,d) -> next actions per row: (B,c) long or (B,c,act_dim) in env units.

    beam 1: the mode (c=1). beam W > 1: the W most probable actions (Discrete, c=min(W, act_dim))
    or W samples (Box, c=W)."""
    params = model.action_params(h_return)
    if model.act_discrete:
        return params.topk(min(beam, model.act_dim), dim=-1).indices + model.act_start
    mean, log_std = model._gaussian(params)  # (B,A) each, mean in [-1,1]
    if beam == 1:
        return model.denormalize_action(mean).unsqueeze(1)
    noise = torch.randn(mean.shape[0], beam, mean.shape[1], generator=generator)
    return model.denormalize_action(mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * noise)


def rollout_scores(
    context: Context,
    candidates: Tensor,
    intervention: bool,
    horizon: int,
    beam: int = 1,
    generator: torch.Generator | None = None,
) -> PlanScores:
    """Score N candidates (N,) or (N,act_dim) by an H-step rollout of the world model (beam search).

    Call after the return token is pushed; the context is not changed (the rollout forks it)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 for a rollout, got {horizon}")
    model = context.model
    n = candidates.shape[0]
    rollout = context.fork(n, extra_tokens=TOKENS_PER_STEP * horizon)  # a, r, o, R per step
    actions = candidates  # (N*width, ...): the rows to push this step, candidate-major
    width = 1  # continuations per candidate this step
    total = torch.zeros(n, 1)  # (N,width) summed predicted rewards
    alive = torch.ones(n, 1, dtype=torch.bool)  # (N,width) not terminated before this step
    duplicate = torch.zeros(n, 1, dtype=torch.bool)  # (N,width) extra copies of a terminated beam
    first_reward = torch.zeros(n)  # (N,) predicted reward of each candidate itself
    for step in range(horizon):
        last = step == horizon - 1
        h_action = rollout.push_actions(actions, intervention)  # (B,d), B = N*width
        reward = model.predicted_reward(h_action)  # (B,)
        h_reward = rollout.push_rewards(reward)
        done = rollout.terminated(h_reward)  # (B,)
        h = rollout.push_observations(rollout.predicted_observation(h_reward), unknown_return=not last)
        value = model.expected_return(model.value_head(h[:, 0]))  # (B,) at o_{t+step+1}
        reward, done, value = (z.view(n, width) for z in (reward, done, value))
        if step == 0:
            first_reward = reward[:, 0]
        total = total + alive * reward
        alive = alive & ~done
        score = total + alive * value  # (N,width)
        if last:
            break
        # Keep the `beam` best continuations per candidate ...
        keep = min(beam, width)
        top = score.masked_fill(duplicate, -torch.inf).topk(keep, dim=1).indices  # (N,keep)
        rows = (top + width * torch.arange(n).unsqueeze(1)).reshape(-1)  # (N*keep,)
        total, alive = total.gather(1, top), alive.gather(1, top)
        # ... and expand each with its next actions: c children per kept continuation.
        children = policy_actions(model, h[rows, 1], beam, generator)  # (N*keep,c,...)
        c = children.shape[1]
        rollout.select(rows.repeat_interleave(c))
        actions = children.flatten(0, 1)
        # A terminated continuation's children are all the same; rank only its first.
        duplicate = ((~alive).unsqueeze(-1) & (torch.arange(c) > 0)).reshape(n, keep * c)
        total, alive = total.repeat_interleave(c, dim=1), alive.repeat_interleave(c, dim=1)
        width = keep * c
    return PlanScores(score.max(dim=1).values, first_reward)


@dataclass
class Trajectory:
    """The episode so far in model input form: what :func:`bayes_action_values` re-reads with
    each hypothetical return."""

    observations: list[Tensor]  # o_0 .. o_t
    actions: list[Tensor]  # a_0 .. a_{t-1}
    rewards: list[float]  # r_0 .. r_{t-1}


def return_hypotheses(p_return: Tensor, bins: Tensor, max_hypotheses: int = 0) -> tuple[Tensor, Tensor]:
    """P(R | h) over the return bins (bins,) -> the returns Bayes' rule prompts the policy with and
    their prior probabilities, (M,) each, in increasing order of return.

    The bins with probability at least ``MIN_RETURN_PROBABILITY`` (the likeliest one if none is),
    each its own hypothesis; with ``max_hypotheses`` > 0 and more bins than that, neighbouring bins
    are merged into that many groups of about equal probability, each prompted with its mean
    return (weighted by probability) and given its summed probability. Merging assumes the policy
    changes little between neighbouring returns within a group; it bounds the prompted pass, whose
    rows are the hypotheses, where P(R | h) is spread over many bins (CartPole's returns, 0 to 500)."""
    kept = torch.nonzero(p_return >= MIN_RETURN_PROBABILITY).squeeze(1)
    if kept.numel() == 0:  # a flat distribution over very many bins: keep the likeliest
        kept = p_return.argmax().reshape(1)
    prior, returns = p_return[kept], bins[kept]
    if max_hypotheses <= 0 or kept.numel() <= max_hypotheses:
        return prior, returns
    # Each bin joins the group its probability's midpoint falls in, on the cumulative scale.
    midpoint = (prior.cumsum(0) - 0.5 * prior) / prior.sum()
    group = (midpoint * max_hypotheses).long().clamp(max=max_hypotheses - 1)
    group = torch.unique_consecutive(group, return_inverse=True)[1]  # drop empty groups
    mass = torch.zeros(int(group.max()) + 1).index_add_(0, group, prior)
    mean = torch.zeros_like(mass).index_add_(0, group, prior * returns) / mass
    return mass, mean


def bayes_action_values(
    model: Simulator, trajectory: Trajectory, candidates: Tensor, label: int = 0, max_hypotheses: int = 0
) -> Tensor:
    """E[R_t | history, a] for each candidate (N,) or (N,act_dim) at step t, by Bayes' rule.

    Two passes of the model over the last ``context_len`` steps: one with the returns unknown
    (P(R_t | h) from the value head at o_t, with ``label``), one with a row per hypothesis r
    (:func:`return_hypotheses`, at most ``max_hypotheses`` if that is > 0), its return tokens set as the
    Decision Transformer's would be had the return from step t been r (r plus the rewards
    received since), the label unknown as in every training window that shows its return.
    Then P(R = r | h, a) ∝ P(r | h) · P(a | h, r) and the score is the posterior mean."""
    K = model.cfg.context_len
    T = len(trajectory.observations)
    first = max(T - K, 0)
    n = T - first
    observations = torch.stack(trajectory.observations[first:]).unsqueeze(0)  # (1,n,...)
    placeholder = candidates[:1]  # a_t's slot: the policy at R_t reads only what comes before it
    actions = torch.cat(
        [*(a.reshape(placeholder.shape) for a in trajectory.actions[first:]), placeholder]
    )  # (n,...)
    rewards = torch.tensor([*trajectory.rewards[first:], 0.0])  # (n,)
    timesteps = torch.arange(first, T).unsqueeze(0)

    def batch(rows: int, returns: Tensor, known: bool, labels: int) -> dict[str, Tensor]:
        return {
            "observations": observations.expand(rows, *observations.shape[1:]),
            "returns_to_go": returns,
            "return_known": torch.full((rows,), known),
            "actions": actions.unsqueeze(0).expand(rows, *actions.shape),
            "interventions": torch.zeros(rows, n, dtype=torch.bool),
            "rewards": rewards.unsqueeze(0).expand(rows, n),
            "timesteps": timesteps.expand(rows, n),
            "label": torch.full((rows,), labels),
        }

    h = model(batch(1, torch.zeros(1, n), known=False, labels=label))
    p_return = torch.softmax(model.value_head(h["obs"][0, -1]), -1)  # (bins,)
    prior, hypotheses = return_hypotheses(p_return, model.return_bins, max_hypotheses)  # (M,) each
    # Return-to-go at each held step t' under "R_t = r": r plus the rewards from t' to t-1.
    since = rewards.flip(0).cumsum(0).flip(0)  # (n,); rewards[-1], a_t's slot, is 0
    returns = hypotheses.unsqueeze(1) + since.unsqueeze(0)  # (M,n)
    M = hypotheses.shape[0]
    h_prompted = model(batch(M, returns, known=True, labels=0))["return"][:, -1]  # (M,d)
    N = candidates.shape[0]
    log_policy = model.action_log_prob(
        h_prompted.repeat_interleave(N, 0), candidates.repeat(M, *[1] * (candidates.dim() - 1))
    ).view(M, N)  # (M,N): log P(a | h, r)
    posterior = torch.softmax(prior.log().unsqueeze(1) + log_policy, 0)  # (M,N) over r
    return (posterior * hypotheses.unsqueeze(1)).sum(0)


def sampled_candidates(
    model: Simulator, params: np.ndarray, n: int, generator: torch.Generator | None
) -> tuple[Tensor, np.ndarray]:
    """Box: the policy head's output at R_t (2*act_dim,) -> the policy's mode and n-1 samples
    (n,act_dim) in env units, and their log densities under the policy up to a constant shared by
    all (n,).

    The numbers of ``sample_action`` (temperature 0, then n-1 samples from the same generator),
    from one evaluation of :meth:`~simagents.model.Simulator.gaussian_actions`."""
    noise = np.zeros((n, model.act_dim), np.float32)  # the first row: the mode
    noise[1:] = torch.randn(n - 1, model.act_dim, generator=generator).numpy()
    actions, log_density = model.gaussian_actions(params, noise, 1.0)
    return torch.from_numpy(actions), log_density


def evenly_spaced_actions(model: Simulator, levels: int) -> Tensor:
    """Box actions: ``levels`` evenly spaced values per dimension from low to high, every
    combination (levels ** act_dim, act_dim) in env units."""
    grid = torch.linspace(-1.0, 1.0, levels)
    points = torch.cartesian_prod(*[grid] * model.act_dim).reshape(-1, model.act_dim)
    return model.denormalize_action(points)


class PlannerAgent(SimulatorAgent):
    """The planner of the module docstring; :class:`EvidentialPlanner` and :class:`CausalPlanner`
    fix how it enters its own action (``intervention``)."""

    def __init__(
        self,
        simulator: Simulator,
        candidates: int = 16,
        horizon: int = 0,
        beam: int = 1,
        levels: int = 0,
        support: float = 0.05,
        value: str = "head",
        hypotheses: int = 8,
        min_history: int | None = None,
    ) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        if levels == 1 or levels < 0:
            raise ValueError(f"levels must be 0 (sample candidates) or >= 2, got {levels}")
        if not 0 <= support <= 1:
            raise ValueError(f"support must be in [0, 1] (0: no filter), got {support}")
        if value not in VALUES:
            raise ValueError(f"value must be one of {', '.join(VALUES)}, got {value!r}")
        if value == "bayes" and self.intervention:
            raise ValueError(
                "value='bayes' reads the action as evidence about the return; cdt's action is an "
                "intervention, so cdt scores by the action-value head (value='head')"
            )
        if hypotheses < 0:
            raise ValueError(f"hypotheses must be >= 0 (0: every likely return bin), got {hypotheses}")
        if value == "bayes" and horizon:
            raise ValueError("value='bayes' scores the step itself; use it with horizon=0")
        self.value = value
        self.hypotheses = hypotheses
        self.support = support
        self.levels = levels
        self.n_candidates = candidates
        self.horizon = horizon
        self.beam = beam
        super().__init__(simulator, min_history=min_history)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.trajectory = Trajectory([], [], [])

    def act(self, observation: Any, reward: float = 0.0, action_mask: np.ndarray | None = None) -> Any:
        if self.value == "bayes":  # Bayes' rule re-reads the episode with each hypothetical return
            if self.started:
                self.trajectory.rewards.append(float(reward))
            self.trajectory.observations.append(as_model_input(observation, self.simulator.observation_space))
        return super().act(observation, reward, action_mask)

    def candidate_actions(self) -> tuple[Tensor, np.ndarray | None]:
        """This step's candidates, and their log probabilities under the policy where drawing them
        gave those (sampled ones), else None; the return token is queued. Only sampled candidates
        (Box) need the policy, and so a pass of their own; the others run with the step's tokens."""
        model = self.simulator
        if model.act_discrete:
            actions = torch.arange(model.act_dim) + model.act_start
            return (actions if self.legal is None else actions[self.legal]), None
        if self.levels:  # a fixed grid instead of policy samples: every part of the range gets scored
            return evenly_spaced_actions(model, self.levels), None
        return sampled_candidates(model, self.context.policy_params(), self.n_candidates, self.generator)

    def choose(self) -> Tensor:
        self.context.queue_return(None)
        candidates, log_p = self.candidate_actions()
        scores = self.score(candidates)
        # numpy, not torch indexing: at batch 1 a torch call costs several times a numpy one
        total, reward = scores.total.numpy(), scores.reward.numpy()
        best = self.best_supported(total, candidates, log_p)
        self.step_records.append(
            {"predicted_return": total.item(best), "predicted_reward": reward.item(best)}
        )
        action = torch.as_tensor(candidates.numpy()[best])
        if self.value == "bayes":
            self.trajectory.actions.append(action)
        return action

    def best_supported(self, total: np.ndarray, candidates: Tensor, log_p: np.ndarray | None = None) -> int:
        """The index of the highest ``total`` (N,) (the first of ties) among the candidates the
        policy gives at least ``support`` times its most probable candidate's probability (see
        the module docstring); ``log_p`` (N,): their log probabilities up to a shared constant,
        if known."""
        if self.support == 0 or candidates.shape[0] < 2:
            return int(np.argmax(total))
        if log_p is None:
            model = self.simulator
            params = self.context.policy_params()  # at R_t: already run with the candidates, no new pass
            if model.act_discrete:  # the logits: log probabilities up to the log-partition
                log_p = params[candidates.numpy() - model.act_start]
            else:
                h_return = self.context.hidden()
                log_p = model.action_log_prob(h_return.expand(candidates.shape[0], -1), candidates).numpy()
        # compiled: after the pass each numpy call costs 10-25 us, several times its warm cost
        return supported_argmax(total, log_p, math.log(self.support))

    def score(self, candidates: Tensor) -> PlanScores:
        """Predicted return of each candidate (N,) or (N,act_dim) at the current step (return token pushed)."""
        if self.horizon == 0:
            evaluation = self.context.evaluate_actions(candidates, self.intervention)
            if self.value == "bayes":
                label = self.simulator.label_index(self.episode_label)
                total = bayes_action_values(
                    self.simulator, self.trajectory, candidates, label, self.hypotheses
                )
                return PlanScores(total, evaluation.reward)
            return PlanScores(evaluation.expected_return, evaluation.reward)
        return rollout_scores(
            self.context, candidates, self.intervention, self.horizon, self.beam, self.generator
        )


@register_agent("edt")
class EvidentialPlanner(PlannerAgent):
    """Evidential planner: the agent's own action is evidence. horizon > 0: score by a rollout.
    value="bayes": score by Bayes' rule over the return-conditioned policy, not the action-value head,
    prompting it with at most ``hypotheses`` returns (0: every likely return bin).
    levels=K (Box actions): score a grid of K evenly spaced actions per dimension, not samples.
    support: choose only among actions the policy gives at least this share of its favourite's
    probability (0: the bare argmax)."""

    intervention = False


@register_agent("cdt")
class CausalPlanner(PlannerAgent):
    """Causal planner: the agent's own action is an intervention (needs counterfactual teaching);
    options as for edt."""

    intervention = True
