"""Random configurations (hypothesis): the torch backend agrees with the reference everywhere."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_inputs import make_inputs

from tri_panet.ops.reference import pyramid_attention_reference
from tri_panet.ops.torch_tiled import pyramid_attention_torch

sizes = st.tuples(st.integers(1, 9), st.integers(1, 9))


@st.composite
def configs(draw):
    return dict(
        batch=draw(st.integers(1, 3)),
        cq=draw(st.sampled_from([1, 2, 3, 5, 7])),
        cv=draw(st.sampled_from([1, 3, 6])),
        query_size=draw(sizes),
        level_sizes=draw(st.lists(sizes, min_size=1, max_size=6)),
        patch_size=draw(st.sampled_from([1, 3, 5])),
        softmax_scale=draw(st.sampled_from([0.5, 10.0, 30.0])),
        tile_bytes=draw(st.sampled_from([1, 5000, 40000, None])),  # 1 query per tile .. the whole image
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(configs())
def test_torch_backend_matches_reference(cfg):
    query, keys, values = make_inputs(
        cfg["batch"],
        cfg["cq"],
        cfg["cv"],
        cfg["query_size"],
        cfg["level_sizes"],
        dtype=torch.float64,
        seed=cfg["seed"],
        requires_grad=True,
    )
    options = dict(patch_size=cfg["patch_size"], softmax_scale=cfg["softmax_scale"])
    flat = (query, *keys, *values)
    grad_out = torch.randn(cfg["batch"], cfg["cv"], *cfg["query_size"], dtype=torch.float64)

    out = pyramid_attention_torch(query, keys, values, tile_bytes=cfg["tile_bytes"], **options)
    grads = torch.autograd.grad(out, flat, grad_out)
    ref = pyramid_attention_reference(query, keys, values, **options)
    ref_grads = torch.autograd.grad(ref, flat, grad_out)

    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    for g, e in zip(grads, ref_grads):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-7)
