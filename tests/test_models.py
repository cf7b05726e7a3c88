"""The DreamerV2 model: shapes, numerics against hand-computed values, and small learning tests.

All tests run real torch on one thread with the `debug` config sections.
"""
import copy
import io
import math

import numpy as np
import pytest
import torch

from pydreamer.config import build_config
from pydreamer.models.actor_critic import ActorCritic, Imagined, Targets, actor_loss, value_targets
from pydreamer.models.common import frozen
from pydreamer.models.decoders import MultiDecoder, image_loss
from pydreamer.models.dreamer import Dreamer
from pydreamer.models.encoders import MultiEncoder
from pydreamer.models.functions import (
    kl_balanced, lambda_return, latent_entropy, latent_kl, latent_log_prob, sample_latent)
from pydreamer.models.rssm import RSSM
from pydreamer.models.world_model import WorldModel
from pydreamer.preprocess import clip_rewards, preprocess, preprocess_step
from pydreamer.train_step import init_optimizers, train_step

torch.set_num_threads(1)

MINATAR = ['defaults', 'minatar', 'debug']
ATARI = ['defaults', 'atari', 'debug']
SHAPES = [(1, 1), (3, 2), (5, 4)]


def config(sections=MINATAR, **changes):
    return build_config(sections).replace(amp='false', **changes)


def numpy_batch(conf, T, B, seed=0):
    """A time-major batch as the data loader yields it: a few objects on an empty background."""
    rng = np.random.default_rng(seed)
    size = conf.image_size
    if conf.image_categorical:
        image = np.zeros((T, B, size, size), np.uint8)
        for t in range(T):
            image[t, :, t % size, (2 * t) % size] = 1 + t % (conf.image_channels - 1)
            image[t, :, size - 1, :] = conf.image_channels - 1
    else:
        image = np.zeros((T, B, size, size, conf.image_channels), np.uint8)
        for t in range(T):
            y = (4 * t) % (size - 8)
            image[t, :, y:y + 8, 10:18, :] = 200
    actions = rng.integers(0, conf.action_dim, (T, B))
    batch = {'image': image,
             'action': np.eye(conf.action_dim, dtype=np.float32)[actions],
             'reward': (np.arange(T)[:, None] % 3 == 0).repeat(B, 1).astype(np.float32),
             'terminal': np.zeros((T, B), bool),
             'reset': np.zeros((T, B), bool)}
    batch['reset'][0] = True
    batch['terminal'][-1] = True
    if conf.vecobs_size:
        batch['vecobs'] = rng.normal(size=(T, B, conf.vecobs_size)).astype(np.float32)
    return batch


def make_obs(conf, T, B, seed=0):
    return preprocess(numpy_batch(conf, T, B, seed), conf)


# ---------------------------------------------------------------- preprocessing


def test_preprocess_images_rewards_actions():
    conf = config(ATARI, clip_rewards='tanh')
    batch = numpy_batch(conf, 4, 2)
    batch['action'] = np.array([[0, 1], [2, 3], [17, 0], [5, 5]])        # indices become one-hot
    batch['reward'][:] = 2.0
    obs = preprocess(batch, conf)
    assert obs['image'].shape == (4, 2, 3, 64, 64) and obs['image'].dtype == torch.float32
    assert obs['image'].min() == -0.5 and math.isclose(obs['image'].max().item(), 200 / 255 - 0.5, rel_tol=1e-6)
    assert obs['action'].shape == (4, 2, 18) and obs['action'][2, 0, 17] == 1 and obs['action'].sum() == 8
    assert torch.allclose(obs['reward'], torch.full((4, 2), math.tanh(2.0)))
    assert obs['reset'].dtype == torch.bool and obs['terminal'].dtype == torch.float32

    conf = config(MINATAR)
    obs = preprocess(numpy_batch(conf, 3, 2), conf)
    assert obs['image'].shape == (3, 2, 11, 10, 10)
    assert torch.equal(obs['image'].sum(2), torch.ones(3, 2, 10, 10))     # one-hot over categories

    step = preprocess_step({'image': np.zeros((5, 10, 10), np.uint8), 'action': np.zeros(5, int),
                            'reset': np.ones(5, bool)}, conf)
    assert step['image'].shape == (1, 5, 11, 10, 10) and step['action'].shape == (1, 5, 6)


def test_clip_rewards():
    r = torch.tensor([-5.0, -0.5, 0.0, 3.0])
    assert torch.equal(clip_rewards(r, 'none'), r)
    assert torch.allclose(clip_rewards(r, 'sign'), torch.tensor([-1.0, -1.0, 0.0, 1.0]))
    assert torch.allclose(clip_rewards(r, 'log1p'), torch.tensor([-math.log(6), -math.log(1.5), 0, math.log(4)]))
    with pytest.raises(ValueError, match='clip_rewards'):
        clip_rewards(r, 'clip')


# ---------------------------------------------------------------- module shapes


@pytest.mark.parametrize('sections,changes,embed_dim', [
    (MINATAR, {}, 32 * 4),
    (ATARI, {}, 32 * 4),
    (MINATAR, {'vecobs_size': 5}, 32 * 4 + 256),
    (MINATAR, {'image_encoder': 'dense', 'image_decoder': 'dense', 'image_encoder_layers': 2}, 256),
    (MINATAR, {'image_encoder': 'none', 'image_decoder': 'none', 'vecobs_size': 7}, 256),
])
@pytest.mark.parametrize('T,B', SHAPES)
def test_encoder_decoder_shapes(sections, changes, embed_dim, T, B):
    conf = config(sections, **changes)
    obs = make_obs(conf, T, B)
    encoder = MultiEncoder(conf)
    assert encoder(obs).shape == (T, B, embed_dim)
    features = torch.randn(T, B, 2, 40)
    decoder = MultiDecoder(conf, 40)
    terms, outputs = decoder.loss(features, obs, with_outputs=True)
    assert all(term.shape == (T, B, 2) for term in terms.values())
    assert outputs['reward_rec'].shape == (T, B) and outputs['terminal_rec'].shape == (T, B)
    if decoder.image is not None:
        assert outputs['image_rec'].shape == obs['image'].shape
    if conf.vecobs_size:
        assert outputs['vecobs_rec'].shape == (T, B, conf.vecobs_size)


def test_image_prediction_follows_the_image_loss():
    output = torch.randn(2, 11, 10, 10)
    categorical = MultiDecoder(config(image_loss='categorical'), 8).image_prediction(output)
    assert torch.allclose(categorical, output.softmax(-3))
    assert torch.equal(MultiDecoder(config(image_loss='mse'), 8).image_prediction(output), output)
    with pytest.raises(ValueError, match='image_loss categorical needs categorical images'):
        MultiDecoder(config(ATARI, image_loss='categorical'), 8)


def test_image_losses_by_hand():
    target = torch.zeros(1, 2, 2, 2)
    target[0, 1] = 1.0                                                     # class 1 everywhere
    logits = torch.zeros(1, 2, 2, 2)
    assert torch.allclose(image_loss(logits, target, 'categorical'), torch.tensor([4 * math.log(2)]))
    assert torch.allclose(image_loss(logits + 1, target, 'mse'), torch.tensor([0.5 * 4]))


@pytest.mark.parametrize('T,B', SHAPES)
@pytest.mark.parametrize('classes', [4, 0])
def test_rssm_shapes(T, B, classes):
    conf = config(stoch_discrete=classes)
    rssm = RSSM(conf, embed_dim=10)
    Z = conf.stoch_dim * (classes or 1)
    P = conf.stoch_dim * (classes or 2)
    obs = make_obs(conf, T, B)
    for I in (1, 3):
        seq = rssm(torch.randn(T, B, 10), obs['action'], obs['reset'], rssm.init_state(B), iwae_samples=I)
        assert seq.prior.shape == seq.post.shape == (T, B, I, P)
        assert seq.h.shape == (T, B, I, conf.deter_dim) and seq.z.shape == (T, B, I, Z)
        assert seq.out_state[0].shape == (B * I, conf.deter_dim) and seq.out_state[1].shape == (B * I, Z)
        assert not seq.out_state[0].requires_grad
    assert rssm.feature_dim == conf.deter_dim + Z


@pytest.mark.parametrize('gru_type', ['gru', 'gru_layernorm', 'gru_layernorm_dv2'])
def test_rssm_steps_equal_sequence(gru_type):
    """Stepping the posterior one step at a time with the same noise equals the sequence call,
    resets included (state zeroed before the reset step)."""
    conf = config(gru_type=gru_type, gru_layers=2)
    T, B = 6, 3
    rssm = RSSM(conf, embed_dim=10)
    embed = torch.randn(T, B, 10)
    obs = make_obs(conf, T, B)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[3, 1] = True
    in_state = (torch.randn(B, conf.deter_dim), sample_latent(torch.randn(B, rssm.params_dim), rssm.classes))
    noise = rssm.noise((T, B))
    seq = rssm(embed, obs['action'], reset, in_state, noise=noise)
    state = in_state
    for t in range(T):
        post, state = rssm.observe_step(embed[t], obs['action'][t], reset[t], state, noise=noise[t])
        assert torch.allclose(post, seq.post[t, :, 0], atol=1e-5)
        assert torch.allclose(state[0], seq.h[t, :, 0], atol=1e-5)
        assert torch.equal(state[1], seq.z[t, :, 0])
        assert torch.allclose(rssm.prior(state[0]), seq.prior[t, :, 0], atol=1e-5)
    # the reset row starts from a zero state: it equals a fresh start
    _, fresh = rssm.observe_step(embed[3, 1:2], obs['action'][3, 1:2], None, rssm.init_state(1), noise=noise[3, 1:2])
    assert torch.allclose(fresh[0], seq.h[3, 1:2, 0], atol=1e-5)


def test_onehot_rollout_equals_dense():
    """The index-based imagination (REINFORCE) gives the same states and head outputs as the dense one."""
    conf = config()
    rssm = RSSM(conf, embed_dim=10)
    ac = ActorCritic(conf, rssm.feature_dim)
    M, H = 5, 3
    start = (torch.randn(M, conf.deter_dim), sample_latent(torch.randn(M, rssm.params_dim), rssm.classes))
    noise = rssm.noise((H, M))
    torch.manual_seed(1)
    sparse = ac.imagine(rssm, start, H, noise=noise)
    ac.actor_grad = 'dynamics'
    torch.manual_seed(1)
    dense = ac.imagine(rssm, start, H, noise=noise)
    assert sparse.features is None and dense.features is not None
    assert torch.equal(sparse.actions, dense.actions.detach())
    for mlp in (ac.critic, ac.actor):
        assert torch.allclose(sparse.apply(mlp), dense.apply(mlp), atol=1e-5)
    sparse.apply(ac.critic).sum().backward()
    grad_sparse = ac.critic.model[0].weight.grad.clone()
    ac.critic.zero_grad()
    dense.apply(ac.critic, detach=True).sum().backward()
    assert torch.allclose(grad_sparse, ac.critic.model[0].weight.grad, atol=1e-4)


@pytest.mark.parametrize('T,B', SHAPES)
def test_actor_critic_shapes(T, B):
    conf = config()
    F, A, H = 20, conf.action_dim, conf.imag_horizon
    ac = ActorCritic(conf, F)
    features = torch.randn(T, B, F)
    policy = ac.distribution(ac.actor(features))
    action = policy.sample()
    assert action.shape == (T, B, A) and policy.entropy().shape == (T, B)
    assert policy.log_prob(action).shape == (T, B) and ac.critic(features).shape == (T, B)
    imagined = Imagined(torch.randn(H + 1, T * B, F), None, None,
                        torch.rand(H, T * B, A) * 1.8 - 0.9, ac.actor(torch.randn(H, T * B, F)))
    loss_actor, targets, _ = ac.actor_loss(imagined, torch.randn(H, T * B), torch.rand(H + 1, T * B))
    assert targets.returns.shape == targets.weight.shape == (H, T * B)
    loss_critic, _ = ac.critic_loss(imagined, targets)
    assert loss_actor.dim() == loss_critic.dim() == 0


@pytest.mark.parametrize('sections,changes', [
    (MINATAR, {}),
    (ATARI, {}),
    (MINATAR, {'vecobs_size': 5}),
    (MINATAR, {'stoch_discrete': 0}),
    (MINATAR, {'iwae_samples': 2}),
    (MINATAR, {'actor_grad': 'dynamics'}),
])
def test_dreamer_training_step_shapes(sections, changes):
    conf = config(sections, **changes)
    I = conf.iwae_samples
    for T, B in [(3, 2), (5, 1)]:
        model = Dreamer(conf)
        obs = make_obs(conf, T, B)
        tensors = model.wm.loss(obs, model.init_state(B), do_image_pred=True).tensors
        assert tensors['image_rec'].shape == tensors['image_pred'].shape == obs['image'].shape
        assert tensors['loss_kl'].shape == (T, B)
        optimizers = init_optimizers(model, conf)
        out_state, metrics = train_step(model, obs, model.init_state(B), optimizers)
        assert out_state[0].shape == (B * I, conf.deter_dim)
        for key in ('loss_model', 'loss_kl', 'loss_image', 'loss_reward', 'loss_terminal', 'entropy_prior',
                    'entropy_post', 'loss_actor', 'loss_critic', 'policy_entropy', 'policy_value',
                    'policy_reward', 'policy_reward_std', 'grad_norm_wm', 'grad_norm_actor', 'grad_norm_critic'):
            assert metrics[key].dim() == 0 and torch.isfinite(metrics[key]), key
    # A second batch without a reset on its first row continues from the carried state (B·I rows):
    # under the same random draws, its loss differs from that of the same step from a blank state.
    batch = numpy_batch(conf, T, B, seed=1)
    batch['reset'][0] = False
    obs = preprocess(batch, conf)
    blank_model, blank_optimizers = copy.deepcopy((model, optimizers))
    torch.manual_seed(1)
    next_state, metrics = train_step(model, obs, out_state, optimizers)
    torch.manual_seed(1)
    _, blank_metrics = train_step(blank_model, obs, blank_model.init_state(B), blank_optimizers)
    assert next_state[0].shape == (B * I, conf.deter_dim) and torch.isfinite(metrics['loss_model'])
    assert not torch.isclose(metrics['loss_model'], blank_metrics['loss_model'])


@pytest.mark.parametrize('image_loss', ['categorical', 'mse'])
def test_policy_and_dream(image_loss):
    conf = config(image_loss=image_loss)
    model = Dreamer(conf)
    B = 4
    state = model.init_state(B)
    step = preprocess_step({'image': np.zeros((B, 10, 10), np.uint8), 'action': np.zeros(B, int),
                            'reset': np.ones(B, bool)}, conf)
    action, state, metrics = model.policy(step, state)
    assert action.shape == (B, conf.action_dim) and torch.equal(action.sum(-1), torch.ones(B))
    assert state[0].shape == (B, conf.deter_dim)
    assert metrics['policy_value'].shape == metrics['policy_entropy'].shape == (B,)
    T = 6
    obs = make_obs(conf, T, 2)
    for use_actor in (False, True):
        dream = model.dream(obs, model.init_state(2), context=2, use_actor=use_actor)
        assert dream['image_pred'].shape == obs['image'].shape
        if image_loss == 'categorical':  # class probabilities; under mse the decoder's one-hot estimate
            assert torch.allclose(dream['image_pred'].sum(2), torch.ones(T, 2, 10, 10), atol=1e-5)
        assert dream['reward_pred'].shape == dream['terminal_pred'].shape == (T, 2)
        assert dream['observed'].tolist() == [True, True, False, False, False, False]
    assert torch.equal(dream['action'][:2], obs['action'][:2])


def test_wm_only_mode_skips_imagination():
    conf = config()
    model = Dreamer(conf, wm_only=True)
    obs = make_obs(conf, 4, 2)
    optimizers = init_optimizers(model, conf)
    before = [p.clone() for p in model.ac.parameters()]
    _, metrics = train_step(model, obs, model.init_state(2), optimizers)
    assert 'loss_actor' not in metrics and [k for k in metrics if k.startswith('grad_norm')] == ['grad_norm_wm']
    assert all(torch.equal(a, b) for a, b in zip(before, model.ac.parameters()))
    assert int(model.ac.train_steps) == 0


# ---------------------------------------------------------------- numerics


def test_lambda_return_matches_naive_loop():
    torch.manual_seed(0)
    H, M, gamma, lambda_ = 7, 4, 0.9, 0.8
    reward, value = torch.randn(H, M), torch.randn(H + 1, M)
    terminal = (torch.rand(H, M) < 0.2).float()
    discount = gamma * (1 - terminal)
    expected = torch.zeros(H, M)
    for m in range(M):
        for t in range(H):
            # the λ-return as a weighted sum of n-step returns (DreamerV2 eq. 4 unrolled)
            total, weight_left, n_step, pcont = 0.0, 1.0, 0.0, 1.0
            for n in range(1, H - t + 1):
                n_step += pcont * reward[t + n - 1, m]
                pcont *= discount[t + n - 1, m]
                bootstrap = n_step + pcont * value[t + n, m]
                w = weight_left if t + n == H else weight_left * (1 - lambda_)
                total += w * bootstrap
                weight_left *= lambda_
            expected[t, m] = total
    assert torch.allclose(lambda_return(reward, value, discount, lambda_), expected, atol=1e-5)
    # λ = 0: one-step TD targets
    assert torch.allclose(lambda_return(reward, value, discount, 0.0), reward + discount * value[1:])


def test_kl_balancing_by_hand():
    """One categorical of two classes: posterior (1/2, 1/2), prior (1/4, 3/4)."""
    post = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
    prior = torch.log(torch.tensor([[0.25, 0.75]])).requires_grad_()
    terms = kl_balanced(post, prior, classes=2, balance=0.8)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)    # = 0.5 ln(4/3)
    assert math.isclose(terms['loss'].item(), expected, rel_tol=1e-6)
    assert math.isclose(terms['kl'].item(), expected, rel_tol=1e-6)
    assert math.isclose(terms['entropy_post'].item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(terms['entropy_prior'].item(), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel_tol=1e-6)
    terms['loss'].backward()
    # prior side, weight 0.8: d KL / d prior logits = p_prior - p_post
    assert torch.allclose(prior.grad, 0.8 * torch.tensor([[-0.25, 0.25]]), atol=1e-6)
    # posterior side, weight 0.2: d KL / d post logits = q (log q - log p - KL)
    dq = 0.5 * torch.tensor([math.log(2) - expected, math.log(2 / 3) - expected])
    assert torch.allclose(post.grad, 0.2 * dq.unsqueeze(0), atol=1e-6)


def test_gaussian_latents_against_torch_distributions():
    torch.manual_seed(0)
    post, prior = torch.randn(3, 8), torch.randn(3, 8)

    def normal(p):
        mean, std = p.chunk(2, -1)
        return torch.distributions.Independent(torch.distributions.Normal(mean, 2 * torch.sigmoid(std) + 0.1), 1)

    expected = torch.distributions.kl_divergence(normal(post), normal(prior))
    assert torch.allclose(latent_kl(post, prior, 0), expected, atol=1e-5)
    assert torch.allclose(latent_entropy(post, 0), normal(post).entropy(), atol=1e-5)


def test_straight_through_sample():
    torch.manual_seed(0)
    logits = torch.randn(2000, 3 * 4, requires_grad=True)
    z = sample_latent(logits, classes=4)
    assert torch.equal(z.unflatten(-1, (3, 4)).sum(-1), torch.ones(2000, 3))
    frequency = z.unflatten(-1, (3, 4)).mean(0)
    assert torch.allclose(frequency, logits.unflatten(-1, (3, 4)).softmax(-1).mean(0), atol=0.03)
    weights = torch.randn(12)
    (z * weights).sum().backward()
    probs = logits.detach().unflatten(-1, (3, 4)).softmax(-1)
    w = weights.view(3, 4)
    expected = probs * (w - (probs * w).sum(-1, keepdim=True))             # softmax Jacobian
    assert torch.allclose(logits.grad, expected.flatten(-2), atol=1e-6)


def test_value_targets_stop_at_a_terminal_state_by_hand():
    """H = 3, γ = λ = 1/2. Column 0: state s2 is terminal; column 1: the start state s0 is
    terminal with probability 1/2. Discounts come from the state each step leads to
    (terminal[1:]), weights from the states the steps start in (Π (1 - terminal[:-1]))."""
    reward = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]])                    # r(s1) .. r(s3)
    terminal = torch.tensor([[0.0, 0.5], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])      # p(s0) .. p(s3)
    value = torch.tensor([[8.0, 0.0], [16.0, 0.0], [32.0, 0.0], [64.0, 8.0]])      # v'(s0) .. v'(s3)
    returns, weight = value_targets(reward, terminal, value, gamma=0.5, lambda_=0.5)
    # column 0: R2 = 4 + 0.5 (0.5·64 + 0.5·64) = 36; s2 ends the episode: R1 = 2 + 0 = 2;
    #           R0 = 1 + 0.5 (0.5·16 + 0.5·2) = 5.5
    # column 1: R2 = 0.5·8 = 4, R1 = 0.5 (0.5·0 + 0.5·4) = 1, R0 = 0.5 (0.5·0 + 0.5·1) = 0.25
    assert torch.equal(returns, torch.tensor([[5.5, 0.25], [2.0, 1.0], [36.0, 4.0]]))
    assert torch.equal(weight, torch.tensor([[1.0, 0.5], [1.0, 0.5], [0.0, 0.5]]))


def test_actor_loss_by_hand():
    """H = 2, M = 1: returns (3, 1), target values (1, 2, 5), weights (1, 1/2), η = 0.1."""
    returns = torch.tensor([[3.0], [1.0]], requires_grad=True)
    targets = Targets(returns, torch.tensor([[1.0], [0.5]]))
    value_target = torch.tensor([[1.0], [2.0], [5.0]])                 # advantages R - v'(s_t): 2, -1
    log_prob = torch.tensor([[-0.5], [-1.0]], requires_grad=True)
    entropy = torch.tensor([[1.0], [0.5]], requires_grad=True)
    loss, metrics = actor_loss(targets, value_target, log_prob, entropy, entropy_weight=0.1)
    # REINFORCE: mean(w (-log π · A - η H)) = (1 (0.5·2 - 0.1) + 0.5 (-1·1 - 0.05)) / 2
    assert math.isclose(loss.item(), (0.9 - 0.525) / 2, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(log_prob.grad, torch.tensor([[-1.0], [0.25]]))     # -w A / 2: toward the better action
    assert torch.allclose(entropy.grad, torch.tensor([[-0.05], [-0.025]]))   # -η w / 2: the bonus raises entropy
    assert returns.grad is None                                              # the advantage is a constant
    assert math.isclose(metrics['policy_weight'].item(), 0.75)
    # dynamics backpropagation: mean(w (-R - η H)) = (1 (-3 - 0.1) + 0.5 (-1 - 0.05)) / 2
    loss, _ = actor_loss(targets, value_target, None, entropy.detach(), entropy_weight=0.1)
    assert math.isclose(loss.item(), (-3.1 - 0.525) / 2, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(returns.grad, torch.tensor([[-0.5], [-0.25]]))


def _constant_head(mlp, value):
    torch.nn.init.zeros_(mlp.model[-1].weight)
    torch.nn.init.constant_(mlp.model[-1].bias, value)


def test_returns_bootstrap_from_the_target_critic_and_the_critic_regresses_onto_them():
    """Target critic 7 everywhere, online critic -3, a uniform actor, no rewards or terminals,
    H = 3, γ = λ = 1/2, η = 0.1: R2 = 0.5·7 = 3.5, R1 = 0.5 (3.5 + 1.75) = 2.625,
    R0 = 0.5 (3.5 + 1.3125) = 2.40625, all from v' and none from the online critic."""
    conf = config(gamma=0.5, lambda_gae=0.5, entropy=0.1, imag_horizon=3)
    F, H, M, A = 8, 3, 5, conf.action_dim
    ac = ActorCritic(conf, F)
    _constant_head(ac.critic_target, 7.0)
    _constant_head(ac.critic, -3.0)
    _constant_head(ac.actor, 0.0)
    features = torch.randn(H + 1, M, F)
    actions = torch.nn.functional.one_hot(torch.randint(0, A, (H, M)), A).float()
    imagined = Imagined(features, None, None, actions, ac.actor(features[:-1]))
    loss_actor, targets, _ = ac.actor_loss(imagined, torch.zeros(H, M), torch.zeros(H + 1, M))
    R = torch.tensor([2.40625, 2.625, 3.5])
    assert torch.allclose(targets.returns, R[:, None].expand(H, M))
    # baseline v' = 7: -log π(a) (R - 7) - η H(π) with log π = -log 6 and H(π) = log 6
    assert math.isclose(loss_actor.item(), math.log(A) * ((R - 7).mean().item() - 0.1), rel_tol=1e-5)
    loss_critic, _ = ac.critic_loss(imagined, targets)
    assert math.isclose(loss_critic.item(), (0.5 * (R + 3) ** 2).mean().item(), rel_tol=1e-5)


def test_kl_weight_scales_the_kl_term_of_the_world_model_loss():
    T, B = 4, 2
    obs = make_obs(config(), T, B)
    noise = torch.rand(T, B, config().stoch_dim, 1)
    losses, kls = {}, {}
    for kl_weight in (0.0, 0.1, 1.0):
        torch.manual_seed(0)  # the same weights for every kl_weight
        wm = WorldModel(config(kl_weight=kl_weight))
        out = wm.loss(obs, wm.init_state(B), noise=noise)
        losses[kl_weight], kls[kl_weight] = out.loss.item(), out.metrics['loss_kl'].item()
    assert kls[0.0] > 0.1 and kls[0.0] == kls[0.1] == kls[1.0]
    for kl_weight in (0.1, 1.0):
        assert math.isclose(losses[kl_weight], losses[0.0] + kl_weight * kls[0.0], rel_tol=1e-5)


def test_iwae_loss_averages_the_likelihoods_of_the_samples():
    """iwae_samples 2: loss = mean over (t, b) of -log ½ (exp(-l1) + exp(-l2)), l_i = kl_weight ·
    (log q(z_i) - log p(z_i)) + reconstruction of sample i, each sample being the I = 1 rollout
    with that sample's noise."""
    T, B, I = 4, 2, 2
    conf = config(iwae_samples=I, kl_weight=0.1)
    obs = make_obs(conf, T, B)
    torch.manual_seed(0)
    wm = WorldModel(conf)
    noises = [torch.rand(T, B, conf.stoch_dim, 1) for _ in range(I)]
    with torch.no_grad():
        loss = wm.loss(obs, wm.init_state(B), noise=torch.stack(noises, 2).flatten(1, 2)).loss
        per_sample = []
        for noise in noises:
            seq = wm.rssm(wm.encoder(obs), obs['action'], obs['reset'], wm.init_state(B), noise=noise)
            sampled_kl = (latent_log_prob(seq.post, seq.z, conf.stoch_discrete)
                          - latent_log_prob(seq.prior, seq.z, conf.stoch_discrete))
            terms, _ = wm.decoder.loss(wm.rssm.feature(seq.h, seq.z), obs)
            reconstruction = sum(wm.weights[name] * term for name, term in terms.items())
            per_sample.append((0.1 * sampled_kl + reconstruction)[:, :, 0].double())
    l1, l2 = per_sample
    expected = -torch.log(0.5 * (torch.exp(-l1) + torch.exp(-l2))).mean()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    assert abs(expected - 0.5 * (l1 + l2).mean()) > 1e-3   # the samples differ enough to tell log-mean-exp from a mean


# ---------------------------------------------------------------- learning and gradients


def test_debug_model_overfits_one_batch():
    torch.manual_seed(0)
    conf = config(adam_lr=1e-3)
    model = Dreamer(conf, wm_only=True)
    optimizers = init_optimizers(model, conf)
    obs = make_obs(conf, conf.batch_length, conf.batch_size)
    history = []
    for _ in range(100):
        _, metrics = train_step(model, obs, model.init_state(conf.batch_size), optimizers)
        history.append(metrics)
    for key in ('loss_model', 'loss_kl', 'loss_image', 'loss_reward', 'loss_terminal'):
        assert all(math.isfinite(m[key].item()) for m in history), key
    assert history[-1]['loss_model'] < 0.5 * history[0]['loss_model']
    assert history[-1]['loss_reward'] < history[0]['loss_reward']


def _train_actor_critic(ac, features, actions, reward, terminal, steps=30):
    """Adam steps of actor and critic on one fixed imagined batch; returns the per-step metrics."""
    opt_actor = torch.optim.Adam(ac.actor.parameters(), lr=1e-3)
    opt_critic = torch.optim.Adam(ac.critic.parameters(), lr=1e-3)
    history = []
    for _ in range(steps):
        imagined = Imagined(features, None, None, actions, ac.actor(features[:-1]))
        loss_actor, targets, metrics = ac.actor_loss(imagined, reward, terminal)
        loss_critic, _ = ac.critic_loss(imagined, targets)
        opt_actor.zero_grad()
        opt_critic.zero_grad()
        (loss_actor + loss_critic).backward()
        opt_actor.step()
        opt_critic.step()
        history.append({'critic': loss_critic.item(), 'entropy': metrics['policy_entropy'].item(),
                        'prob_0': metrics['policy_prob_0'].item()})
    return history


def test_actor_moves_toward_the_positive_advantage_and_critic_fits_the_returns():
    torch.manual_seed(0)
    conf = config()
    F, H, M = 24, conf.imag_horizon, 64
    ac = ActorCritic(conf, F)
    features = torch.randn(H + 1, M, F)
    actions = torch.nn.functional.one_hot(torch.randint(0, conf.action_dim, (H, M)), conf.action_dim).float()
    # Action 0 earns 1, the others -0.2: zero mean under the uniform actions, so only action 0 has
    # a positive advantage. Any sign error in the REINFORCE term makes its probability fall.
    reward = torch.where(actions[..., 0] > 0, 1.0, -0.2)
    terminal = torch.rand(H + 1, M) * 0.1
    history = _train_actor_critic(ac, features, actions, reward, terminal)
    assert history[-1]['critic'] < 0.5 * history[0]['critic']
    assert history[-1]['prob_0'] > history[0]['prob_0'] + 0.2  # measured: 0.18 -> 0.67


def test_entropy_bonus_alone_raises_the_policy_entropy():
    torch.manual_seed(0)
    conf = config(zero_init_heads=True)  # a zero target critic and zero rewards: every advantage is 0
    F, H, M = 24, conf.imag_horizon, 64
    ac = ActorCritic(conf, F)
    features = torch.randn(H + 1, M, F)
    actions = torch.nn.functional.one_hot(torch.randint(0, conf.action_dim, (H, M)), conf.action_dim).float()
    history = _train_actor_critic(ac, features, actions, torch.zeros(H, M), torch.zeros(H + 1, M))
    assert history[-1]['entropy'] > history[0]['entropy'] + 0.05  # measured: 1.69 -> 1.79 (log 6 = 1.79)


def grads(module):
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def imagined_losses(model, obs):
    """The actor and critic losses of one batch, as train_step computes them, without stepping."""
    wm = model.wm.loss(obs, model.init_state(obs['reward'].shape[1]))
    imagined, reward, terminal = model.imagine(wm.states)
    loss_actor, targets, _ = model.ac.actor_loss(imagined, reward, terminal)
    return loss_actor, model.ac.critic_loss(imagined, targets)[0]


def test_reinforce_gives_world_model_no_gradient():
    conf = config()
    model = Dreamer(conf)
    obs = make_obs(conf, 4, 2)
    loss_actor, loss_critic = imagined_losses(model, obs)
    loss_actor.backward()
    assert grads(model.wm) == [] and grads(model.ac.critic) == [] and grads(model.ac.actor)
    loss_critic.backward()
    assert grads(model.wm) == [] and grads(model.ac.critic)
    assert all(p.requires_grad for p in model.wm.parameters())             # unfrozen again


def test_dynamics_backprop_reaches_the_actor_through_the_rollout():
    conf = config(actor_grad='dynamics', entropy=0.0)
    model = Dreamer(conf)
    obs = make_obs(conf, 4, 2)
    torch.manual_seed(0)
    loss_actor, _ = imagined_losses(model, obs)
    loss_actor.backward()
    assert len(grads(model.ac.actor)) == len(list(model.ac.actor.parameters()))  # value path only
    assert grads(model.wm) == [] and grads(model.ac.critic) == []

    # the same loss with the rollout detached gives the actor nothing
    model.zero_grad()
    seq = model.wm.loss(obs, model.init_state(2))
    start = tuple(x.detach().flatten(0, 2) for x in seq.states)
    with frozen(model.wm):
        imagined = model.ac.imagine(model.wm.rssm, start, conf.imag_horizon)
        detached = imagined._replace(features=imagined.features.detach())
        reward = detached.apply(model.wm.decoder.reward, 1)
        terminal = torch.sigmoid(detached.apply(model.wm.decoder.terminal))
        loss_actor, _, _ = model.ac.actor_loss(detached, reward, terminal)
    loss_actor.backward()
    assert grads(model.ac.actor) == []


def test_target_critic_is_a_hard_copy_every_interval():
    conf = config(target_interval=3)
    model = Dreamer(conf)
    obs = make_obs(conf, 3, 2)
    optimizers = init_optimizers(model, conf)
    for step in range(5):
        critic = [p.clone() for p in model.ac.critic.parameters()]
        train_step(model, obs, model.init_state(2), optimizers)
        copied = all(torch.equal(a, b) for a, b in zip(critic, model.ac.critic_target.parameters()))
        assert copied == (step % 3 == 0), step
    assert all(not p.requires_grad for p in model.ac.critic_target.parameters())


def test_bf16_autocast_agrees_with_fp32():
    conf = config()
    model = Dreamer(conf)
    obs = make_obs(conf, conf.batch_length, conf.batch_size)
    results = {}
    for amp in ('false', 'true'):
        twin = copy.deepcopy(model)
        twin.amp = amp
        torch.manual_seed(0)
        _, metrics = train_step(twin, obs, twin.init_state(conf.batch_size), init_optimizers(twin, conf))
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in metrics.values())
        results[amp] = metrics
    for key in ('loss_model', 'loss_image', 'entropy_prior', 'entropy_post'):
        assert math.isclose(results['true'][key], results['false'][key], rel_tol=0.02), key
    for key in ('loss_kl', 'loss_reward', 'loss_terminal', 'policy_value', 'policy_entropy'):
        assert abs(results['true'][key] - results['false'][key]) < 0.02 + 0.05 * abs(results['false'][key]), key


def test_state_dict_round_trip():
    conf = config()
    obs = make_obs(conf, 4, 2)
    model = Dreamer(conf)
    optimizers = init_optimizers(model, conf)
    for _ in range(2):
        train_step(model, obs, model.init_state(2), optimizers)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a different initialisation
    fresh = Dreamer(conf)
    fresh.load_state_dict(torch.load(buffer))
    outputs = []
    for m in (model, fresh):
        torch.manual_seed(0)
        with torch.no_grad():
            wm = m.wm.loss(obs, m.init_state(2))
            imagined, reward, terminal = m.imagine(wm.states)
            loss_actor, targets, _ = m.ac.actor_loss(imagined, reward, terminal)
        outputs.append((wm.out_state, {**wm.metrics, 'loss_actor': loss_actor, 'returns': targets.returns}))
    (sa, ma), (sb, mb) = outputs
    assert torch.equal(sa[0], sb[0]) and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_the_world_model_loss_is_its_weighted_terms():
    conf = config(kl_weight=0.3, reward_weight=2.0)
    wm = WorldModel(conf)
    out = wm.loss(make_obs(conf, 4, 2), wm.init_state(2))
    assert out.terms.keys() == wm.weights.keys() == {'kl', 'image', 'reward', 'terminal'}
    assert wm.weights['kl'] == 0.3 and wm.weights['reward'] == 2.0
    expected = sum(wm.weights[name] * term for name, term in out.terms.items()).mean()
    assert torch.isclose(out.loss, expected)
    with pytest.raises(AssertionError, match='loss terms'):
        wm.weighted({'kl': out.terms['kl']})
