"""The model's maths against hand computations and naive loops: λ-returns, KL balancing, latents,
value targets, the actor loss, the target critic, the KL weight and the IWAE average."""
import math

import torch

from pydreamer.models.actor_critic import ActorCritic, Imagined, Targets, actor_loss, value_targets
from pydreamer.models.functions import (
    kl_balanced, lambda_return, latent_entropy, latent_kl, latent_log_prob, sample_latent)
from pydreamer.models.world_model import WorldModel

from tests.models_common import config, make_obs

torch.set_num_threads(1)


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
