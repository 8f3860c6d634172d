"""Tests of the benchmark harness in bench/: the SDPA alternative against the naive reference,
the case counts, the runners, the memory measurement and the report command (all tiny)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tri_panet.nn import build_pyramid
from tri_panet.ops import available_backends
from tri_panet.ops.reference import pyramid_attention_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/ is scripts, not a package
import accuracy  # noqa: E402
import harness  # noqa: E402
import memory  # noqa: E402
import report  # noqa: E402
import sdpa  # noqa: E402


def random_inputs(batch, cq, cv, size, level_sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()

    return (
        rand(batch, cq, *size),
        [rand(batch, cq, *s) for s in level_sizes],
        [rand(batch, cv, *s) for s in level_sizes],
    )


CONFIGS = [
    # batch, Cq, Cv, query size, level sizes, patch size
    (2, 5, 7, (9, 11), [(9, 11), (6, 4), (13, 12)], 3),
    (1, 3, 2, (1, 1), [(1, 1), (2, 3)], 1),
    (1, 4, 6, (7, 5), [(7, 5), (3, 3)], 5),
    (2, 32, 64, (8, 8), [(8, 8), (7, 7), (6, 6), (5, 5), (4, 4)], 3),  # PANet widths
]


@pytest.mark.parametrize("pad_qk", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"b{c[0]}-k{c[5]}-{c[3][0]}x{c[3][1]}")
def test_sdpa_alternative_matches_reference(config, pad_qk):
    batch, cq, cv, size, levels, k = config
    options = dict(patch_size=k, softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0)
    # float32 forward within 1e-4 of the reference
    q, ks, vs = random_inputs(batch, cq, cv, size, levels, torch.float32)
    out = sdpa.pyramid_attention_sdpa(q, ks, vs, pad_qk=pad_qk, **options)
    expected = pyramid_attention_reference(q, ks, vs, **options)
    assert out.shape == (batch, cv, *size)
    assert (out - expected).abs().max() <= 1e-4
    # float64 gradients of every input agree with the reference's autograd gradients
    q, ks, vs = random_inputs(batch, cq, cv, size, levels, torch.float64, seed=1)
    grad = torch.randn(batch, cv, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    leaves = [q, *ks, *vs]
    got = torch.autograd.grad(sdpa.pyramid_attention_sdpa(q, ks, vs, pad_qk=pad_qk, **options), leaves, grad)
    want = torch.autograd.grad(pyramid_attention_reference(q, ks, vs, **options), leaves, grad)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-9)


def test_panet_numbers():
    assert (harness.D_QK, harness.D_V, harness.FLOPS_PER_PAIR) == (288, 576, 1728)
    # SPEC section 4: a 48x48 patch has 7,470 keys over 5 levels.
    assert harness.query_key_pairs(48) == (2304, 7470)
    assert harness.case_flops(48, True) == pytest.approx(3.5 * harness.case_flops(48, False))
    assert harness.case_flops(48, False) == 2304 * 7470 * 1728
    for size in (8, 13, 32):
        real = build_pyramid(torch.zeros(1, 1, size, size), harness.SCALES)
        assert harness.level_sizes(size) == [tuple(x.shape[2:]) for x in real]


def test_memory_estimate_orders_implementations():
    ref = memory.estimated_peak_bytes(harness.Case("reference", "block", 96))
    torch_path = memory.estimated_peak_bytes(harness.Case("torch", "block", 96))
    assert torch_path * 8 < ref
    # SPEC section 4: the naive block takes about 3.7 GB at 96x96
    assert 3e9 < ref < 5e9
    assert memory.estimated_peak_bytes(harness.Case("reference", "block", 192, backward=True)) > 20e9


@pytest.fixture
def private_registry():
    """The harness runs the SDPA alternatives itself: the library's backend table stays as it was."""
    before = available_backends()
    yield
    assert available_backends() == before


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("kind", harness.KINDS)
def test_runners_agree_with_the_float64_oracle(kind, backward, private_registry):
    truth, label = accuracy.oracle(kind, 9, backward, "cpu", budget_bytes=10**9)
    assert label == "reference float64"
    for impl in ("reference", "torch", "sdpa", "sdpa_pad"):
        results = harness.build_runner(harness.Case(impl, kind, 9, "float32", backward))()
        assert [r.shape for r in results] == [t.shape for t in truth]
        abs_err, rel_err = accuracy.max_errors(results, truth)
        assert rel_err < 1e-5, (impl, abs_err, rel_err)
    bf16 = harness.build_runner(harness.Case("torch", kind, 9, "bfloat16", backward))()
    assert all(r.dtype == torch.bfloat16 for r in bf16)
    assert accuracy.max_errors(bf16, truth)[1] < 0.1


def test_oracle_falls_back_to_the_torch_backend():
    truth, label = accuracy.oracle("op", 8, False, "cpu", budget_bytes=1)
    assert label == "torch float64"
    expected, _ = accuracy.oracle("op", 8, False, "cpu", budget_bytes=10**9)
    torch.testing.assert_close(truth[0], expected[0], rtol=0, atol=1e-10)


def test_measure_peak_rss_sees_an_allocation():
    def allocate():
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        return float(x.sum())

    peak, method = memory.measure_peak_rss(allocate)
    assert 60 * 2**20 < peak < 200 * 2**20, (peak, method)


def test_memory_child_measures_a_case():
    naive = memory.measure_case_memory(harness.Case("reference", "op", 32))
    assert "error" not in naive, naive
    # the naive op holds about 3 [1024 queries, 3278 keys] float32 score matrices (13 MB each)
    n_q, n_k = harness.query_key_pairs(32)
    assert 2 * n_q * n_k * 4 < naive["peak_bytes"] < 10 * n_q * n_k * 4


def test_report_command_writes_one_table(tmp_path, capsys, private_registry):
    out = tmp_path / "report.txt"
    argv = [
        "--device",
        "cpu",
        "--sizes",
        "8",
        "--impls",
        "torch",
        "sdpa",
        "reference",
        "--kinds",
        "op",
        "--backward",
        "--dtype",
        "float32",
        "bfloat16",
        "--matmul-size",
        "64",
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--no-memory",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    threads = torch.get_num_threads()
    assert report.main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads does not leak out of the run
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert "GFLOP/s" in printed and "machine matmul" in printed and "bfloat16" in printed
    raw = json.loads(out.with_suffix(".json").read_text())
    assert len(raw["rows"]) == 2 * 2 * 3  # passes x dtypes x impls
    for row in raw["rows"]:
        assert row["time"] > 0 and math.isfinite(row["flop_rate"]) and row["matmul_share"] > 0
        assert row["rel_err"] < (1e-5 if row["case"]["dtype"] == "float32" else 0.1)
        assert row["oracle"] == "reference float64"
    with pytest.raises(FileExistsError):  # never overwrite a stored result
        report.main(argv)


def test_cases_over_the_memory_budget_are_skipped():
    args = report._parse_args(["--device", "cpu", "--no-memory", "--no-errors"])
    row = report._run_case(harness.Case("reference", "block", 96), args, budget=10**9, truth=None, matmul=1e11)
    assert row["note"].startswith("skipped: needs ~4") and "time" not in row


def test_tiny_config_op_runners_agree_with_the_oracle(private_registry):
    """The tiny models' block (Cq 16, Cv 32): op runners against the float64 oracle, fwd and fwd+bwd."""
    cfg = harness.OP_CONFIGS["tiny"]
    assert (cfg.query_channels, cfg.channels, cfg.d_qk, cfg.d_v, cfg.flops_per_pair) == (16, 32, 144, 288, 864)
    assert harness.case_flops(48, False, "tiny") == 2304 * 7470 * 864
    for backward in (False, True):
        truth, _ = accuracy.oracle("op", 9, backward, "cpu", budget_bytes=10**9, config="tiny")
        for impl in ("reference", "torch"):
            case = harness.Case(impl, "op", 9, backward=backward, config="tiny")
            assert case.name.startswith("tiny-op-")
            results = harness.build_runner(case)()
            assert results[0].shape[1] == (16 if backward else 32)  # grad of the query / the output
            assert accuracy.max_errors(results, truth)[1] < 1e-5


def test_tiny_models_and_training_defaults():
    names = harness.tiny_models()
    assert "tiny-denoise" in names and "fast-sr-x4" in names
    assert all(n.startswith(("tiny-", "fast-")) for n in names)  # not the published panet-/paedsr-
    from tri_panet.training import TrainConfig

    assert harness.training_defaults() == (TrainConfig().patch_size, TrainConfig().batch_size)


@pytest.mark.parametrize("name", ["tiny-denoise", "fast-sr-x2"])
def test_model_runners_run_once(name):
    """train_step returns the step's loss; restore uses the CLI's default tiling and gives the output size."""
    step = harness.build_model_runner(harness.ModelCase(name, "train_step", 16, 2))
    assert step().dim() == 0
    case = harness.ModelCase(name, "restore", 24)
    run = harness.build_model_runner(case)
    flag_default = report_default_tile()
    assert run.tiling["flag"] == flag_default and run.tiling["tile_overlap"] >= 0
    out = run()
    assert out.shape[-1] == 24 * case.scale and case.output_pixels == (24 * case.scale) ** 2
    assert harness.tiling_label(run.tiling).startswith("--tile ")


def report_default_tile():
    """The --tile default of ``tri-panet restore`` (what the harness must have read, not copied)."""
    from tri_panet.cli import build_parser

    return build_parser().parse_args(["restore", "a.png", "-o", "b.png"]).tile


def test_report_model_kinds(tmp_path, capsys):
    out = tmp_path / "models.txt"
    argv = [
        "--device",
        "cpu",
        "--kinds",
        "train_step",
        "restore",
        "--models",
        "fast-denoise",
        "--patch",
        "16",
        "--batch",
        "2",
        "--restore-size",
        "24",
        "--matmul-size",
        "64",
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert report.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert "torch.get_num_threads() = 1" in printed and "load average" in printed and "img/s" in printed
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["rows"] == [] and raw["threads"] == 1
    step, rest = raw["model_rows"]
    assert step["case"]["kind"] == "train_step" and step["images_per_s"] > 0
    assert rest["case"]["kind"] == "restore" and rest["s_per_mpx"] > 0 and "--tile" in rest["note"]
    with pytest.raises(SystemExit):  # only the registered tiny models
        report._parse_args(["--kinds", "train_step", "--models", "panet-denoise"])
