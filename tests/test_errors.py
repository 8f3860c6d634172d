"""Bad inputs raise TypeError/ValueError naming the argument, before any backend runs."""

import math

import pytest
import torch
from op_inputs import make_inputs

from tri_panet import pyramid_attention
from tri_panet.nn import PyramidAttention, build_pyramid


@pytest.fixture
def good():
    return make_inputs(2, 4, 3, (5, 6), [(5, 6), (4, 5)])


def _call(query, keys, values, **kwargs):
    return pyramid_attention(query, keys, values, **kwargs)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, k, v: (q, k, v[:1]), ValueError, "same number of levels"),
        (lambda q, k, v: (q, [], []), ValueError, "keys must hold at least one"),
        (lambda q, k, v: (q, k[0], v), TypeError, "keys must be a sequence"),
        (lambda q, k, v: (q, 5, v), TypeError, "keys must be a sequence"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, "query must be a torch.Tensor"),
        (lambda q, k, v: (q[0], k, v), ValueError, r"query must be 4-D"),
        (lambda q, k, v: (q, [k[0][0], k[1]], v), ValueError, r"keys\[0\] must be 4-D"),
        (lambda q, k, v: (q, k, [v[0], v[1][:1]]), ValueError, r"values\[1\] must have the batch size"),
        (lambda q, k, v: (q, [k[0], k[1][:, :3]], v), ValueError, r"keys\[1\] must have the channels of query"),
        (lambda q, k, v: (q, k, [v[0], v[1][:, :2]]), ValueError, r"values\[1\] must have the channels of values\[0\]"),
        (lambda q, k, v: (q, k, [v[0], v[1].double()]), TypeError, r"values\[1\] must have the dtype of query"),
        (lambda q, k, v: (q.int(), k, v), TypeError, "query must have a floating dtype"),
        (
            lambda q, k, v: (q, k, [v[0], v[1][:, :, :3]]),
            ValueError,
            r"keys\[1\] and values\[1\] must have the same spatial",
        ),
        (lambda q, k, v: (q[:, :, :0], k, v), ValueError, "query must not have an empty dimension"),
        (lambda q, k, v: (q, k, [v[0], v[1].to("meta")]), ValueError, r"values\[1\] must be on the device of query"),
    ],
)
def test_bad_tensors(good, mutate, error, match):
    with pytest.raises(error, match=match):
        _call(*mutate(*good))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(patch_size=2), ValueError, "patch_size must be a positive odd"),
        (dict(patch_size=0), ValueError, "patch_size must be a positive odd"),
        (dict(patch_size=-3), ValueError, "patch_size must be a positive odd"),
        (dict(patch_size=3.0), TypeError, "patch_size must be an int"),
        (dict(softmax_scale=0.0), ValueError, "softmax_scale must be finite and > 0"),
        (dict(softmax_scale=-1.0), ValueError, "softmax_scale must be finite and > 0"),
        (dict(softmax_scale=math.inf), ValueError, "softmax_scale must be finite and > 0"),
        (dict(softmax_scale=math.nan), ValueError, "softmax_scale must be finite and > 0"),
        (dict(softmax_scale="10"), TypeError, "softmax_scale must be a real number"),
        (dict(key_eps=0.0), ValueError, "key_eps must be finite and > 0"),
        (dict(key_eps=-1e-4), ValueError, "key_eps must be finite and > 0"),
        (dict(fold_divisor=0), ValueError, "fold_divisor must be finite and > 0"),
        (dict(fold_divisor=math.inf), ValueError, "fold_divisor must be finite and > 0"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(backend=None), TypeError, "backend must be a str"),
    ],
)
def test_bad_options(good, kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(*good, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(channels=64, reduction=3), ValueError, r"channels \(64\) must be divisible by reduction \(3\)"),
        (dict(channels=0), ValueError, "channels must be a positive int"),
        (dict(reduction=0), ValueError, "reduction must be a positive int"),
        (dict(scales=(1.0, 1.1)), ValueError, r"scales\[1\] must lie in \(0, 1\]"),
        (dict(scales=(1.0, 0.0)), ValueError, r"scales\[1\] must lie in \(0, 1\]"),
        (dict(scales=(1.0, -0.5)), ValueError, r"scales\[1\] must lie in \(0, 1\]"),
        (dict(scales=()), ValueError, "scales must hold at least one"),
        (dict(scales=0.5), TypeError, "scales must be a sequence"),
        (dict(patch_size=4), ValueError, "patch_size must be a positive odd"),
        (dict(softmax_scale=0), ValueError, "softmax_scale must be finite and > 0"),
        (dict(backend="nope"), ValueError, "backend must be one of"),
        (dict(res_scale="1"), TypeError, "res_scale must be a real number"),
    ],
)
def test_bad_block_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PyramidAttention(**kwargs)


def test_block_rejects_wrong_input():
    block = PyramidAttention(channels=8, backend="torch")
    with pytest.raises(ValueError, match=r"x must be a \[B, 8, H, W\] tensor, got \(1, 4, 6, 6\)"):
        block(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"x must be a \[B, 8, H, W\] tensor, got \(8, 6, 6\)"):
        block(torch.randn(8, 6, 6))


def test_pyramid_rejects_maps_too_small_for_a_scale():
    with pytest.raises(ValueError, match=r"too small for pyramid scale 0.6"):
        build_pyramid(torch.randn(1, 2, 1, 5), (1.0, 0.6))
