"""The mirror image of a Connect Four game is a legal game of the same player."""

import numpy as np

from simagents.envs.connect_four import PLANES, demonstrations, mirror, observe, position_from_observation


def test_mirror_reflects_columns_and_keeps_the_game_legal() -> None:
    games = demonstrations(None, 10, np.random.default_rng(0))
    for game in games:
        image = mirror(game)
        assert image.policy == game.policy and image.episode_return == game.episode_return
        np.testing.assert_array_equal(image.actions, 6 - game.actions)
        np.testing.assert_array_equal(mirror(image).observations, game.observations)
        for t in range(len(image)):
            planes = image.observations[t].reshape(len(PLANES), 6, 7)
            np.testing.assert_array_equal(planes, game.observations[t].reshape(len(PLANES), 6, 7)[:, :, ::-1])
            position = position_from_observation(image.observations[t])
            assert int(image.actions[t]) in position.legal_moves()
            # Every plane (stones and tactics) is what the env would observe on the mirrored board.
            np.testing.assert_array_equal(image.observations[t], observe(position, agent_to_move=True))
    assert any(not np.array_equal(mirror(g).actions, g.actions) for g in games)
