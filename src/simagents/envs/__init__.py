"""Decision-theory testbeds as gymnasium envs, registered as ``simagents/...`` on import.

- ``newcomb``: ``simagents/Newcomb-v0``, actions ``one_box``, ``two_box``
- ``twin_pd``: ``simagents/TwinPrisonersDilemma-v0``, actions ``cooperate``, ``defect``
- ``smoking_lesion``: ``simagents/SmokingLesion-v0``, actions ``smoke``, ``abstain``
- ``delusion_boxes``: ``simagents/DelusionBoxes-v0``, actions ``left``, ``right``
- ``gamble``: ``simagents/Gamble-v0``, actions ``risky``, ``small``, ``sure``
- ``connect_four``: ``simagents/ConnectFour-v0``, actions ``column_0`` ... ``column_6``
- ``prophecy``: ``simagents/Prophecy-v0``, a forecast in [0, 1] (Box) that moves the event it forecasts

Control tasks (no theory; scored against their behaviour policies):

- ``minigrid``: ``simagents/DoorKey-5x5-v0``, MiniGrid DoorKey with a flat Box view and
  actions ``left``, ``right``, ``forward``, ``pickup``, ``toggle``; its scripted expert
  registers the ``doorkey-eps<ε>`` behaviour policies

Every number of a problem is a keyword argument of ``gymnasium.make``::

    >>> import gymnasium as gym
    >>> import simagents.envs
    >>> env = gym.make("simagents/Newcomb-v0", accuracy=0.6)
    >>> simagents.envs.TESTBEDS["newcomb"].theory(accuracy=0.6)["edt"]["choice"]
    'one_box'

Each testbed's record in :data:`TESTBEDS` carries its theory (what EDT and CDT choose, what
each choice is worth) and its ``demonstrations`` function (observational or
interventional data as :class:`~simagents.data.episodes.Episode` lists).
"""

from __future__ import annotations

from simagents.envs import (
    connect_four,
    delusion_boxes,
    gamble,
    minigrid,
    newcomb,
    prophecy,
    smoking_lesion,
    twin_pd,
)
from simagents.envs.base import (
    TESTBEDS,
    Testbed,
    check_params,
    get_testbed,
    register_testbed,
)

for _module in (newcomb, twin_pd, smoking_lesion, delusion_boxes, gamble, prophecy, connect_four):
    if _module.TESTBED.name not in TESTBEDS:  # importing twice (reload) must not fail
        register_testbed(_module.TESTBED)
minigrid.register_env()
minigrid.register_policies()

__all__ = ["TESTBEDS", "Testbed", "check_params", "get_testbed", "register_testbed"]
