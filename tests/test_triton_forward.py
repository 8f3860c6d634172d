"""The triton backend's forward against the naive reference (Triton interpreter on CPU).

tests/conftest.py sets TRITON_INTERPRET=1 when there is no GPU, so these run the real
kernels through Triton's interpreter. Every program instance costs ~1 ms there: sizes stay
tiny but ragged (not multiples of the blocks), and cover 1-5 levels, levels larger than the
query map, patch sizes 1/3/5, odd channel counts and batch 2.
"""

import pytest
import torch

pytest.importorskip("triton")

from op_inputs import make_inputs  # noqa: E402

from tri_panet import pyramid_attention  # noqa: E402
from tri_panet.ops import available_backends, resolve_backend  # noqa: E402
from tri_panet.ops import triton_configs as tb  # noqa: E402
from tri_panet.ops.reference import pyramid_attention_reference  # noqa: E402
from tri_panet.ops.torch_tiled import forward as tiled_forward  # noqa: E402
from tri_panet.ops.triton_launcher import forward as triton_forward  # noqa: E402
from tri_panet.ops.triton_launcher import pyramid_attention_triton

needs_interpreter = pytest.mark.skipif(not tb.interpreting(), reason="needs TRITON_INTERPRET=1 (CPU tests)")

OPTS = dict(softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)


def reference_lse(query, keys, values, patch_size, **opts):
    _, lse = tiled_forward(
        query.double(),
        [k.double() for k in keys],
        [v.double() for v in values],
        patch_size=patch_size,
        tile_bytes=2**20,
        **opts,
    )
    return lse


# (batch, Cq, Cv, query size, level sizes, patch size)
CASES = [
    pytest.param(2, 5, 3, (5, 7), [(5, 7), (4, 6)], 3, id="b2-5x7-2lv-k3"),
    pytest.param(1, 17, 17, (11, 13), [(11, 13), (13, 15), (8, 10)], 3, id="11x13-bigger-level-k3-2slices"),
    pytest.param(1, 3, 5, (1, 1), [(1, 1), (3, 2)], 5, id="1x1-k5"),
    pytest.param(2, 16, 33, (6, 6), [(6, 6)], 1, id="b2-1lv-k1"),
    pytest.param(1, 8, 4, (9, 10), [(9, 10), (8, 9), (7, 8), (6, 7), (5, 6)], 3, id="5lv-k3"),
    pytest.param(1, 4, 6, (6, 5), [(7, 6), (3, 3)], 5, id="k5-bigger-level"),
]


@needs_interpreter
@pytest.mark.parametrize("batch, cq, cv, size, levels, k", CASES)
def test_forward_fp32_matches_reference(batch, cq, cv, size, levels, k):
    q, ks, vs = make_inputs(batch, cq, cv, size, levels)
    out, lse, _ = triton_forward(q, ks, vs, patch_size=k, **OPTS)
    ref = pyramid_attention_reference(
        q.double(), [x.double() for x in ks], [x.double() for x in vs], patch_size=k, **OPTS
    )
    assert out.dtype == torch.float32 and out.shape == (batch, cv, *size)
    assert (out.double() - ref).abs().max().item() <= 1e-4
    # the saved statistics follow tiled_forward's convention exactly (natural log)
    assert lse.dtype == torch.float32 and lse.shape == (batch, size[0] * size[1])
    torch.testing.assert_close(lse.double(), reference_lse(q, ks, vs, k, **OPTS), atol=1e-4, rtol=1e-6)


@needs_interpreter
@pytest.mark.parametrize(
    "batch, cq, cv, size, levels, k",
    [
        pytest.param(2, 5, 3, (5, 7), [(5, 7), (4, 6)], 3, id="b2-5x7"),
        pytest.param(1, 17, 20, (7, 9), [(7, 9), (9, 11), (4, 5)], 3, id="7x9-3lv"),
        pytest.param(1, 3, 5, (3, 4), [(3, 4)], 5, id="k5"),
    ],
)
def test_forward_fp16_within_tolerance(batch, cq, cv, size, levels, k):
    q, ks, vs = make_inputs(batch, cq, cv, size, levels, dtype=torch.float16, seed=1)
    out = pyramid_attention_triton(q, ks, vs, patch_size=k, **OPTS)
    ref = pyramid_attention_reference(q.float(), [x.float() for x in ks], [x.float() for x in vs], patch_size=k, **OPTS)
    assert out.dtype == torch.float16
    assert (out.float() - ref).abs().max().item() <= 2e-2 * ref.abs().max().item()


@needs_interpreter
def test_small_blocks_many_programs(monkeypatch):
    """16 x 16 blocks: several query programs meet in the atomic fold, several ragged key blocks per level."""
    monkeypatch.setattr(tb, "INTERPRET_CONFIG", (16, 16, 4, 1))
    q, ks, vs = make_inputs(2, 6, 7, (5, 7), [(5, 7), (4, 5)], seed=2)
    out, lse, _ = triton_forward(q, ks, vs, patch_size=3, **OPTS)
    ref = pyramid_attention_reference(q, ks, vs, patch_size=3, **OPTS)
    assert (out - ref).abs().max().item() <= 1e-4
    torch.testing.assert_close(lse.double(), reference_lse(q, ks, vs, 3, **OPTS), atol=1e-4, rtol=1e-6)


@needs_interpreter
def test_options_and_key_norm_floor():
    """Other scale/eps/divisor, all-zero key patches (norm floor) and non-contiguous inputs."""
    q, ks, vs = make_inputs(1, 5, 3, (6, 5), [(6, 5), (4, 4)], seed=3)
    ks[0][..., :3, :] = 0.0  # whole key patches of zeros: their norm is floored at key_eps
    ks[1] = ks[1] * 1e-6  # tiny keys: the floor is active, the scores stay tiny
    q = q.to(memory_format=torch.channels_last)
    opts = dict(softmax_scale=3.0, key_eps=1e-3, fold_divisor=2.5)
    out = pyramid_attention_triton(q, ks, vs, patch_size=3, **opts)
    ref = pyramid_attention_reference(q, ks, vs, patch_size=3, **opts)
    assert (out - ref).abs().max().item() <= 1e-4


@needs_interpreter
def test_public_api_and_dispatch():
    assert "triton" in available_backends()
    q, ks, vs = make_inputs(1, 4, 3, (4, 5), [(4, 5), (3, 4)], seed=4)
    out = pyramid_attention(q, ks, vs, patch_size=3, backend="triton")
    ref = pyramid_attention(q, ks, vs, patch_size=3, backend="torch")
    assert (out - ref).abs().max().item() <= 1e-4
    assert resolve_backend("auto", q) == "torch"  # "auto" never picks triton for CPU tensors


@needs_interpreter
def test_float64_falls_back_to_torch():
    q, ks, vs = make_inputs(1, 3, 2, (3, 4), [(3, 4)], dtype=torch.float64, seed=5)
    out = pyramid_attention_triton(q, ks, vs, patch_size=3, **OPTS)
    ref = pyramid_attention_reference(q, ks, vs, patch_size=3, **OPTS)
    assert out.dtype == torch.float64
    assert (out - ref).abs().max().item() <= 1e-10


def test_cpu_tensors_refused_without_interpreter(monkeypatch):
    monkeypatch.setattr(tb, "INTERPRETING", False)  # the mode is fixed at import: patch the record
    q, ks, vs = make_inputs(1, 3, 2, (3, 4), [(3, 4)])
    with pytest.raises(ValueError, match="CUDA"):
        pyramid_attention(q, ks, vs, backend="triton")


def test_value_split_heuristic():
    # PANet (Cv = 64, 3x3): 2 slices of 32 channels on sm90 fp16, 4 of 16 on sm80
    assert tb.value_block(64, 3, tb.VALUE_COLUMNS["sm90"][2]) == 32
    assert tb.value_block(64, 3, tb.VALUE_COLUMNS["sm80"][2]) == 16
    # PA-EDSR (Cv = 256): split, never wider than the cap; odd channels pad to >= 16
    assert 9 * tb.value_block(256, 3, 288) <= 288
    assert tb.value_block(3, 3, 144) == 16
    assert tb.value_block(17, 1, 144) == 32
    assert tb.value_block(64, 5, 144) == 16  # never below 16 (tl.dot needs it)
    assert tb.padded_channels(17) == 32 and tb.padded_channels(5) == 16 and tb.padded_channels(64) == 64
    for fam in tb.FAMILIES:
        assert tb.GPU_CONFIGS[fam] and tb.VALUE_COLUMNS[fam]


def test_int32_guard_counts_only_int32_index_arithmetic():
    """The bound is positions (plus a block) and one output slice, not positions x k*k x channels:
    a whole 1080p PANet frame (6.84 M keys) and an 8K one fit; 2^31 positions do not."""
    from op_inputs import pyramid_sizes

    from tri_panet.ops import triton_launcher

    def keys(height, width):
        return sum(h * w for h, w in pyramid_sizes(height, width))

    assert keys(1080, 1920) == 6_842_880
    panet_block = tb.value_block(64, 3, tb.VALUE_COLUMNS["sm90"][2])  # 32 value channels per program
    for height, width in [(1080, 1920), (2160, 3840), (4320, 7680)]:
        queries = height * width
        assert triton_launcher.int32_index_bound(queries, keys(height, width), panet_block) < 2**31
        triton_launcher.check_index_range(queries, keys(height, width), panet_block)  # no error
    assert triton_launcher.int32_index_bound(1000, 5000, 32) == max(5000 + tb.LARGEST_BLOCK, 32 * 1000)
    with pytest.raises(ValueError, match="int32 indexing"):
        triton_launcher.check_index_range(2**31 - 10, 100, 1)  # positions themselves
    with pytest.raises(ValueError, match="int32 indexing"):
        triton_launcher.check_index_range(7680 * 4320, keys(4320, 7680), 128)  # a 128-channel output slice at 8K


def test_interpreter_mode_is_fixed_at_import(monkeypatch):
    """Triton decides interpreter or GPU when the kernels are decorated; changing the variable
    afterwards must not change what the launcher believes."""
    before = tb.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "0" if before else "1")
    assert tb.interpreting() == before


class _LaunchRecorder:
    """Stands in for a kernel: records the arguments of every launch, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


@needs_interpreter
def test_inference_forward_passes_no_output_buffer_as_o(monkeypatch):
    """Without STORE_O the kernel gets an empty O, never the output it accumulates into."""
    from tri_panet.ops import triton_launcher

    recorder = _LaunchRecorder(triton_launcher.pyramid_fwd_kernel)
    monkeypatch.setattr(triton_launcher, "pyramid_fwd_kernel", recorder)
    q, ks, vs = make_inputs(1, 3, 4, (3, 4), [(3, 4)])
    out, _, _ = triton_forward(q, ks, vs, patch_size=3, **OPTS)
    ((args, kwargs),) = recorder.launches
    out_arg, o_arg = args[5], args[7]
    assert kwargs["STORE_O"] is False
    assert o_arg.numel() == 0 and o_arg.data_ptr() != out_arg.data_ptr()
    assert (out - pyramid_attention_reference(q, ks, vs, patch_size=3, **OPTS)).abs().max().item() <= 1e-4


def test_forward_tuning_is_kept_per_problem_size():
    """The autotuner's choice at one size is not reused at a very different one (more query
    programs, longer key loops), while nearby sizes share one tuning."""
    train = tb.size_class(16, 48 * 48, 7470)  # a PANet training batch
    frame = tb.size_class(1, 512 * 512, 865_000)  # one large image
    assert train != frame != tb.size_class(1, 48 * 48, 7470)  # the batch counts too
    assert tb.size_class(1, 500 * 500, 830_000) == frame
    assert tb.forward_autotuner("sm90", train) is not tb.forward_autotuner("sm90", frame)
    assert tb.forward_autotuner("sm90", frame) is tb.forward_autotuner("sm90", tb.size_class(1, 500 * 500, 830_000))
