"""The naive reference against an explicit-loop definition of the op."""

import pytest
import torch
from brute_force import pyramid_attention_brute_force

from tri_panet.ops.reference import pyramid_attention_reference


def _inputs(batch, cq, cv, query_size, level_sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, cq, *query_size, generator=g, dtype=torch.float64)
    keys = [torch.randn(batch, cq, *s, generator=g, dtype=torch.float64) for s in level_sizes]
    values = [torch.randn(batch, cv, *s, generator=g, dtype=torch.float64) for s in level_sizes]
    return query, keys, values


@pytest.mark.parametrize(
    "query_size, level_sizes, patch_size",
    [
        ((1, 1), [(1, 1)], 3),
        ((3, 4), [(3, 4), (2, 3)], 3),
        ((5, 3), [(5, 3), (4, 2), (7, 6)], 3),  # a level larger than the query map
        ((4, 5), [(4, 5), (3, 3)], 1),
        ((4, 4), [(4, 4), (2, 2)], 5),
        ((2, 3), [(2, 3)], 5),  # patch larger than the map
    ],
)
def test_reference_matches_brute_force(query_size, level_sizes, patch_size):
    query, keys, values = _inputs(2, 3, 2, query_size, level_sizes)
    kwargs = dict(patch_size=patch_size, softmax_scale=2.5, key_eps=1e-4, fold_divisor=4.0)
    expected = pyramid_attention_brute_force(query, keys, values, **kwargs)
    got = pyramid_attention_reference(query, keys, values, **kwargs)
    assert got.shape == (2, 2, *query_size)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-10, atol=1e-10)


def test_reference_applies_key_floor_and_divisor():
    # All-zero keys: every normalised key patch is 0, so attention is uniform over all keys.
    query, keys, values = _inputs(1, 2, 2, (3, 3), [(3, 3), (2, 2)])
    keys = [torch.zeros_like(k) for k in keys]
    kwargs = dict(patch_size=3, softmax_scale=10.0, key_eps=0.5, fold_divisor=2.0)
    expected = pyramid_attention_brute_force(query, keys, values, **kwargs)
    torch.testing.assert_close(pyramid_attention_reference(query, keys, values, **kwargs), torch.from_numpy(expected))
    # Small keys under the floor are divided by key_eps, not by their norm.
    keys = [1e-3 * torch.randn_like(k) for k in keys]
    expected = pyramid_attention_brute_force(query, keys, values, **kwargs)
    torch.testing.assert_close(pyramid_attention_reference(query, keys, values, **kwargs), torch.from_numpy(expected))


def test_reference_half_precision_returns_input_dtype():
    query, keys, values = _inputs(1, 4, 3, (5, 5), [(5, 5), (4, 4)])
    for dtype in (torch.float16, torch.bfloat16):
        args = (query.to(dtype), [k.to(dtype) for k in keys], [v.to(dtype) for v in values])
        out = pyramid_attention_reference(*args)
        assert out.dtype == dtype
        expected = pyramid_attention_reference(
            *(a.double() if torch.is_tensor(a) else [t.double() for t in a] for a in args)
        )
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-2 * expected.abs().max().item())


def test_reference_gradients_are_finite_at_zero_key_patches():
    # sqrt(sum(x^2)) has a 0/0 gradient at zero patches; the spec says the floor passes no gradient.
    query, keys, values = _inputs(1, 2, 2, (3, 3), [(3, 3)])
    keys = [torch.zeros_like(keys[0]).requires_grad_()]
    pyramid_attention_reference(query, keys, values).sum().backward()
    assert torch.isfinite(keys[0].grad).all()
