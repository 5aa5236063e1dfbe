"""A Gymnasium environment with Dict observations, for the tests of goal-conditioned datasets (Minari's antmaze
and pointmaze observe {observation, achieved_goal, desired_goal}). Pendulum underneath; its observation is split
into two entries whose names sort in the other order than they are built in, so a flattening that followed
insertion order instead of the space's would put them the wrong way round."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv

ENV_ID = "srpotest/GoalPendulum-v0"


class GoalPendulum(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self):
        self._pendulum = PendulumEnv()
        self.action_space = self._pendulum.action_space
        self.observation_space = gym.spaces.Dict(
            {
                "z_angle": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),  # cos, sin
                "a_velocity": gym.spaces.Box(-8.0, 8.0, (1,), np.float32),
            }
        )

    def _split(self, obs):
        return {"z_angle": obs[:2].astype(np.float32), "a_velocity": obs[2:].astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, info = self._pendulum.reset(seed=seed)
        return self._split(obs), info

    def step(self, action):
        obs, r, term, trunc, info = self._pendulum.step(action)
        return self._split(obs), r, term, trunc, info


def register() -> str:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="goal_env:GoalPendulum", max_episode_steps=25)
    return ENV_ID
