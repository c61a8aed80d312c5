"""Planners scoring candidates by rolling the world model forward (horizon, beam)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import BOX_ACT, BOX_OBS, DISCRETE_ACT, DISCRETE_OBS, tiny_model
from simagents.agents import make_agent
from simagents.agents.planner import rollout_scores
from simagents.model import Context, Rollout, as_model_input

SPACES = [(BOX_OBS, DISCRETE_ACT), (DISCRETE_OBS, BOX_ACT)]


def planner_model(obs_space, act_space, termination_bias: float = -5.0, context_len: int = 8):
    """A random tiny model whose termination head is decided (P(done) far from 0.5)."""
    model = tiny_model(obs_space, act_space, context_len=context_len, seed=5)
    with torch.no_grad():
        model.termination_head.bias.fill_(termination_bias)
        torch.nn.init.normal_(model.value_head.weight, std=0.5)  # spread values so scores differ
        torch.nn.init.normal_(model.reward_head.weight, std=0.5)
    return model


def candidates_for(model, h, act_space, generator=None):
    """The planner's candidates (candidates=6): every Discrete action, or the Box mode and 5 samples."""
    if isinstance(act_space, gym.spaces.Discrete):
        return torch.arange(act_space.n)
    generator = generator or torch.Generator().manual_seed(0)
    return torch.cat([model.sample_action(h, None, 0.0), model.sample_action(h, generator, 1.0, 5)])


def random_obs(rng, obs_space):
    if isinstance(obs_space, gym.spaces.Discrete):
        return int(rng.integers(obs_space.n))
    return rng.uniform(-1, 1, 3).astype(np.float32)


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@torch.no_grad()
def test_horizon_one_score_is_reward_plus_value_at_the_predicted_observation(obs_space, act_space):
    model = planner_model(obs_space, act_space)
    rng = np.random.default_rng(0)
    for name, flag in (("edt", False), ("cdt", True)):
        agent = make_agent(name, model, candidates=6, horizon=1)
        agent.reset(seed=3)
        ctx = Context(model)
        taken_steps: list[tuple[object, torch.Tensor | None]] = []  # per step: observation, action taken
        for _ in range(5):
            obs = random_obs(rng, obs_space)
            ctx.push_observation(as_model_input(obs, obs_space))
            h = ctx.push_return(None)
            generator = torch.Generator()
            generator.set_state(agent.generator.get_state())  # the agent's next candidates
            candidates = candidates_for(model, h, act_space, generator)
            scores = rollout_scores(ctx, candidates, flag, horizon=1)
            for i, candidate in enumerate(candidates):
                # Independently: a fresh context, the same tokens, then a, r, o one by one.
                fresh = Context(model)
                for seen, taken in [*taken_steps, (obs, None)]:  # the whole history: the window is not full
                    fresh.push_observation(as_model_input(seen, obs_space))
                    fresh.push_return(None)
                    if taken is not None:
                        fresh.push_action(taken, flag)
                        fresh.push_reward(0.5)
                fresh.push_action(candidate, flag)
                reward = model.predicted_reward(fresh.hidden())[0]
                fresh.push_reward(float(reward))
                h_reward = fresh.hidden()
                assert torch.sigmoid(model.termination_head(h_reward)).item() < 0.5
                if model.obs_discrete:
                    next_obs = model.next_obs_head(h_reward)[0].argmax()
                else:
                    current = model.normalize_observation(as_model_input(obs, obs_space))
                    next_obs = model.next_observation_normalized(h_reward, current)[0]
                    next_obs = next_obs * model.obs_std + model.obs_mean
                fresh.push_observation(next_obs)
                value = model.expected_return(model.value_head(fresh.hidden()))[0]
                assert float(scores.total[i]) == pytest.approx(float(reward + value), abs=1e-4)
                assert float(scores.reward[i]) == pytest.approx(float(reward), abs=1e-4)
            best = candidates[int(scores.total.argmax())]
            # The agent, with the same history, chooses the argmax of these scores.
            action = agent.act(obs, 0.5)
            chosen = as_model_input(action, act_space)
            if isinstance(act_space, gym.spaces.Discrete):
                assert int(chosen) == int(best)
            else:
                torch.testing.assert_close(chosen, best.to(chosen.dtype), atol=1e-5, rtol=1e-5)
            ctx.push_action(chosen, flag)
            ctx.push_reward(0.5)
            taken_steps.append((obs, chosen))


def history(model, obs_space, act_space, steps: int) -> Context:
    rng = np.random.default_rng(1)
    ctx = Context(model)
    for t in range(steps):
        ctx.push_observation(as_model_input(random_obs(rng, obs_space), obs_space))
        ctx.push_return(None)
        if t < steps - 1:
            action = candidates_for(model, ctx.hidden(), act_space)[0]
            ctx.push_action(action, False)
            ctx.push_reward(float(rng.normal()))
    return ctx


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@pytest.mark.parametrize(("horizon", "beam"), [(3, 1), (3, 2), (2, 3)])
@torch.no_grad()
def test_batched_rollouts_equal_each_candidate_alone(obs_space, act_space, horizon, beam):
    if beam > 1 and not isinstance(act_space, gym.spaces.Discrete):
        pytest.skip("Box beams sample: batch order changes the draws")
    model = planner_model(obs_space, act_space, context_len=4)
    ctx = history(model, obs_space, act_space, steps=7)  # the context has been refilled
    candidates = candidates_for(model, ctx.hidden(), act_space)
    together = rollout_scores(ctx, candidates, True, horizon, beam)
    for i in range(len(candidates)):
        alone = rollout_scores(ctx, candidates[i : i + 1], True, horizon, beam)
        torch.testing.assert_close(alone.total[0], together.total[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.reward[0], together.reward[i], atol=1e-5, rtol=1e-5)
    # Forking leaves the context as it was.
    torch.testing.assert_close(
        ctx.evaluate_actions(candidates, True).expected_return,
        history(model, obs_space, act_space, 7).evaluate_actions(candidates, True).expected_return,
    )


@torch.no_grad()
def test_termination_stops_the_rollout():
    model = planner_model(BOX_OBS, DISCRETE_ACT, termination_bias=5.0)
    ctx = history(model, BOX_OBS, DISCRETE_ACT, steps=2)
    scores = rollout_scores(ctx, torch.arange(3), False, horizon=3, beam=2)
    torch.testing.assert_close(scores.total, scores.reward)  # done at once: the first reward only


@pytest.mark.parametrize("name", ["edt", "cdt"])
@torch.no_grad()
def test_horizon_zero_is_the_action_value_planner(name):
    model = tiny_model(gym.make("CartPole-v1").observation_space, gym.spaces.Discrete(2), seed=2)
    with torch.no_grad():
        torch.nn.init.normal_(model.action_value_head.weight, std=0.5)
    rng = np.random.default_rng(4)
    default, explicit = make_agent(name, model), make_agent(name, model, horizon=0, beam=3)
    default.reset(seed=1)
    explicit.reset(seed=1)
    ctx = Context(model)
    flag = name == "cdt"
    for _ in range(10):
        obs = rng.uniform(-1, 1, 4).astype(np.float32)
        action = default.act(obs, 1.0)
        assert explicit.act(obs, 1.0) == action
        ctx.push_observation(torch.from_numpy(obs))
        ctx.push_return(None)
        assert action == int(ctx.evaluate_actions(torch.arange(2), flag).expected_return.argmax())
        ctx.push_action(torch.tensor(action), flag)
        ctx.push_reward(1.0)


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@pytest.mark.parametrize("name", ["edt", "cdt"])
def test_beam_search_returns_valid_actions_and_is_deterministic_under_a_seed(obs_space, act_space, name):
    model = planner_model(obs_space, act_space, termination_bias=0.0, context_len=4)

    def episode(seed: int) -> list:
        agent = make_agent(name, model, candidates=4, horizon=3, beam=3)
        agent.reset(seed=seed)
        rng = np.random.default_rng(0)
        actions = [agent.act(random_obs(rng, obs_space), 0.1) for _ in range(6)]
        assert np.isfinite(agent.episode_metrics()["predicted_return"])
        return actions

    actions = episode(7)
    assert all(act_space.contains(a) for a in actions)
    assert np.array_equal(np.asarray(actions), np.asarray(episode(7)))
    if not isinstance(act_space, gym.spaces.Discrete):
        assert any(not np.array_equal(np.asarray(actions), np.asarray(episode(s))) for s in range(3))


def test_rollout_is_scratch_and_bounded():
    model = tiny_model()
    with torch.no_grad():
        ctx = Context(model)
        ctx.push_observation(torch.zeros(3))
        ctx.push_return(None)
        rollout = ctx.fork(2, extra_tokens=1)
        assert isinstance(rollout, Rollout) and rollout.batch == 2
        rollout.push_actions(torch.arange(2), False)
        with pytest.raises(RuntimeError, match="allocated"):
            rollout.push_rewards(torch.zeros(2))
        assert ctx.length == 2  # the context's own cache is unchanged
    with pytest.raises(Exception, match="horizon"):
        make_agent("edt", model, horizon=-1)
    with pytest.raises(Exception, match="beam"):
        make_agent("cdt", model, beam=0)
