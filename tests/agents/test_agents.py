import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import BOX_ACT, BOX_OBS, DISCRETE_ACT, tiny_model
from simagents.agents import AGENTS, evaluate, make_agent
from simagents.agents.planner import sampled_candidates
from simagents.data.episodes import episode_from_arrays
from simagents.data.minari_io import save_dataset
from simagents.errors import SimagentsError
from simagents.model import Context, Simulator, SimulatorConfig, as_model_input
from simagents.train import TrainConfig, train

CARTPOLE_OBS = gym.make("CartPole-v1").observation_space


def hand_set_planner_model(preferred_return: list[float]) -> Simulator:
    """A model whose action values are set by hand: every block is the identity, and action i's
    embedding points along direction i, which the action-value head maps to the return bin
    nearest ``preferred_return[i]``."""
    model = tiny_model(BOX_OBS, DISCRETE_ACT)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.ln_f, *[b.ln1 for b in model.blocks], *[b.ln2 for b in model.blocks]):
            norm.weight.fill_(1.0)
        bins = model.return_bins
        for action, target in enumerate(preferred_return):
            model.act_embed.weight[action, action] = 10.0
            model.action_value_head.weight[int(torch.argmin((bins - target).abs())), action] = 50.0
    return model


@pytest.mark.parametrize(("preferred", "best"), [([1.0, 3.0, -2.0], 1), ([2.5, -1.0, 0.0], 0)])
def test_planners_take_the_argmax_of_the_models_predictions(preferred, best):
    model = hand_set_planner_model(preferred)
    for name in ("edt", "cdt"):
        agent = make_agent(name, model)
        agent.reset(seed=0)
        assert agent.act(np.zeros(3, dtype=np.float32)) == best
        assert agent.episode_metrics()["predicted_return"] == pytest.approx(preferred[best], abs=0.2)


@pytest.mark.parametrize(("support", "best"), [(0.0, 0), (0.03, 0), (0.05, 1), (0.5, 1)])
def test_planners_choose_only_among_actions_the_policy_supports(support, best):
    # Action 0 has the highest predicted return, but the policy gives it 0.02 against 0.49 for
    # each of the others (a ratio of 0.04): kept below support 0.04, dropped above.
    model = hand_set_planner_model([3.0, 1.0, -2.0])
    with torch.no_grad():
        model.action_head.bias.copy_(torch.tensor([0.02, 0.49, 0.49]).log())
    for name in ("edt", "cdt"):
        agent = make_agent(name, model, support=support)
        agent.reset(seed=0)
        assert agent.act(np.zeros(3, dtype=np.float32)) == best
    with pytest.raises(SimagentsError, match="support"):
        make_agent("edt", model, support=1.5)


@pytest.mark.parametrize(("obs_space", "act_space"), [(BOX_OBS, DISCRETE_ACT), (BOX_OBS, BOX_ACT)])
@torch.no_grad()
def test_planner_choice_equals_argmax_of_independently_scored_candidates(obs_space, act_space):
    model = tiny_model(obs_space, act_space, seed=5)
    rng = np.random.default_rng(0)
    for name, flag in (("edt", False), ("cdt", True)):
        agent = make_agent(name, model, candidates=8)
        agent.reset(seed=3)
        ctx = Context(model)
        for _ in range(6):
            obs = rng.uniform(-1, 1, 3).astype(np.float32)
            action = agent.act(obs, 0.5)
            # Score the agent's candidates alone, one by one, on a context rebuilt independently.
            ctx.push_observation(as_model_input(obs, obs_space))
            h = ctx.push_return(None)
            if isinstance(act_space, gym.spaces.Discrete):
                candidates = torch.arange(act_space.n)
            else:
                generator = torch.Generator().manual_seed(0)
                candidates = torch.cat(
                    [model.sample_action(h, None, 0.0), model.sample_action(h, generator, 1.0, 7)]
                )
                candidates = torch.cat([candidates, torch.as_tensor(action).reshape(1, -1)])
            scores = [float(ctx.evaluate_actions(c[None], flag).expected_return[0]) for c in candidates]
            chosen = as_model_input(action, act_space)
            chosen_score = float(ctx.evaluate_actions(chosen[None], flag).expected_return[0])
            assert chosen_score >= max(scores) - 1e-5 or not isinstance(act_space, gym.spaces.Discrete)
            if isinstance(act_space, gym.spaces.Discrete):
                assert action == int(np.argmax(scores))
            ctx.push_action(chosen, flag)
            ctx.push_reward(0.5)


@torch.no_grad()
def test_box_policy_samples_and_candidates_equal_the_batch_paths_with_their_log_densities():
    model = tiny_model(BOX_OBS, BOX_ACT, seed=5)
    model.action_head.bias[model.act_dim :] = 1.0  # a wide policy: some samples fall outside the box
    h = torch.randn(1, model.cfg.n_embd)
    params = model.action_params_array(h)
    candidates, log_density = sampled_candidates(model, params, 9, torch.Generator().manual_seed(4))
    # the batch path's numbers: Simulator._gaussian and denormalize_action on tensors
    mean, log_std = model._gaussian(model.action_params(h))  # (1,A) each
    noise = torch.randn(8, model.act_dim, generator=torch.Generator().manual_seed(4))
    expected = model.denormalize_action(torch.cat([mean, mean + log_std.exp() * noise]))
    torch.testing.assert_close(candidates, expected)
    mode = model.sample_action(h, None, 0.0, n=2)
    samples = model.sample_action(h, torch.Generator().manual_seed(4), 1.0, 8)
    torch.testing.assert_close(torch.cat([mode, samples]), torch.cat([expected[:1], expected]))
    high = torch.as_tensor(BOX_ACT.high)
    assert bool((candidates == high).any() | (candidates == -high).any())  # the clipped ones count too
    log_p = model.action_log_prob(h.expand(9, -1), candidates).numpy()
    np.testing.assert_allclose(log_density - log_density[0], log_p - log_p[0], atol=1e-4)
    # the head's numpy copy follows an in-place change, as an optimiser step makes
    model.action_head.weight.mul_(-1)
    mean, _ = model._gaussian(model.action_params(h))
    torch.testing.assert_close(model.sample_action(h, None, 0.0), model.denormalize_action(mean))


BANDIT_SPACES = (gym.spaces.Discrete(1), gym.spaces.Discrete(2))
"""One-step bandits: a single observation, two arms."""


def one_step_episodes(actions: np.ndarray, rewards: np.ndarray, intervene: bool = False) -> list:
    obs_space, act_space = BANDIT_SPACES
    return [
        episode_from_arrays(
            observations=np.zeros(2, dtype=np.int64),
            actions=actions[i : i + 1],
            rewards=rewards[i : i + 1].astype(np.float64),
            terminations=np.array([True]),
            truncations=np.array([False]),
            observation_space=obs_space,
            action_space=act_space,
            interventions=np.array([intervene]),
        )
        for i in range(len(actions))
    ]


def train_bandit_simulator(tmp_path: Path, datasets: dict[str, list], **model: int) -> Simulator:
    obs_space, act_space = BANDIT_SPACES
    paths = [
        save_dataset(eps, tmp_path / name, observation_space=obs_space, action_space=act_space)
        for name, eps in datasets.items()
    ]
    cfg = TrainConfig(
        data=tuple(str(p) for p in paths),
        out=tmp_path / "run",
        model=SimulatorConfig(context_len=1, n_embd=32, n_layer=1, n_head=1, **model),
        steps=300,
        batch_size=128,
        lr=3e-3,
        warmup_steps=20,
        eval_every=300,
        log_every=300,
    )
    return Simulator.load(train(cfg, progress=False))


def confounded_bandit_episodes(rng, n: int, p_match: float, intervene: bool) -> list:
    """One-step episodes: hidden h ~ Bernoulli(0.5) is never observed; reward 1 iff the action
    matches h. Demonstrators match h with probability p_match (evidence); an intervening agent
    picks uniformly, independently of h."""
    hidden = rng.integers(0, 2, n)
    if intervene:
        actions = rng.integers(0, 2, n)
    else:
        actions = np.where(rng.random(n) < p_match, hidden, 1 - hidden)
    return one_step_episodes(actions, (actions == hidden).astype(np.float64), intervene)


def action_values(tmp_path: Path, p_match: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    evidence = confounded_bandit_episodes(rng, 1000, p_match, intervene=False)
    interventions = confounded_bandit_episodes(rng, 1000, p_match, intervene=True)
    model = train_bandit_simulator(tmp_path, {"evidence": evidence, "interventions": interventions})
    ctx = Context(model)
    with torch.no_grad():
        ctx.push_observation(torch.tensor(0))
        ctx.push_return(None)
        edt = ctx.evaluate_actions(torch.arange(2), intervention=False).expected_return.numpy()
        cdt = ctx.evaluate_actions(torch.arange(2), intervention=True).expected_return.numpy()
    return edt, cdt


def test_evidential_and_interventional_values_differ_only_on_confounded_data(tmp_path: Path):
    edt, cdt = action_values(tmp_path / "confounded", p_match=0.9)
    # Evidence: the demonstrator's choice reveals h, so the action "wins" 90% of the time.
    assert edt == pytest.approx([0.9, 0.9], abs=0.1)
    assert cdt == pytest.approx([0.5, 0.5], abs=0.1)
    edt, cdt = action_values(tmp_path / "unconfounded", p_match=0.5)
    assert np.abs(edt - cdt).max() < 0.1
    assert edt == pytest.approx([0.5, 0.5], abs=0.1)


def test_evaluate_is_deterministic_under_a_seed():
    env = gym.make("CartPole-v1")
    model = tiny_model(CARTPOLE_OBS, DISCRETE_ACT.__class__(2), seed=1)
    for name in ("imitation", "dt"):
        a = evaluate(make_agent(name, model), env, episodes=3, seed=7).returns
        b = evaluate(make_agent(name, model), env, episodes=3, seed=7).returns
        assert a == b
    many = {
        tuple(evaluate(make_agent("imitation", model), env, episodes=3, seed=s).returns) for s in range(4)
    }
    assert len(many) > 1  # the seed does reach the sampling


def test_agent_registry_errors():
    model = tiny_model()
    with pytest.raises(SimagentsError, match="choose one of"):
        make_agent("oracle", model)
    with pytest.raises(SimagentsError, match="temperature"):
        make_agent("imitation", model, temperature=-1)
    with pytest.raises(SimagentsError, match="temperature"):
        make_agent("dt", model, temperature=-1)
    with pytest.raises(SimagentsError, match="percentile"):
        make_agent("dt", model, target="best")
    assert {"imitation", "dt", "edt", "cdt"} <= set(AGENTS)


@pytest.mark.parametrize("name", ["imitation", "dt", "edt", "cdt", "rl"])
def test_every_agent_takes_the_history_its_context_keeps(name):
    model = tiny_model(CARTPOLE_OBS, DISCRETE_ACT.__class__(2), seed=1)  # context_len 4
    env = gym.make("CartPole-v1")
    held = {}
    for min_history in (None, 3):
        agent = make_agent(name, model, min_history=min_history)
        obs, _ = env.reset(seed=0)
        sizes, reward = [], 0.0
        for _ in range(12):
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, reward))
            sizes.append(agent.context.held_steps)
            if terminated or truncated:
                break
        held[min_history] = set(sizes[4:])
    assert held == {None: {3, 4}, 3: {4}}  # the default keeps half of the 4 steps, 3 a sliding window
    with pytest.raises(SimagentsError, match=r"min_history must be .* from 0 to context_len - 1 = 3"):
        make_agent(name, model, min_history=4)


@pytest.mark.parametrize("favoured", [0, 2])
def test_dt_takes_the_policys_mode_unless_told_to_sample(favoured: int):
    # The policy head's bias alone decides: action `favoured` at probability e^1.5 / (e^1.5 + 2).
    model = tiny_model(act_space=gym.spaces.Discrete(3))
    with torch.no_grad():
        model.action_head.weight.zero_()
        model.action_head.bias.zero_()
        model.action_head.bias[favoured] = 1.5
    observation = np.zeros(3, dtype=np.float32)
    greedy, sampled = make_agent("dt", model), make_agent("dt", model, temperature=1.0)
    chosen = {"greedy": [], "sampled": []}
    for seed in range(40):
        for name, agent in (("greedy", greedy), ("sampled", sampled)):
            agent.reset(seed=seed)
            chosen[name].append(agent.act(observation))
    assert chosen["greedy"] == [favoured] * 40 and greedy.action_probabilities is None
    assert len(set(chosen["sampled"])) > 1 and sampled.action_probabilities[favoured] == pytest.approx(
        math.exp(1.5) / (math.exp(1.5) + 2)
    )


def test_dt_lowers_its_target_by_the_rewards_received():
    model = tiny_model()
    agent = make_agent("dt", model, target=10.0)
    agent.reset(seed=0)
    for reward in (0.0, 1.5, 2.0):
        agent.act(np.zeros(3, dtype=np.float32), reward)
    prompted = [r["prompted_return"] for r in agent.step_records]
    assert prompted == [10.0, 8.5, 6.5]


def bandit_simulator(tmp_path: Path, win_rates: tuple[float, float]) -> Simulator:
    """A simulator of a one-step bandit's observational data: the demonstrator pulls arm 0 60%
    of the time, and arm i pays 1 with probability ``win_rates[i]``, else 0."""
    rng = np.random.default_rng(0)
    actions = (rng.random(1500) < 0.4).astype(np.int64)
    rewards = (rng.random(1500) < np.asarray(win_rates)[actions]).astype(np.float64)
    return train_bandit_simulator(tmp_path, {"data": one_step_episodes(actions, rewards)}, n_return_bins=21)


@pytest.mark.parametrize(("win_rates", "best"), [((0.8, 0.3), 0), ((0.2, 0.7), 1)])
def test_bayes_rule_over_the_return_conditioned_policy_values_each_arm(tmp_path: Path, win_rates, best):
    from simagents.agents.planner import Trajectory, bayes_action_values

    model = bandit_simulator(tmp_path, win_rates)
    with torch.no_grad():
        values = bayes_action_values(model, Trajectory([torch.tensor(0)], [], []), torch.arange(2)).numpy()
        ctx = Context(model)
        ctx.push_observation(torch.tensor(0))
        ctx.push_return(None)
        head = ctx.evaluate_actions(torch.arange(2), intervention=False).expected_return.numpy()
    # P(R | a) from P(R) P(a | R): each arm's own win rate, as the action-value head reads it.
    assert values == pytest.approx(win_rates, abs=0.12)
    assert np.abs(values - head).max() < 0.15
    agent = make_agent("edt", model, value="bayes")
    agent.reset(seed=0)
    assert agent.act(0) == best
    assert agent.episode_metrics()["predicted_return"] == pytest.approx(win_rates[best], abs=0.12)


def test_return_hypotheses_merge_neighbouring_bins_into_groups_of_equal_probability():
    from simagents.agents.planner import return_hypotheses

    bins = torch.linspace(0.0, 100.0, 101)
    spread = torch.full((101,), 1 / 101)
    prior, returns = return_hypotheses(spread, bins)  # no cap: every bin over the threshold
    assert torch.equal(returns, bins) and torch.equal(prior, spread)
    prior, returns = return_hypotheses(spread, bins, max_hypotheses=4)
    assert returns.shape == prior.shape == (4,)
    assert torch.all(returns.diff() > 0)
    assert prior.sum() == pytest.approx(1.0) and prior.numpy() == pytest.approx(0.25, abs=0.01)
    # Merging keeps the prior's mean return: the posterior mean of an action the policy gives
    # every return alike is the same as without the cap.
    assert float((prior * returns).sum()) == pytest.approx(50.0, abs=1e-3)
    # A bin heavier than a group's share is a group of its own; no group is empty.
    peaked = torch.full((101,), 0.3 / 100).index_put_((torch.tensor([70]),), torch.tensor(0.7))
    prior, returns = return_hypotheses(peaked, bins, max_hypotheses=4)
    assert 70.0 in returns.tolist() and torch.all(prior > 0) and returns.shape[0] <= 4
    assert prior.max() == pytest.approx(0.7)
    # Under the cap nothing changes.
    few = torch.zeros(101).index_put_((torch.tensor([10, 20, 30]),), torch.tensor([0.2, 0.5, 0.3]))
    prior, returns = return_hypotheses(few, bins, max_hypotheses=4)
    assert returns.tolist() == [10.0, 20.0, 30.0] and prior.tolist() == pytest.approx([0.2, 0.5, 0.3])


@pytest.mark.parametrize(("win_rates", "best"), [((0.8, 0.3), 0), ((0.2, 0.7), 1)])
def test_one_return_hypothesis_leaves_no_evidence_and_more_recover_the_uncapped_values(
    tmp_path: Path, win_rates, best
):
    from simagents.agents.planner import Trajectory, bayes_action_values

    model = bandit_simulator(tmp_path, win_rates)
    trajectory = Trajectory([torch.tensor(0)], [], [])
    with torch.no_grad():
        uncapped = bayes_action_values(model, trajectory, torch.arange(2)).numpy()
        # One hypothesis: the posterior is the prior whatever the action: both arms score alike.
        one = bayes_action_values(model, trajectory, torch.arange(2), max_hypotheses=1).numpy()
        # Two (a loss and a win, the bandit's two outcomes): the arms' values as without the cap.
        two = bayes_action_values(model, trajectory, torch.arange(2), max_hypotheses=2).numpy()
    assert one[0] == pytest.approx(one[1], abs=1e-6)
    assert two == pytest.approx(uncapped, abs=0.02)
    agent = make_agent("edt", model, value="bayes", hypotheses=2)
    agent.reset(seed=0)
    assert agent.act(0) == best


def test_bayes_rule_is_for_evidence_and_the_step_itself():
    model = hand_set_planner_model([1.0, 3.0, -2.0])
    with pytest.raises(SimagentsError, match="intervention"):
        make_agent("cdt", model, value="bayes")
    with pytest.raises(SimagentsError, match="horizon=0"):
        make_agent("edt", model, value="bayes", horizon=2)
    with pytest.raises(SimagentsError, match="value must be one of head, bayes"):
        make_agent("edt", model, value="posterior")
    with pytest.raises(SimagentsError, match="hypotheses must be >= 0"):
        make_agent("edt", model, value="bayes", hypotheses=-1)


@pytest.mark.parametrize(("obs_space", "act_space"), [(BOX_OBS, DISCRETE_ACT), (BOX_OBS, BOX_ACT)])
@torch.no_grad()
def test_bayes_planner_rereads_the_episode_it_played(obs_space, act_space):
    # Past the context (4 steps) the window slides; each choice is the argmax of Bayes' rule over
    # the episode so far, as scored from the agent's own record of it.
    from simagents.agents.planner import bayes_action_values

    model = tiny_model(obs_space, act_space, seed=5)
    agent = make_agent("edt", model, value="bayes", support=0.0, candidates=6)
    agent.reset(seed=1)
    rng = np.random.default_rng(0)
    for t in range(7):
        obs = rng.normal(size=3).astype(np.float32)
        action = agent.act(obs, reward=float(t % 3))
        assert len(agent.trajectory.observations) == t + 1
        assert len(agent.trajectory.rewards) == t
        assert len(agent.trajectory.actions) == t + 1  # this step's choice appended
        if model.act_discrete:
            last = agent.trajectory.actions.pop()  # score the step as it was before the choice
            values = bayes_action_values(model, agent.trajectory, torch.arange(3))
            agent.trajectory.actions.append(last)
            assert action == int(values.argmax())
        assert agent.episode_metrics()["predicted_return"] == pytest.approx(
            np.mean([r["predicted_return"] for r in agent.step_records])
        )


def test_act_runs_without_autograd_and_gives_the_callers_grad_mode_back():
    from simagents.agents.imitation import ImitationAgent

    seen: list[bool] = []

    class Probe(ImitationAgent):
        def choose(self) -> torch.Tensor:
            seen.append(torch.is_grad_enabled())
            if len(seen) == 2:
                raise RuntimeError("a procedure that fails mid-act")
            return super().choose()

    agent = Probe(tiny_model(BOX_OBS, BOX_ACT))
    agent.reset(seed=0)
    for grad in (True, False):
        seen.clear()
        with torch.set_grad_enabled(grad):
            action = agent.act(np.zeros(3, np.float32))
            assert torch.is_grad_enabled() is grad
            with pytest.raises(RuntimeError, match="fails mid-act"):
                agent.act(np.zeros(3, np.float32), 0.0)
            assert torch.is_grad_enabled() is grad  # restored after the error too
        assert seen == [False, False] and BOX_ACT.contains(action)


def test_agent_specs_parse_options_and_keep_bracketed_commas():
    from simagents.agents.base import parse_agent_spec, split_agent_specs

    assert split_agent_specs(" dt, edt[horizon=3,beam=2] ,,cdt") == ["dt", "edt[horizon=3,beam=2]", "cdt"]
    assert parse_agent_spec("edt") == ("edt", {})
    assert parse_agent_spec("edt[horizon=3, value=bayes]") == ("edt", {"horizon": 3, "value": "bayes"})
    assert parse_agent_spec("dt[target=max,temperature=0.5]") == ("dt", {"target": "max", "temperature": 0.5})
    with pytest.raises(SimagentsError, match="has no option"):
        parse_agent_spec("dt[horizon=3]")  # an edt option, not dt's
    with pytest.raises(SimagentsError, match="not registered"):
        parse_agent_spec("oracle[horizon=3]")
