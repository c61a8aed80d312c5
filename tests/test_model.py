import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import BOX_ACT, BOX_OBS, DISCRETE_ACT, DISCRETE_OBS, random_episode, tiny_model, tiny_stats
from simagents.data.windows import WindowSampler
from simagents.errors import SimagentsError
from simagents.model import Context, Simulator, SimulatorConfig, as_model_input

SPACES = [(BOX_OBS, DISCRETE_ACT), (DISCRETE_OBS, BOX_ACT)]
IMAGE_OBS = gym.spaces.Box(-5.0, 5.0, (12,), np.float32)  # read as a (3,2,2) image
IMAGE = (3, 2, 2)


def full_forward(model, episode, start, stop, known):
    sampler = WindowSampler([episode], stop - start)
    windows = sampler.windows(np.array([0]), np.array([start]))
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    batch["return_known"] = torch.tensor([known])
    return model(batch)


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize(
    ("min_history", "held_once_full"),
    [(None, {3, 4}), (0, {1, 2, 3, 4}), (3, {4})],
    ids=["default-half", "none-kept", "sliding"],
)
@torch.no_grad()
def test_kv_cache_equals_full_forward_over_the_held_window(
    obs_space, act_space, known, min_history, held_once_full
):
    model = tiny_model(obs_space, act_space, context_len=4)
    episode = random_episode(np.random.default_rng(1), 11, obs_space, act_space)
    rtg = episode.returns_to_go()
    ctx = Context(model, min_history=min_history)
    lazy = Context(model, min_history=min_history)  # as agents use it: a, r, o, R run together in one pass
    held_sizes = []
    for t in range(len(episode)):
        lazy.push_observation(as_model_input(episode.observations[t], obs_space))
        policy_input = lazy.push_return(float(rtg[t]) if known else None)
        policy = lazy.policy_params().copy()  # computed in the pass, beside the hidden state
        lazy.push_action(as_model_input(episode.actions[t], act_space), bool(episode.interventions[t]))
        lazy.push_reward(float(episode.rewards[t]))
        ctx.push_observation(as_model_input(episode.observations[t], obs_space))
        hidden = {"obs": ctx.hidden()}
        hidden["return"] = ctx.push_return(float(rtg[t]) if known else None)
        ctx.push_action(as_model_input(episode.actions[t], act_space), bool(episode.interventions[t]))
        hidden["action"] = ctx.hidden()
        torch.testing.assert_close(  # the policy head at the last token, whichever it is
            torch.from_numpy(ctx.policy_params()),
            model.action_head(hidden["action"][0]),
            atol=1e-5,
            rtol=1e-5,
        )
        ctx.push_reward(float(episode.rewards[t]))
        hidden["reward"] = ctx.hidden()
        held = ctx.held_steps
        held_sizes.append(held)
        full = full_forward(model, episode, t - held + 1, t + 1, known)
        for kind, h in hidden.items():
            torch.testing.assert_close(h[0], full[kind][0, -1], atol=1e-5, rtol=1e-5)
        lazy_held = lazy.held_steps
        lazy_full = full_forward(model, episode, t - lazy_held + 1, t + 1, known)
        torch.testing.assert_close(policy_input[0], lazy_full["return"][0, -1], atol=1e-5, rtol=1e-5)
        expected_policy = model.action_head(lazy_full["return"][0, -1])
        torch.testing.assert_close(torch.from_numpy(policy), expected_policy, atol=1e-5, rtol=1e-5)
    assert held_sizes[:4] == [1, 2, 3, 4], "the window should fill up"
    # Then it holds min_history + 1 to context_len steps: each refill keeps min_history and the step begun
    assert set(held_sizes[4:]) == held_once_full, held_sizes


@pytest.mark.parametrize("queued", [False, True], ids=["after-push", "queued"])
@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@torch.no_grad()
def test_candidates_in_one_batch_equal_each_alone(obs_space, act_space, queued):
    # queued: the step's tokens (a, r, o, R) still wait when the candidates come, and run in
    # their pass; the candidates scored alone afterwards run on the committed cache.
    model = tiny_model(obs_space, act_space, context_len=4)
    episode = random_episode(np.random.default_rng(2), 6, obs_space, act_space)
    ctx = Context(model)
    for t in range(5):
        ctx.push_observation(as_model_input(episode.observations[t], obs_space))
        ctx.push_return(None)
        ctx.push_action(as_model_input(episode.actions[t], act_space), False)
        ctx.push_reward(float(episode.rewards[t]))
    ctx.push_observation(as_model_input(episode.observations[5], obs_space))
    if queued:
        ctx.queue_return(None)
        assert ctx.pending == 4
    else:
        ctx.push_return(None)
    if act_space is DISCRETE_ACT:
        candidates = torch.arange(act_space.n)
    else:
        candidates = torch.from_numpy(np.random.default_rng(3).uniform(-2, 2, (5, 2)).astype(np.float32))
    together = ctx.evaluate_actions(candidates, intervention=True)
    assert not ctx.pending
    for i in range(len(candidates)):
        alone = ctx.evaluate_actions(candidates[i : i + 1], intervention=True)
        torch.testing.assert_close(
            alone.expected_return[0], together.expected_return[i], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(alone.reward[0], together.reward[i], atol=1e-5, rtol=1e-5)
    # Committing a candidate gives the same action value as scoring it.
    ctx.push_action(candidates[0], True)
    h = ctx.hidden()
    torch.testing.assert_close(
        model.expected_return(model.action_value_head(h))[0],
        together.expected_return[0],
        atol=1e-5,
        rtol=1e-5,
    )


@torch.no_grad()
def test_intervention_flag_changes_predictions():
    model = tiny_model()
    torch.nn.init.normal_(model.intervention_embed.weight, std=1.0)
    ctx = Context(model)
    ctx.push_observation(torch.zeros(3))
    ctx.push_return(None)
    evidence = ctx.evaluate_actions(torch.arange(3), intervention=False)
    intervention = ctx.evaluate_actions(torch.arange(3), intervention=True)
    assert not torch.allclose(evidence.expected_return, intervention.expected_return)


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@torch.no_grad()
def test_save_load_gives_identical_outputs(tmp_path: Path, obs_space, act_space):
    model = tiny_model(obs_space, act_space)
    episode = random_episode(np.random.default_rng(4), 4, obs_space, act_space)
    model.save(tmp_path / "ckpt")
    loaded = Simulator.load(tmp_path / "ckpt")
    a = full_forward(model, episode, 0, 4, True)
    b = full_forward(loaded, episode, 0, 4, True)
    for kind in a:
        assert torch.equal(a[kind], b[kind])
    assert loaded.stats == model.stats and loaded.cfg == model.cfg


def test_loss_is_finite_and_masks_interventions():
    model = tiny_model().train()
    episode = random_episode(np.random.default_rng(5), 8, BOX_OBS, DISCRETE_ACT)
    sampler = WindowSampler([episode], 4)
    windows = sampler.windows(np.array([0, 0]), np.array([0, 6]))  # second window is padded
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    batch["return_known"] = torch.tensor([True, False])
    losses = model.loss(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    # Changing an intervened action leaves the action loss unchanged; changing an evidence one does not.
    intervened = batch["interventions"] & batch["mask"]
    evidence = ~batch["interventions"] & batch["mask"]
    assert intervened.any() and evidence.any()
    for where, should_change in ((intervened, False), (evidence, True)):
        changed = dict(batch)
        changed["actions"] = torch.where(where, (batch["actions"] + 1) % 3, batch["actions"])
        # Only the action *target* may differ: compare the loss with the embedding fixed by zeroing it.
        model.act_embed.weight.data.zero_()
        before = model.loss(batch)["action"]
        after = model.loss(changed)["action"]
        assert (not torch.isclose(before, after)) == should_change


@pytest.mark.parametrize("target", ["change", "next"])
def test_the_world_model_learns_the_observations_change_or_the_next_one(tmp_path: Path, target: str):
    model = tiny_model()
    model = Simulator(replace(model.cfg, observation_target=target), BOX_OBS, DISCRETE_ACT, model.stats)
    episode = random_episode(np.random.default_rng(6), 6, BOX_OBS, DISCRETE_ACT)
    windows = WindowSampler([episode], 4).windows(np.array([0]), np.array([0]))
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    batch["return_known"] = torch.tensor([False])
    with torch.no_grad():  # a head that outputs 0: "change" then predicts o_t itself, "next" the mean
        model.next_obs_head.weight.zero_()
        model.next_obs_head.bias.zero_()
    now = model.normalize_observation(batch["observations"])
    after = model.normalize_observation(batch["next_observations"])
    prediction = now if target == "change" else torch.zeros_like(now)
    expected = ((prediction - after) ** 2).mean(-1).mean()  # the window is full: no padding
    assert torch.isclose(model.loss(batch, heads=["observation"])["observation"], expected)
    # A rollout predicts the same: from the history's last observation, then from its own predictions.
    context = Context(model)
    context.push_observation(episode.observations[0])
    context.push_return(None)
    rollout = context.fork(1, extra_tokens=2)
    rollout.push_actions(torch.tensor([0]), False)
    predicted = rollout.predicted_observation(rollout.push_rewards(torch.tensor([0.0])))
    obs0 = torch.from_numpy(episode.observations[0])
    expected_obs = obs0 if target == "change" else model.obs_mean
    assert torch.allclose(predicted[0], expected_obs, atol=1e-6)
    # Saved and loaded as it was; a checkpoint from before the field predicted the next observation.
    model.save(tmp_path / "ckpt")
    assert Simulator.load(tmp_path / "ckpt").cfg.observation_target == target
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    del config["model"]["observation_target"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert Simulator.load(tmp_path / "ckpt").cfg.observation_target == "next"
    assert SimulatorConfig().observation_target == "next"


def test_an_unknown_observation_target_is_refused():
    with pytest.raises(ValueError, match="observation_target='delta' must be one of change, next"):
        SimulatorConfig(observation_target="delta")


def test_truncated_weights_file_is_a_clear_error(tmp_path: Path):
    model = tiny_model()
    model.save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SimagentsError, match=r"model\.safetensors"):
        Simulator.load(tmp_path / "ckpt")


def test_unknown_config_key_and_missing_folder_are_clear_errors(tmp_path: Path):
    model = tiny_model()
    model.save(tmp_path / "ckpt")
    config = tmp_path / "ckpt" / "config.json"
    config.write_text(config.read_text().replace('"n_embd"', '"n_embed_typo"'))
    with pytest.raises(SimagentsError, match="n_embed_typo"):
        Simulator.load(tmp_path / "ckpt")
    with pytest.raises(SimagentsError, match="no such run"):
        Simulator.load(tmp_path / "missing")


def test_a_folder_holding_simulators_below_it_names_them(tmp_path: Path):
    # A testbed's or a study's folder: the simulators are in its subfolders.
    for cell in ("a", "b", "c", "d"):
        tiny_model().save(tmp_path / "cells" / cell / "seed0" / "simulator")
    (tmp_path / "cells" / "a" / "seed0" / "data").mkdir()
    with pytest.raises(SimagentsError) as error:
        Simulator.load(tmp_path)
    below = ", ".join(str(tmp_path / "cells" / c / "seed0" / "simulator") for c in "abc")
    assert str(error.value) == (
        f"{tmp_path}: holds no checkpoint itself; the simulators below it: {below} (and 1 more); pass one of them"
    )
    Simulator.load(tmp_path / "cells" / "d" / "seed0" / "simulator")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimagentsError, match=r"empty: holds no checkpoint \(no model.safetensors"):
        Simulator.load(tmp_path / "empty")


def labelled_model(obs_space, act_space, n_head: int) -> Simulator:
    """Label conditioning on, weights large enough that a wrong term would show above 1e-5."""
    torch.manual_seed(7)
    stats = tiny_stats(obs_space, act_space, labels=("a", "b"))
    cfg = SimulatorConfig(
        context_len=3,
        n_embd=16,
        n_layer=3,
        n_head=n_head,
        max_timestep=5,
        condition_on_label=True,
        obs_image=IMAGE if obs_space is IMAGE_OBS else (),
        obs_conv_channels=4,
    )
    model = Simulator(cfg, obs_space, act_space, stats).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize(("obs_space", "act_space"), [*SPACES, (IMAGE_OBS, DISCRETE_ACT)])
@pytest.mark.parametrize("n_head", [1, 2])
@torch.no_grad()
def test_fast_decoder_equals_the_training_forward(obs_space, act_space, n_head):
    """Context's decoder (batched embeddings, the compiled pass over the in-place KV buffer,
    candidates in scratch slots) gives the training forward's numbers, with a label, past the
    last timestep embedding, across refills, and after the weights change in place."""
    model = labelled_model(obs_space, act_space, n_head)
    episode = random_episode(np.random.default_rng(8), 9, obs_space, act_space)
    rtg = episode.returns_to_go()

    def forward(start: int, stop: int, actions=None) -> dict[str, torch.Tensor]:
        sampler = WindowSampler([episode], stop - start)
        windows = sampler.windows(np.array([0]), np.array([start]))
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
        batch["return_known"] = torch.tensor([True])
        batch["label"] = torch.tensor([2])  # "b"
        if actions is not None:  # one window per candidate, the last action replaced
            n = actions.shape[0]
            batch = {k: v.expand(n, *v.shape[1:]).clone() for k, v in batch.items()}
            batch["actions"][:, -1] = actions
        return model(batch)

    for perturbed in (False, True):
        if perturbed:  # in place, as an optimiser step would: a new Context must see it
            for p in model.parameters():
                p.add_(0.05)
        ctx = Context(model, label="b")
        for t in range(len(episode)):
            ctx.push_observation(as_model_input(episode.observations[t], obs_space))
            h_obs = ctx.hidden()
            h_return = ctx.push_return(float(rtg[t]))
            held = ctx.held_steps
            full = forward(t - held + 1, t + 1)
            torch.testing.assert_close(h_obs[0], full["obs"][0, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h_return[0], full["return"][0, -1], atol=1e-5, rtol=1e-5)
            if act_space is DISCRETE_ACT:
                candidates = torch.arange(act_space.n)
            else:
                candidates = torch.from_numpy(
                    np.random.default_rng(t)
                    .uniform(-2, 2, (6, 2))
                    .astype(np.float32)  # four in a group, two alone
                )
            flag = bool(episode.interventions[t])
            scored = ctx.evaluate_actions(candidates, flag)
            batch_actions = forward(t - held + 1, t + 1, candidates)
            h_action = batch_actions["action"][:, -1]
            expected = model.expected_return(model.action_value_head(h_action))
            torch.testing.assert_close(scored.expected_return, expected, atol=1e-5, rtol=1e-5)
            reward = model.predicted_reward(h_action)
            torch.testing.assert_close(scored.reward, reward, atol=1e-5, rtol=1e-5)
            ctx.push_action(as_model_input(episode.actions[t], act_space), flag)
            torch.testing.assert_close(ctx.hidden()[0], full["action"][0, -1], atol=1e-5, rtol=1e-5)
            ctx.push_reward(float(episode.rewards[t]))
            torch.testing.assert_close(ctx.hidden()[0], full["reward"][0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("obs_space", "act_space"), SPACES)
@pytest.mark.parametrize("heads", [("action",), ("value", "termination"), ("reward", "action_value")])
def test_named_heads_give_the_full_forwards_losses_and_gradients(obs_space, act_space, heads):
    """A loss over some heads runs the last block on the token kinds they read only; its losses
    and gradients are those of the full forward (padding, dropped returns and a label included)."""
    model = labelled_model(obs_space, act_space, n_head=2).train()
    episode = random_episode(np.random.default_rng(9), 7, obs_space, act_space)
    windows = WindowSampler([episode], 3).windows(np.array([0, 0, 0]), np.array([0, 2, 5]))  # last padded
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in windows.items()}
    batch["return_known"] = torch.tensor([True, False, True])
    batch["label"] = torch.tensor([1, 2, 0])

    def losses_and_grads(named: tuple[str, ...] | None):
        model.zero_grad(set_to_none=True)
        losses = model.loss(batch) if named is None else model.loss(batch, heads=named)
        losses = {head: losses[head] for head in heads}
        sum(losses.values()).backward()
        return losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_losses, full_grads = losses_and_grads(None)
    named_losses, named_grads = losses_and_grads(heads)
    assert set(named_losses) == set(heads)
    for head in heads:
        torch.testing.assert_close(named_losses[head], full_losses[head], atol=1e-5, rtol=1e-5)
    assert named_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(named_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    # The pruned forward returns only the kinds asked for.
    assert set(model(batch, kinds={"return"})) == {"return"}


def test_image_encoder_reads_the_observation_as_channels_rows_columns(tmp_path: Path) -> None:
    """The encoder sees (C,H,W) in C order: a stone moved within one plane changes its features
    only near the stone; with no encoder the observation token is the flat linear map alone."""
    model = labelled_model(IMAGE_OBS, DISCRETE_ACT, n_head=1)
    assert model.obs_features == 12 + 4 * 2 * 2
    obs = torch.zeros(12)
    a, b = obs.clone(), obs.clone()
    a[4 + 0], b[4 + 3] = 1.0, 1.0  # channel 1, cell (0,0) against cell (1,1)
    with torch.no_grad():
        fa, fb = model.observation_features(a)[12:], model.observation_features(b)[12:]
    assert fa.shape == (16,) and not torch.allclose(fa, fb)
    model.save(tmp_path / "ckpt")
    loaded = Simulator.load(tmp_path / "ckpt")
    assert loaded.cfg.obs_image == IMAGE
    torch.testing.assert_close(loaded.observation_features(a), model.observation_features(a))
    flat = Simulator(replace(model.cfg, obs_image=()), IMAGE_OBS, DISCRETE_ACT, model.stats)
    assert flat.obs_features == 12 and flat.obs_encoder is None


@pytest.mark.parametrize(
    ("obs_space", "image", "message"),
    [
        (IMAGE_OBS, (3, 2, 3), "does not fit the observation space"),
        (DISCRETE_OBS, (1, 1, 1), "does not fit the observation space"),
        (IMAGE_OBS, (12,), "must be \\(channels, height, width\\)"),
    ],
)
def test_an_image_shape_that_does_not_fit_is_a_clear_error(obs_space, image, message) -> None:
    model = labelled_model(IMAGE_OBS, DISCRETE_ACT, n_head=1)
    with pytest.raises(ValueError, match=message):
        Simulator(replace(model.cfg, obs_image=image), obs_space, DISCRETE_ACT, model.stats)
