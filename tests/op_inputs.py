"""Random inputs for the op, shared by the backend tests."""

import torch

from tri_panet.resize import level_size


def make_inputs(batch, cq, cv, query_size, level_sizes, *, dtype=torch.float32, seed=0, requires_grad=False):
    """(query, keys, values) with values ~ N(0, 1); keys/values share spatial sizes per level."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)

    query = rand(batch, cq, *query_size)
    keys = [rand(batch, cq, *s) for s in level_sizes]
    values = [rand(batch, cv, *s) for s in level_sizes]
    return query, keys, values


def pyramid_sizes(height, width, scales=(1.0, 0.9, 0.8, 0.7, 0.6)):
    """Level sizes the PANet block would produce: floor(H * s) x floor(W * s)."""
    return [level_size(height, width, s) for s in scales]


def cast(tensors, dtype):
    """(query, keys, values) converted to ``dtype``, detached."""
    query, keys, values = tensors
    return query.detach().to(dtype), [k.detach().to(dtype) for k in keys], [v.detach().to(dtype) for v in values]


def gradients(fn, query, keys, values, grad_out, **kw):
    """(out, dq, dks, dvs) of the op ``fn`` at fresh leaf copies of the inputs, for the upstream
    gradient ``grad_out``."""
    q = query.detach().requires_grad_()
    ks = [k.detach().requires_grad_() for k in keys]
    vs = [v.detach().requires_grad_() for v in values]
    out = fn(q, ks, vs, **kw)
    out.backward(grad_out)
    return out.detach(), q.grad, [k.grad for k in ks], [v.grad for v in vs]
