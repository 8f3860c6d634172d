"""The op as registered torch.library custom ops, so that torch.compile sees one opaque node.

Two ops, ``tri_panet::pyramid_attention_forward`` -> (out, lse) and
``tri_panet::pyramid_attention_backward`` -> gradients, dispatch by name to an
implementation pair (forward, backward) registered with :func:`register_implementation`.
Backends register themselves when imported (``tri_panet.torch_backend`` as "torch"). The pair
shares the log-sum-exp convention of :func:`tri_panet.torch_backend.tiled_forward`, so a
backend may bring a forward only and borrow another backward. Fake (meta)
implementations give shapes to the compiler; autograd connects the two ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch



class Implementation(NamedTuple):
    """forward(query, keys, values, **options) -> (out, lse);
    backward(grad_out, query, keys, values, lse, **options) -> (grad_query, grad_keys, grad_values).

    An implementation that keeps extra state for its backward (the Triton kernels keep the
    unfolded attention output, FlashAttention's O) gives ``state_shape(query, values,
    patch_size)``; its forward then also takes ``save_state: bool`` and returns
    (out, lse, state), and its backward takes ``state=`` (an empty tensor when not saved).
    """

    forward: Callable
    backward: Callable
    state_shape: Callable | None = None


_IMPLEMENTATIONS: dict[str, Implementation] = {}


def register_implementation(name: str, forward: Callable, backward: Callable, state_shape: Callable | None = None):
    """Make ``name`` usable as the ``implementation`` of the custom ops (see :class:`Implementation`)."""
    _IMPLEMENTATIONS[name] = Implementation(forward, backward, state_shape)


def _options(patch_size, softmax_scale, key_eps, fold_divisor, tile_bytes):
    return dict(patch_size=patch_size, softmax_scale=softmax_scale, key_eps=key_eps, fold_divisor=fold_divisor,
                tile_bytes=tile_bytes)


@torch.library.custom_op("tri_panet::pyramid_attention_forward", mutates_args=())
def pyramid_attention_forward(
    query: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    tile_bytes: int,
    implementation: str,
    save_state: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [B, Cv, H, W], lse [B, H*W], state) computed by the named implementation.

    ``state`` is what the implementation keeps for its backward (empty if none or not saved).
    """
    options = _options(patch_size, softmax_scale, key_eps, fold_divisor, tile_bytes)
    impl = _IMPLEMENTATIONS[implementation]
    if impl.state_shape is None:
        out, lse = impl.forward(query, keys, values, **options)
        state = query.new_empty(0)
    else:
        out, lse, state = impl.forward(query, keys, values, save_state=save_state, **options)
    return out.contiguous(), lse.contiguous(), state.contiguous()


@pyramid_attention_forward.register_fake
def _forward_fake(query, keys, values, patch_size, softmax_scale, key_eps, fold_divisor, tile_bytes, implementation,
                  save_state):
    batch, _, height, width = query.shape
    out = query.new_empty(batch, values[0].shape[1], height, width)
    lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    impl = _IMPLEMENTATIONS[implementation]
    saves = impl.state_shape is not None and save_state
    state = query.new_empty(impl.state_shape(query, values, patch_size) if saves else (0,))
    return out, query.new_empty(batch, height * width, dtype=lse_dtype), state


@torch.library.custom_op("tri_panet::pyramid_attention_backward", mutates_args=())
def pyramid_attention_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    lse: torch.Tensor,
    state: torch.Tensor,
    patch_size: int,
    softmax_scale: float,
    key_eps: float,
    fold_divisor: float,
    tile_bytes: int,
    implementation: str,
    save_state: bool,
) -> list[torch.Tensor]:
    """[grad_query, *grad_keys, *grad_values] from the saved ``lse`` (and ``state``)."""
    options = _options(patch_size, softmax_scale, key_eps, fold_divisor, tile_bytes)
    impl = _IMPLEMENTATIONS[implementation]
    if impl.state_shape is not None:
        options["state"] = state
    grad_query, grad_keys, grad_values = impl.backward(grad_out, query, keys, values, lse, **options)
    # The compiler lays out later kernels from the fake's strides: both promise contiguous.
    return [g.contiguous() for g in (grad_query, *grad_keys, *grad_values)]


@pyramid_attention_backward.register_fake
def _backward_fake(grad_out, query, keys, values, lse, state, *options):
    return [query.new_empty(t.shape) for t in (query, *keys, *values)]


def _setup_context(ctx, inputs, output):
    query, keys, values, *options = inputs
    ctx.save_for_backward(query, output[1], output[2], *keys, *values)
    ctx.n_levels, ctx.options = len(keys), options


def _backward(ctx, grad_out, _grad_lse, _grad_state):
    query, lse, state, *levels = ctx.saved_tensors
    n = ctx.n_levels
    keys, values = list(levels[:n]), list(levels[n:])
    grads = pyramid_attention_backward(grad_out.contiguous(), query, keys, values, lse, state, *ctx.options)
    return (grads[0], grads[1 : 1 + n], grads[1 + n :], *([None] * len(ctx.options)))


pyramid_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def pyramid_attention_op(query, keys, values, *, patch_size, softmax_scale, key_eps, fold_divisor, tile_bytes,
                         implementation) -> torch.Tensor:
    """The op through the custom ops (differentiable, torch.compile-friendly): out [B, Cv, H, W]."""
    keys, values = list(keys), list(values)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, *keys, *values))
    out, _, _ = pyramid_attention_forward(
        query, keys, values, patch_size, softmax_scale, key_eps, fold_divisor, tile_bytes, implementation, needs_grad
    )
    return out
