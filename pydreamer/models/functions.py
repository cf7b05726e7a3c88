"""Pure tensor functions of DreamerV2: latent distributions, KL balancing, λ-returns.

Latent parameters ("params") are the raw outputs of the RSSM's prior or posterior layer:
- discrete latents (stoch_discrete K > 0): logits of shape (..., S*K), S categoricals of K classes;
- Gaussian latents (stoch_discrete == 0): (..., 2*S), mean and pre-activation std.
All functions compute in float32, whatever the dtype of their inputs (bf16 under autocast).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Gaussian latents: std = MAX_STD * sigmoid(x) + MIN_STD, as pydreamer's diag_normal.
MIN_STD, MAX_STD = 0.1, 2.0


def _categorical_logp(params: Tensor, classes: int) -> Tensor:
    # (..., S*K) -> (..., S, K) normalised log-probabilities
    return params.float().unflatten(-1, (-1, classes)).log_softmax(-1)


def _categorical_probs(params: Tensor, classes: int) -> Tensor:
    # (..., S*K) -> (..., S, K) probabilities
    return params.float().unflatten(-1, (-1, classes)).softmax(-1)


def _normal(params: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = params.float().chunk(2, -1)
    return mean, MAX_STD * torch.sigmoid(std) + MIN_STD


def _inverse_cdf(probs: Tensor, noise: Tensor | None) -> Tensor:
    # probs (..., S, K), noise uniforms (..., S, 1) -> the index of the first class whose
    # cumulative probability exceeds u: (..., S, 1)
    if noise is None:
        noise = torch.rand(probs.shape[:-1] + (1,), device=probs.device)
    return (probs.cumsum(-1) < noise).sum(-1, keepdim=True).clamp_(max=probs.shape[-1] - 1)


def sample_index(params: Tensor, classes: int, noise: Tensor | None = None) -> Tensor:
    """Category indices (..., S) sampled from logits (..., S*K); noise: uniforms (..., S, 1).
    The same draw as `sample_latent` with the same noise, without the one-hot."""
    return _inverse_cdf(_categorical_probs(params, classes), noise).squeeze(-1)


class _StraightThroughOneHot(torch.autograd.Function):
    """A one-hot sample forward, the gradient of the class probabilities backward: the same values
    and gradients as `onehot + (probs - probs.detach())`, as one autograd node instead of a dozen
    (this runs once per time step inside the RSSM loop)."""

    @staticmethod
    def forward(ctx, logits: Tensor, noise: Tensor | None, classes: int) -> Tensor:
        probs = _categorical_probs(logits, classes)                           # (..., S, K)
        onehot = torch.zeros_like(probs).scatter_(-1, _inverse_cdf(probs, noise), 1.0)
        ctx.save_for_backward(probs)
        ctx.logits_dtype = logits.dtype
        return onehot.flatten(-2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        probs, = ctx.saved_tensors
        grad = grad.float().unflatten(-1, probs.shape[-2:])
        # softmax Jacobian-vector product: d probs / d logits applied to grad
        grad_logits = probs * (grad - (grad * probs).sum(-1, keepdim=True))
        return grad_logits.flatten(-2).to(ctx.logits_dtype), None, None


def sample_latent(params: Tensor, classes: int, noise: Tensor | None = None) -> Tensor:
    """A reparameterised sample: straight-through one-hot (DreamerV2 eq. 1-2 and Algorithm 1) or Gaussian.

    params (..., S*K) or (..., 2S); noise: uniforms (..., S, 1) for categoricals, standard normals
    (..., S) for Gaussians, drawn here when None. Passing the noise makes sampling deterministic,
    which is how a step-by-step rollout is made to equal the whole-sequence call.
    Returns (..., S*K) or (..., S), float32.
    """
    if classes:
        return _StraightThroughOneHot.apply(params, noise, classes)
    mean, std = _normal(params)
    if noise is None:
        noise = torch.randn_like(mean)
    return mean + std * noise


def latent_noise(shape: tuple[int, ...], stoch_dim: int, classes: int, device) -> Tensor:
    """The noise `sample_latent` would draw for a batch of `shape` (e.g. (T, B))."""
    if classes:
        return torch.rand(shape + (stoch_dim, 1), device=device)
    return torch.randn(shape + (stoch_dim,), device=device)


def latent_kl(post: Tensor, prior: Tensor, classes: int) -> Tensor:
    """KL(post || prior), summed over the S latent variables. (...,P), (...,P) -> (...)"""
    if classes:
        lq, lp = _categorical_logp(post, classes), _categorical_logp(prior, classes)
        return (lq.exp() * (lq - lp)).sum((-1, -2))
    (mq, sq), (mp, sp) = _normal(post), _normal(prior)
    return (torch.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5).sum(-1)


def latent_entropy(params: Tensor, classes: int) -> Tensor:
    """Entropy, summed over the S latent variables. (..., P) -> (...)"""
    if classes:
        logp = _categorical_logp(params, classes)
        return -(logp.exp() * logp).sum((-1, -2))
    _, std = _normal(params)
    return (0.5 + 0.5 * math.log(2 * math.pi) + torch.log(std)).sum(-1)


def latent_log_prob(params: Tensor, sample: Tensor, classes: int) -> Tensor:
    """log p(sample), summed over latents; sample (..., S*K) one-hot or (..., S). -> (...)"""
    if classes:
        logp = _categorical_logp(params, classes)
        return (sample.float().unflatten(-1, (-1, classes)) * logp).sum((-1, -2))
    mean, std = _normal(params)
    z = (sample.float() - mean) / std
    return (-0.5 * z ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_balanced(post: Tensor, prior: Tensor, classes: int, balance: float) -> dict[str, Tensor]:
    """KL balancing (DreamerV2 Algorithm 2): the prior is trained towards the posterior with weight
    `balance`, the posterior regularised towards the prior with 1 - balance.

        loss = balance * KL(sg(post) || prior) + (1 - balance) * KL(post || sg(prior))

    Returns {'loss', 'kl' (exact KL), 'entropy_post', 'entropy_prior'}, each (...); only 'loss'
    carries gradients (its value equals 'kl'; only the gradients differ between the two terms).
    """
    if not classes:
        kl_prior_side = latent_kl(post.detach(), prior, classes)
        kl_post_side = latent_kl(post, prior.detach(), classes)
        with torch.no_grad():
            entropy_post, entropy_prior = latent_entropy(post, classes), latent_entropy(prior, classes)
    else:
        # the log-probabilities are computed once and shared by both sides and the entropies
        lq, lp = _categorical_logp(post, classes), _categorical_logp(prior, classes)   # (..., S, K)
        q = lq.exp()
        q_sg, lq_sg, lp_sg = q.detach(), lq.detach(), lp.detach()
        kl_prior_side = (q_sg * (lq_sg - lp)).sum((-1, -2))
        kl_post_side = (q * (lq - lp_sg)).sum((-1, -2))
        with torch.no_grad():
            entropy_post = -(q_sg * lq_sg).sum((-1, -2))
            entropy_prior = -(lp_sg.exp() * lp_sg).sum((-1, -2))
    return {'loss': balance * kl_prior_side + (1 - balance) * kl_post_side, 'kl': kl_prior_side.detach(),
            'entropy_post': entropy_post, 'entropy_prior': entropy_prior}


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor, lambda_: float) -> Tensor:
    """TD(λ) targets (DreamerV2 eq. 4), bootstrapped from the last value.

    reward (H, M): reward received on the transition t -> t+1;
    value (H+1, M): value estimates of states 0..H;
    discount (H, M): γ·(1 - terminal of state t+1).

        R[t] = reward[t] + discount[t] * ((1 - λ) value[t+1] + λ R[t+1]),   R[H] = value[H]

    Returns (H, M). λ = 0 gives one-step TD targets, λ = 1 the discounted Monte-Carlo return.
    """
    assert value.shape[0] == reward.shape[0] + 1 and reward.shape == discount.shape
    # The λ-independent part is computed for all steps at once; only the recursion loops.
    base = reward + discount * (1 - lambda_) * value[1:]
    decay = discount * lambda_
    returns = []
    last = value[-1]
    for t in range(reward.shape[0] - 1, -1, -1):
        last = base[t] + decay[t] * last
        returns.append(last)
    return torch.stack(returns[::-1])


def logavgexp(x: Tensor, dim: int) -> Tensor:
    """log(mean(exp(x))) along dim: the IWAE average of likelihoods."""
    if x.shape[dim] == 1:
        return x.squeeze(dim)
    return x.logsumexp(dim) - math.log(x.shape[dim])
