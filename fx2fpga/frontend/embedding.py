"""``nn.Embedding`` as a one-hot matrix product, forward and backward (decompositions for the trace).

A lookup ``weight[indices]`` reads rows at addresses the data decides, which the kernel IR's affine
indices cannot express; ``onehot(indices) @ weight`` computes the same rows with ops it has (a
comparison with ``arange``, a matrix product whose one-hot operand is exact), and its gradient
``onehot(indices)^T @ grad`` is the scatter-add of ``embedding_dense_backward``. It costs
``vocabulary x embedding dim`` multiply-accumulates per token: meant for small vocabularies.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten


def _one_hot_rows(indices: torch.Tensor, num_weights: int, dtype: torch.dtype) -> torch.Tensor:
    """``(..., num_weights)``: 1 where the last index equals the row, else 0."""
    return (indices.unsqueeze(-1) == torch.arange(num_weights, device=indices.device)).to(dtype)


def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """``aten.embedding``: ``onehot(indices) @ weight``."""
    rows = _one_hot_rows(indices.reshape(-1), weight.shape[0], weight.dtype) @ weight
    return rows.reshape(*indices.shape, weight.shape[1])


def embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    """``aten.embedding_dense_backward``: ``onehot(indices)^T @ grad``, the padding row's gradient zero."""
    if scale_grad_by_freq:
        from ..errors import UnsupportedOpError

        raise UnsupportedOpError("aten.embedding_dense_backward", "", ["scale_grad_by_freq=False"],
                                 "nn.Embedding(scale_grad_by_freq=True) divides by data-dependent counts")
    flat = grad_output.reshape(-1, grad_output.shape[-1])
    onehot = _one_hot_rows(indices.reshape(-1), num_weights, grad_output.dtype)
    if padding_idx >= 0:
        onehot = onehot * (torch.arange(num_weights, device=indices.device) != padding_idx).to(grad_output.dtype)
    return onehot.t() @ flat


DECOMPOSITIONS = {aten.embedding.default: embedding, aten.embedding_dense_backward.default: embedding_dense_backward}
