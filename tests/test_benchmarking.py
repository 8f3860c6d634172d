"""Tests of tri_panet.benchmarking: the SDPA alternative against the naive reference, the
case counts, the runners, the memory measurement and the report command (all tiny)."""

import json
import math

import pytest
import torch

from tri_panet import benchmarking as B
from tri_panet import functional
from tri_panet.nn import build_pyramid
from tri_panet.reference import pyramid_attention_reference


def random_inputs(batch, cq, cv, size, level_sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()

    return rand(batch, cq, *size), [rand(batch, cq, *s) for s in level_sizes], [rand(batch, cv, *s) for s in level_sizes]


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
    out = B.pyramid_attention_sdpa(q, ks, vs, pad_qk=pad_qk, **options)
    expected = pyramid_attention_reference(q, ks, vs, **options)
    assert out.shape == (batch, cv, *size)
    assert (out - expected).abs().max() <= 1e-4
    # float64 gradients of every input agree with the reference's autograd gradients
    q, ks, vs = random_inputs(batch, cq, cv, size, levels, torch.float64, seed=1)
    grad = torch.randn(batch, cv, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    leaves = [q, *ks, *vs]
    got = torch.autograd.grad(B.pyramid_attention_sdpa(q, ks, vs, pad_qk=pad_qk, **options), leaves, grad)
    want = torch.autograd.grad(pyramid_attention_reference(q, ks, vs, **options), leaves, grad)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-9)


def test_panet_numbers():
    assert (B.D_QK, B.D_V, B.FLOPS_PER_PAIR) == (288, 576, 1728)
    # SPEC section 4: a 48x48 patch has 7,470 keys over 5 levels.
    assert B.query_key_pairs(48) == (2304, 7470)
    assert B.case_flops(48, True) == pytest.approx(3.5 * B.case_flops(48, False))
    assert B.case_flops(48, False) == 2304 * 7470 * 1728
    for size in (8, 13, 32):
        real = build_pyramid(torch.zeros(1, 1, size, size), B.SCALES)
        assert B.level_sizes(size) == [tuple(x.shape[2:]) for x in real]


def test_memory_estimate_orders_implementations():
    ref = B.estimated_peak_bytes(B.Case("reference", "block", 96))
    torch_path = B.estimated_peak_bytes(B.Case("torch", "block", 96))
    assert torch_path * 8 < ref
    # SPEC section 4: the naive block takes about 3.7 GB at 96x96
    assert 3e9 < ref < 5e9
    assert B.estimated_peak_bytes(B.Case("reference", "block", 192, backward=True)) > 20e9


@pytest.fixture
def private_registry(monkeypatch):
    """The block cases register the SDPA alternatives: keep that out of the real registry."""
    monkeypatch.setattr(functional, "_BACKENDS", dict(functional._BACKENDS))


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("kind", B.KINDS)
def test_runners_agree_with_the_float64_oracle(kind, backward, private_registry):
    truth, label = B.oracle(kind, 9, backward, "cpu", budget_bytes=10**9)
    assert label == "reference float64"
    for impl in ("reference", "torch", "sdpa", "sdpa_pad"):
        results = B.build_runner(B.Case(impl, kind, 9, "float32", backward))()
        assert [r.shape for r in results] == [t.shape for t in truth]
        abs_err, rel_err = B.max_errors(results, truth)
        assert rel_err < 1e-5, (impl, abs_err, rel_err)
    bf16 = B.build_runner(B.Case("torch", kind, 9, "bfloat16", backward))()
    assert all(r.dtype == torch.bfloat16 for r in bf16)
    assert B.max_errors(bf16, truth)[1] < 0.1


def test_oracle_falls_back_to_the_torch_backend():
    truth, label = B.oracle("op", 8, False, "cpu", budget_bytes=1)
    assert label == "torch float64"
    expected, _ = B.oracle("op", 8, False, "cpu", budget_bytes=10**9)
    torch.testing.assert_close(truth[0], expected[0], rtol=0, atol=1e-10)


def test_measure_peak_rss_sees_an_allocation():
    def allocate():
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        return float(x.sum())

    peak, method = B.measure_peak_rss(allocate)
    assert 60 * 2**20 < peak < 200 * 2**20, (peak, method)


def test_memory_child_measures_a_case():
    naive = B.measure_case_memory(B.Case("reference", "op", 32))
    assert "error" not in naive, naive
    # the naive op holds about 3 [1024 queries, 3278 keys] float32 score matrices (13 MB each)
    n_q, n_k = B.query_key_pairs(32)
    assert 2 * n_q * n_k * 4 < naive["peak_bytes"] < 10 * n_q * n_k * 4


def test_report_command_writes_one_table(tmp_path, capsys, private_registry):
    out = tmp_path / "report.txt"
    argv = ["--device", "cpu", "--sizes", "8", "--impls", "torch", "sdpa", "reference", "--kinds", "op",
            "--backward", "--dtype", "float32", "bfloat16", "--matmul-size", "64", "--repeats", "1",
            "--min-time", "0", "--no-memory", "--threads", "1", "--out", str(out)]
    threads = torch.get_num_threads()
    assert B.main(argv) == 0
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
        B.main(argv)


def test_cases_over_the_memory_budget_are_skipped():
    args = B._parse_args(["--device", "cpu", "--no-memory", "--no-errors"])
    row = B._run_case(B.Case("reference", "block", 96), args, budget=10**9, truth=None, matmul=1e11)
    assert row["note"].startswith("skipped: needs ~4") and "time" not in row
