import ale_py
import cv2
import gymnasium
import numpy as np
import pytest

from pydreamer.envs import (
    EnvError, MINATAR_CATEGORIES, UnknownEnvError, make_env, minatar_image)
from pydreamer.episodes import OBSERVATION_KEYS, first_row, next_row

MINATAR = {  # game: (channels, size of the minimal action set)
    'Asterix': (4, 5),
    'Breakout': (4, 3),
    'Freeway': (7, 3),
    'Seaquest': (10, 6),
    'SpaceInvaders': (6, 4),
}


def play(env, actions, max_steps=10_000):
    """Reset and step with actions drawn from `actions` until the episode ends; returns the steps."""
    env.reset()
    for step in range(1, max_steps + 1):
        obs, reward, terminated, truncated = env.step(int(actions.integers(env.action_dim)))
        if terminated or truncated:
            return step, obs, terminated, truncated
    raise AssertionError(f"{env.env_id} did not end within {max_steps} steps.")


def reference_categorical(state):
    """The categorical map by its definition, cell by cell."""
    image = np.zeros(state.shape[:2], np.uint8)
    for y in range(state.shape[0]):
        for x in range(state.shape[1]):
            active = np.flatnonzero(state[y, x])
            image[y, x] = active[0] + 1 if len(active) else 0
    return image


@pytest.mark.parametrize('version', [0, 1])
@pytest.mark.parametrize('game', sorted(MINATAR))
def test_minatar_shapes(game, version):
    channels, minimal_actions = MINATAR[game]
    env = make_env(f'MinAtar/{game}-v{version}', seed=0)
    assert env.action_dim == (6 if version == 0 else minimal_actions)
    rng = np.random.default_rng(0)
    obs = env.reset()
    for _ in range(20):
        assert obs['image'].shape == (10, 10) and obs['image'].dtype == np.uint8
        assert obs['minatar_state'].shape == (10, 10, channels) and obs['minatar_state'].dtype == bool
        assert obs['image'].max() < MINATAR_CATEGORIES
        np.testing.assert_array_equal(obs['image'], reference_categorical(obs['minatar_state']))
        obs, reward, terminated, truncated = env.step(int(rng.integers(env.action_dim)))
        if terminated or truncated:
            obs = env.reset()
    env.close()


def test_categorical_map_lowest_channel_wins():
    state = np.zeros((10, 10, 10), bool)
    state[0, 0, [3, 7]] = True   # overlap: channel 3 wins
    state[1, 2, [0, 9]] = True   # overlap with the lowest channel
    state[5, 5, 9] = True        # the highest channel alone
    state[9, 9, [2, 4, 6]] = True
    image = minatar_image(state)
    expected = np.zeros((10, 10), np.uint8)
    expected[0, 0], expected[1, 2], expected[5, 5], expected[9, 9] = 4, 1, 10, 3
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(image, reference_categorical(state))


@pytest.mark.parametrize(
    'env_id', ['Atari-Pong', 'Atari-Breakout', 'Atari-Space_Invaders', 'AtariGray-Space_Invaders'])
def test_atari_shapes(env_id):
    env = make_env(env_id, action_repeat=4, seed=0)
    assert env.action_dim == 18
    channels = 1 if env_id.startswith('AtariGray-') else 3
    obs = env.reset()
    for action in [0, 1, 17]:
        assert obs['image'].shape == (64, 64, channels) and obs['image'].dtype == np.uint8
        assert obs['screen_gray'].shape == (210, 160) and obs['screen_gray'].dtype == np.uint8
        obs, reward, terminated, truncated = env.step(action)
        assert not (terminated or truncated)
    env.close()


class ReferenceAtari:
    """pydreamer's Atari protocol stepped by hand on a raw ALE env with the same seed (so the same
    no-op count and sticky actions), keeping both the RGB and ALE's grayscale screen of each frame.

    Frames pooled, as gymnasium 1.4's AtariPreprocessing does: the screen after the no-ops at
    reset; the last two frames of a step; when the game ends mid-step the ending frame is never
    recorded, so ending on the last frame pools the previous observation with the second-to-last
    frame and ending earlier repeats the previous observation.
    """

    def __init__(self, game, frame_skip):
        gymnasium.register_envs(ale_py)
        self.env = gymnasium.make(f'ALE/{game}-v5', frameskip=1, repeat_action_probability=0.25,
                                  full_action_space=True)
        self.ale = self.env.unwrapped.ale
        self.frame_skip = frame_skip

    def screens(self):
        return self.ale.getScreenRGB(), self.ale.getScreenGrayscale()

    def reset(self, seed):
        self.env.reset(seed=seed)
        for _ in range(self.env.unwrapped.np_random.integers(1, 31)):
            assert not any(self.env.step(0)[2:4])
        self.rgb, self.gray = self.screens()
        self.last_gray = self.gray
        return self.rgb, self.gray

    def step(self, action):
        """Returns the pooled RGB and gray screens, whether the game ended and at which frame."""
        frames = []
        for t in range(self.frame_skip):
            _, _, terminated, truncated, _ = self.env.step(action)
            if terminated or truncated:
                break
            frames.append(self.screens())
        self.last_gray = self.ale.getScreenGrayscale()
        rgbs, grays = [f[0] for f in frames], [f[1] for f in frames]
        if len(frames) == self.frame_skip:
            self.rgb, self.gray = np.max(rgbs[-2:], axis=0), np.max(grays[-2:], axis=0)
        elif len(frames) == self.frame_skip - 1 > 0:
            self.rgb, self.gray = np.maximum(self.rgb, rgbs[-1]), np.maximum(self.gray, grays[-1])
        return self.rgb, self.gray, terminated or truncated, t

    def close(self):
        self.env.close()


def assert_matches_reference(obs, rgb, gray, gray_image):
    np.testing.assert_array_equal(obs['screen_gray'], gray)
    # The same frames are max-pooled for the 64x64 image (AtariGray: from ALE's grayscale, as upstream).
    frame = gray[:, :, None] if gray_image else rgb
    expected = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA).reshape(64, 64, -1)
    np.testing.assert_array_equal(obs['image'], expected)


@pytest.mark.parametrize('env_id', ['Atari-AirRaid', 'AtariGray-AirRaid', 'Atari-Pong'])
def test_atari_screen_gray_is_pooled_ale_grayscale(env_id):
    """screen_gray is the max of ALE's getScreenGrayscale over the last two frames of each step."""
    game = env_id.partition('-')[2]
    env, ref = make_env(env_id, action_repeat=4, seed=5), ReferenceAtari(game, 4)
    rng = np.random.default_rng(0)
    obs, (rgb, gray) = env.reset(), ref.reset(5)
    assert_matches_reference(obs, rgb, gray, env_id.startswith('AtariGray-'))
    pooling_matters = cvtcolor_differs = 0
    for _ in range(150):
        action = int(rng.integers(18))
        obs, reward, terminated, truncated = env.step(action)
        rgb, gray, ended, _ = ref.step(action)
        assert not (ended or terminated or truncated)
        assert_matches_reference(obs, rgb, gray, env_id.startswith('AtariGray-'))
        assert (obs['screen_gray'] >= ref.last_gray).all()
        pooling_matters += not np.array_equal(gray, ref.last_gray)
        cvtcolor_differs += np.mean(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) != gray)
    # The check can fail: the last frame alone differs from the pooled one on many steps ...
    assert pooling_matters > 10
    if game == 'AirRaid':
        # ... and for AirRaid a grayscale conversion of the RGB screen is far from ALE's grayscale.
        assert cvtcolor_differs / 150 > 0.5
    env.close()
    ref.close()


@pytest.mark.parametrize('game, frame_skip, seed, end_frame', [
    ('Breakout', 4, 0, 2),   # game over before the last frame of the step
    ('Breakout', 4, 2, 0),   # ... on its first frame
    ('Breakout', 3, 2, 2),   # ... on the last frame
    ('AirRaid', 4, 2, 3),    # ... on the last frame
    ('Breakout', 1, 0, 0),   # no frame skip
])
def test_atari_screen_gray_at_game_over(game, frame_skip, seed, end_frame):
    """Through a whole episode, including the terminal step, screen_gray pools the same frames as image."""
    env, ref = make_env(f'Atari-{game}', action_repeat=frame_skip, seed=seed), ReferenceAtari(game, frame_skip)
    rng = np.random.default_rng(seed)
    obs, (rgb, gray) = env.reset(), ref.reset(seed)
    assert_matches_reference(obs, rgb, gray, False)
    for _ in range(5000):
        action = int(rng.integers(18))
        obs, reward, terminated, truncated = env.step(action)
        rgb, gray, ended, frame = ref.step(action)
        assert_matches_reference(obs, rgb, gray, False)
        assert ended == (terminated or truncated)
        if ended:
            break
    assert terminated, "the game did not end"
    assert frame == end_frame, "the episode no longer ends where this case expects: pick another seed"
    env.close()
    ref.close()


def test_atari_action_repeat_skips_frames():
    env = make_env('Atari-Pong', action_repeat=4, seed=0)
    env.reset()
    ale = env._env.unwrapped.ale
    start = ale.getEpisodeFrameNumber()
    env.step(0)
    assert ale.getEpisodeFrameNumber() - start == 4
    env.close()


def test_seed_reproduces_episode():
    runs = []
    for _ in range(2):
        env = make_env('MinAtar/Seaquest-v0', seed=3)
        rng = np.random.default_rng(0)
        images = [env.reset()['image']]
        for _ in range(30):
            images.append(env.step(int(rng.integers(6)))[0]['image'])
        runs.append(np.stack(images))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_rows():
    env = make_env('MinAtar/Breakout-v1', seed=0)
    obs = env.reset()
    row = first_row(obs, env.action_dim)
    assert set(row) == {'image', 'action', 'reward', 'terminal', 'reset'}
    np.testing.assert_array_equal(row['action'], np.zeros(3, np.float32))
    assert row['action'].dtype == np.float32 and row['reward'] == 0 and row['reward'].dtype == np.float32
    assert row['reset'] is True and row['terminal'] is False
    np.testing.assert_array_equal(row['image'], obs['image'])
    assert not np.shares_memory(row['image'], obs['image'])

    obs, reward, terminated, truncated = env.step(2)
    row = next_row(obs, 2, env.action_dim, 1.5, True)
    np.testing.assert_array_equal(row['action'], np.array([0, 0, 1], np.float32))
    assert row['action'].dtype == np.float32
    assert row['reward'] == np.float32(1.5) and row['reward'].dtype == np.float32
    assert row['reset'] is False and row['terminal'] is True
    assert next_row(obs, 0, 3, 0.0, False)['terminal'] is False
    with pytest.raises(ValueError, match='outside'):
        next_row(obs, 3, 3, 0.0, False)


def test_rows_keep_only_stored_keys():
    row = first_row({'vecobs': np.ones(4, np.float32), 'screen_gray': np.zeros((2, 2), np.uint8)}, 2)
    assert 'vecobs' in row and 'screen_gray' not in row
    assert set(OBSERVATION_KEYS) == {'image', 'vecobs'}


def test_time_limit_keeps_real_terminal():
    def breakout(**kwargs):
        return make_env('MinAtar/Breakout-v0', seed=0, **kwargs)

    n, _, terminated, truncated = play(breakout(), np.random.default_rng(0))
    assert terminated and not truncated and n > 1

    steps, _, terminated, truncated = play(breakout(time_limit=n), np.random.default_rng(0))
    assert steps == n and terminated and truncated

    steps, _, terminated, truncated = play(breakout(time_limit=n - 1), np.random.default_rng(0))
    assert steps == n - 1 and not terminated and truncated

    steps, _, terminated, truncated = play(breakout(no_terminal=True), np.random.default_rng(0))
    assert steps == n and not terminated and truncated


def test_step_after_episode_end_is_refused():
    env = make_env('MinAtar/Breakout-v0', seed=0, time_limit=1)
    with pytest.raises(RuntimeError, match='reset'):
        env.step(0)
    env.reset()
    env.step(0)
    with pytest.raises(RuntimeError, match='reset'):
        env.step(0)
    env.reset()
    with pytest.raises(ValueError, match='outside'):
        env.step(6)


@pytest.mark.parametrize('env_id', ['MinAtar/Pacman-v0', 'MinAtar/Breakout-v2', 'Atari-Nonexistent', 'Foo-v9'])
def test_unknown_env_id(env_id):
    with pytest.raises(UnknownEnvError) as error:
        make_env(env_id)
    message = str(error.value)
    expected = [repr(env_id), 'MinAtar/<Game>-v0|v1', 'SpaceInvaders', 'Atari-<Game>', 'AtariGray-<Game>', 'gymnasium']
    for part in expected:
        assert part in message


def test_minatar_refuses_action_repeat():
    with pytest.raises(EnvError, match='env_action_repeat is 4 but MinAtar/Breakout-v0 needs 1'):
        make_env('MinAtar/Breakout-v0', action_repeat=4)


def test_gymnasium_vector_env():
    env = make_env('CartPole-v1', seed=0)
    assert env.action_dim == 2
    obs = env.reset()
    assert set(obs) == {'vecobs'} and obs['vecobs'].shape == (4,) and obs['vecobs'].dtype == np.float32
    obs, reward, terminated, truncated = env.step(1)
    assert obs['vecobs'].dtype == np.float32 and reward == 1.0
    assert set(next_row(obs, 1, 2, reward, terminated)) == {'vecobs', 'action', 'reward', 'terminal', 'reset'}
    env.close()


def test_gymnasium_continuous_actions_refused():
    with pytest.raises(ValueError, match='Discrete action space'):
        make_env('Pendulum-v1')


def test_minatar_actions_stick_one_step_in_ten():
    """MinAtar's sticky actions (0.1) with difficulty ramping: the game executes its previous action
    instead of the requested one in about 10% of the steps. Every request differs from the
    previous executed action, so that each sticky step shows."""
    env = make_env('MinAtar/Asterix-v0', seed=0)
    game = env._env.unwrapped.game
    assert game.env.ramping
    rng = np.random.default_rng(0)
    env.reset()
    stuck, steps = 0, 4000
    for _ in range(steps):
        previous = game.last_action
        requested = int((previous + 1 + rng.integers(5)) % 6)
        _, _, terminated, truncated = env.step(requested)
        assert game.last_action in (requested, previous)
        stuck += game.last_action != requested
        if terminated or truncated:
            env.reset()
    assert 0.085 < stuck / steps < 0.115, stuck / steps  # binomial sd 0.005


def test_atari_resets_after_1_to_30_noops_with_sticky_actions_0_25():
    env = make_env('Atari-Breakout', action_repeat=4, seed=0)
    ale = env._env.unwrapped.ale
    noops = []
    for _ in range(40):
        env.reset()
        noops.append(ale.getEpisodeFrameNumber())  # one emulator frame per no-op
    assert 1 <= min(noops) <= 3 and 28 <= max(noops) <= 30 and len(set(noops)) >= 15
    assert ale.getFloat('repeat_action_probability') == 0.25
    env.close()


def test_atari_life_loss_is_not_terminal():
    env = make_env('Atari-Breakout', action_repeat=4, seed=0)
    ale = env._env.unwrapped.ale
    rng = np.random.default_rng(0)
    env.reset()
    lives, terminals = [ale.lives()], []
    while not terminals or not terminals[-1]:
        _, _, terminated, truncated = env.step(int(rng.integers(env.action_dim)))
        lives.append(ale.lives())
        terminals.append(terminated)
        assert not truncated
    lost = [t for t in range(len(terminals)) if lives[t + 1] < lives[t]]
    assert lives[0] == 5 and len(lost) == 5 and lives[-1] == 0
    assert not any(terminals[t] for t in lost[:-1]) and lost[-1] == len(terminals) - 1  # only the last life ends it
    env.close()
