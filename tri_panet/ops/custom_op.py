"""The factory that turns one implementation of the op into ``torch.library`` custom ops.

``torch.compile`` then sees the op as one opaque node (forward) and one more for its backward,
with fake (shape-only) versions for tracing, and autograd connects the two. Each
implementation gets its own pair of ops with its own schema:
``tri_panet::<name>_pyramid_attention_forward`` and ``tri_panet::<name>_pyramid_attention_backward``.

An implementation is two plain functions with this interface (``options`` are the
implementation's own arguments, e.g. the torch path's ``tile_bytes``):

    forward(query, keys, values, *, patch_size, softmax_scale, key_eps, fold_divisor, **options)
        -> (out [B, Cv, H, W] in query's dtype, lse [B, H*W])
    backward(grad_out, query, keys, values, lse, *, patch_size, softmax_scale, key_eps,
             fold_divisor, **options)
        -> (grad_query, grad_keys: list, grad_values: list), each shaped and typed like its input

``lse`` is the natural-log sum over all keys of exp(softmax_scale * <q, k^>) per query, float32
(float64 for float64 inputs): what a backward needs to rebuild the attention weights tile by
tile. Implementations share this convention, so one's forward could feed another's backward.

An implementation that keeps extra state for its backward (the Triton one keeps the unfolded
output, FlashAttention's O) passes ``state_shape(query, values, patch_size) -> shape``: its
forward then also takes ``save_state: bool`` and returns (out, lse, state), state of that shape
when saved and empty otherwise, and its backward takes ``state=`` (empty when not saved). The
fake allocates ``state_shape(...)``, so the implementation must allocate its state with the
same function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: Arguments every implementation takes, in schema order: the maps, then the scalars.
_TENSORS = "Tensor query, Tensor[] keys, Tensor[] values"
_SCALARS = "int patch_size, float softmax_scale, float key_eps, float fold_divisor"
_COMMON_NAMES = ("patch_size", "softmax_scale", "key_eps", "fold_divisor")
_SCHEMA_TYPES = {int: "int", float: "float", bool: "bool"}


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved log-sum-exp for inputs of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class PyramidAttentionOp:
    """The custom ops of one implementation; calling it runs the op (differentiable).

    ``forward_op`` / ``backward_op`` are the registered ``torch.library`` ops (for
    ``torch.library.opcheck`` and ``torch.ops.tri_panet.*``).
    """

    def __init__(self, name: str, forward_op, backward_op, option_names: tuple[str, ...], saves_state: bool) -> None:
        self.name = name
        self.forward_op = forward_op
        self.backward_op = backward_op
        self.option_names = option_names
        self.saves_state = saves_state

    def __call__(self, query, keys, values, *, patch_size, softmax_scale, key_eps, fold_divisor, **options):
        """query [B, Cq, H, W], keys / values: L maps [B, Cq or Cv, H_l, W_l] -> out [B, Cv, H, W].

        Arguments are not validated here (``tri_panet.ops.pyramid_attention`` does that);
        ``options`` are exactly the implementation's declared options.
        """
        if set(options) != set(self.option_names):
            raise TypeError(
                f"the {self.name!r} implementation takes the options {self.option_names}, got {tuple(options)}"
            )
        keys, values = list(keys), list(values)
        args = [query, keys, values, patch_size, softmax_scale, key_eps, fold_divisor]
        args += [options[name] for name in self.option_names]
        if self.saves_state:
            # Keep the state only when a backward will run.
            args.append(torch.is_grad_enabled() and any(t.requires_grad for t in (query, *keys, *values)))
        return self.forward_op(*args)[0]


def define_op(
    name: str,
    forward: Callable,
    backward: Callable,
    *,
    options: Sequence[tuple[str, type]] = (),
    state_shape: Callable | None = None,
) -> PyramidAttentionOp:
    """Register ``forward`` / ``backward`` (the interface in this module's docstring) as the
    custom ops ``tri_panet::<name>_pyramid_attention_forward`` / ``..._backward``, with fakes
    and autograd.

    ``options``: (name, int | float | bool) of the implementation's own arguments, appended to
    the schema after the common ones. ``state_shape``: see the module docstring.
    """
    option_names = tuple(n for n, _ in options)
    option_schema = "".join(f", {_SCHEMA_TYPES[t]} {n}" for n, t in options)
    saves_state = state_shape is not None
    n_scalars = len(_COMMON_NAMES) + len(option_names)  # after (query, keys, values); save_state not counted

    def keywords(scalars: Sequence) -> dict:
        return dict(zip(_COMMON_NAMES + option_names, scalars))

    # The compiler lays out later kernels from the fakes' strides: real outputs and fakes are
    # all contiguous.

    # ---- forward: (query, keys, values, *scalars[, save_state]) -> (out, lse[, state]) ----
    def forward_kernel(query, keys, values, *scalars):
        if saves_state:
            *scalars, save_state = scalars
            out, lse, state = forward(query, keys, values, save_state=save_state, **keywords(scalars))
            return out.contiguous(), lse.contiguous(), state.contiguous()
        out, lse = forward(query, keys, values, **keywords(scalars))
        return out.contiguous(), lse.contiguous()

    def forward_fake(query, keys, values, patch_size, *scalars):
        batch, _, height, width = query.shape
        out = query.new_empty(batch, values[0].shape[1], height, width)
        lse = query.new_empty(batch, height * width, dtype=lse_dtype(query.dtype))
        if not saves_state:
            return out, lse
        return out, lse, query.new_empty(state_shape(query, values, patch_size) if scalars[-1] else (0,))

    forward_op = torch.library.custom_op(
        f"tri_panet::{name}_pyramid_attention_forward",
        forward_kernel,
        mutates_args=(),
        schema=f"({_TENSORS}, {_SCALARS}{option_schema}{', bool save_state' if saves_state else ''})"
        f" -> (Tensor, Tensor{', Tensor' if saves_state else ''})",
    )
    forward_op.register_fake(forward_fake)

    # ---- backward: (grad_out, query, keys, values, lse[, state], *scalars) -> [grads] ----
    def backward_kernel(grad_out, query, keys, values, lse, *rest):
        if saves_state:
            state, *rest = rest
            grads = backward(grad_out, query, keys, values, lse, state=state, **keywords(rest))
        else:
            grads = backward(grad_out, query, keys, values, lse, **keywords(rest))
        grad_query, grad_keys, grad_values = grads
        return [g.contiguous() for g in (grad_query, *grad_keys, *grad_values)]

    def backward_fake(grad_out, query, keys, values, *rest):
        return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (query, *keys, *values)]

    backward_op = torch.library.custom_op(
        f"tri_panet::{name}_pyramid_attention_backward",
        backward_kernel,
        mutates_args=(),
        schema=f"(Tensor grad_out, {_TENSORS}, Tensor lse{', Tensor state' if saves_state else ''}, {_SCALARS}"
        f"{option_schema}) -> Tensor[]",
    )
    backward_op.register_fake(backward_fake)

    # ---- autograd: the forward op's gradient is the backward op ----
    def setup_context(ctx, inputs, output):
        query, keys, values, *scalars = inputs
        state = output[2] if saves_state else query.new_empty(0)
        ctx.save_for_backward(query, output[1], state, *keys, *values)
        ctx.n_levels, ctx.scalars = len(keys), scalars[:n_scalars]

    def autograd_backward(ctx, grad_out, *_unused_grads):
        query, lse, state, *levels = ctx.saved_tensors
        n = ctx.n_levels
        keys, values = list(levels[:n]), list(levels[n:])
        extra = [state] if saves_state else []
        grads = backward_op(grad_out.contiguous(), query, keys, values, lse, *extra, *ctx.scalars)
        not_differentiable = [None] * (n_scalars + saves_state)
        return (grads[0], grads[1 : 1 + n], grads[1 + n :], *not_differentiable)

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)
    return PyramidAttentionOp(name, forward_op, backward_op, option_names, saves_state)
