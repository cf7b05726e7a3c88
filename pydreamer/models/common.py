"""Building blocks shared by the model parts."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-3  # DreamerV2's LayerNorm epsilon, everywhere


def norm_layer(dim: int, layer_norm: bool) -> nn.Module:
    return nn.LayerNorm(dim, eps=LN_EPS) if layer_norm else nn.Identity()


class MLP(nn.Module):
    """`hidden_layers` × [Linear, LayerNorm, ELU], then a Linear output layer.

    Applies to any leading dims: (..., in_dim) -> (..., out_dim), or (...) when out_dim == 1.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int, layer_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(hidden_layers):
            # in-place ELU: no new buffer, and its backward uses the output instead of recomputing exp
            layers += [nn.Linear(dim, hidden_dim), norm_layer(hidden_dim, layer_norm), nn.ELU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.model = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        y = self.model(x)
        return y.squeeze(-1) if self.out_dim == 1 else y

    def forward_onehot(self, h: Tensor, z_index: Tensor) -> Tensor:
        """forward([h, z]) for a one-hot z given by its flat indices, without the one-hot.

        h (..., D); z_index (..., S) long, index s·K + k of each categorical's class. Exact, and
        ~K times fewer operations for the z block of the first layer (see onehot_matmul).
        """
        return self._rest(onehot_linear(self.model[0], h, z_index))

    def _rest(self, x: Tensor) -> Tensor:
        y = self.model[1:](x)
        return y.squeeze(-1) if self.out_dim == 1 else y


class _OneHotMatmul(torch.autograd.Function):
    """onehot(index) @ table as an embedding bag; the table's gradient as a dense product.

    The forward gathers S rows per sample instead of multiplying by an (S·K)-wide, mostly-zero
    input. Backward, embedding_bag's own sparse kernel (sort + segment sums) is slower on CPU
    than the plain product onehot^T @ grad, so that is used. No gradient for the indices.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        # table (S·K, out), index (N, S) -> (N, out)
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, mode='sum')

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        # built transposed, (S·K, N), so that the product needs no transposed copy
        onehot_t = grad.new_zeros(ctx.rows, index.shape[0]).scatter_(0, index.t(), 1.0)
        return onehot_t @ grad, None


def onehot_matmul(weight: Tensor, z_index: Tensor, dtype: torch.dtype) -> Tensor:
    """weight @ onehot(z_index) for weight (out, S·K) and flat indices z_index (..., S) -> (..., out)."""
    # (S·K, out) row-major: embedding_bag on the transposed view is ~50 times slower than on a
    # copy; under autocast the copy is bf16, as the matmul would use
    table = weight.t().to(dtype).contiguous()
    out = _OneHotMatmul.apply(table, z_index.reshape(-1, z_index.shape[-1]))
    return out.view(z_index.shape[:-1] + (weight.shape[0],))


def onehot_linear(layer: nn.Linear, h: Tensor, z_index: Tensor) -> Tensor:
    """layer([h, onehot(z_index)]) with h (..., D), z_index (..., S) flat one-hot indices."""
    D = h.shape[-1]
    x = F.linear(h, layer.weight[:, :D], layer.bias)
    return x + onehot_matmul(layer.weight[:, D:], z_index, x.dtype)


def init_weights_tf2(module: nn.Module) -> None:
    """TF2/Keras initialisation, as DreamerV2 and pydreamer's world model: Glorot-uniform weights,
    orthogonal recurrent weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GRUCell):
            nn.init.xavier_uniform_(m.weight_ih)
            nn.init.orthogonal_(m.weight_hh)
            nn.init.zeros_(m.bias_ih)
            nn.init.zeros_(m.bias_hh)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` stop requiring gradients inside the block: gradients still flow
    through its activations (the imagined dynamics), but its weights get none."""
    previous = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in previous:
            p.requires_grad_(flag)
