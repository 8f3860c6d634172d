"""pytest-benchmark cases of the registered tiny models (tiny-* and fast-*): one optimiser step
at the training patch and batch, and ``restore`` of one image with the CLI's default tiling.

- ``train_step``: forward, L1 loss, backward, Adam step on a batch of ``TrainConfig``'s
  ``batch_size`` patches of ``patch_size`` input px (the LR side for sr); ``extra_info``
  holds images/s (batch / median time).
- ``restore``: ``tri_panet.inference.restore`` of one TRI_PANET_BENCH_RESTORE_SIZE-px image
  (input side) with the tiling ``tri-panet restore`` uses without tiling flags (its
  parser's defaults, see ``harness.cli_default_tiling``); ``extra_info`` holds seconds per
  output megapixel and the tiling.

The runners live in ``harness.py`` (shared with ``report.py --kinds train_step restore``).
Run: ``pytest --benchmark-only bench/test_bench_models.py``. Environment knobs:
- TRI_PANET_BENCH_DEVICE: "cpu" (default) or "cuda";
- TRI_PANET_BENCH_MODELS: model names (default: every registered tiny model);
- TRI_PANET_BENCH_RESTORE_SIZE: restore input side in px (default harness.DEFAULT_RESTORE_SIZE).
"""

import os

import harness as B
import pytest
import torch

DEVICE = os.environ.get("TRI_PANET_BENCH_DEVICE", "cpu")
MODELS = os.environ.get("TRI_PANET_BENCH_MODELS", " ".join(B.tiny_models())).split()
RESTORE_SIZE = int(os.environ.get("TRI_PANET_BENCH_RESTORE_SIZE", B.DEFAULT_RESTORE_SIZE))
PATCH, BATCH = B.training_defaults()

CASES = [B.ModelCase(name, "train_step", PATCH, BATCH, DEVICE) for name in MODELS] + [
    B.ModelCase(name, "restore", RESTORE_SIZE, 1, DEVICE) for name in MODELS
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_model(benchmark, case):
    if case.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("TRI_PANET_BENCH_DEVICE=cuda but no CUDA device is available")
    run = B.build_model_runner(case)
    benchmark.group = f"{case.kind} {case.size}px b{case.batch}"
    if case.kind == "restore":
        benchmark.extra_info.update(tiling=B.tiling_label(run.tiling), output_pixels=case.output_pixels)

    def timed():
        run()
        if case.device == "cuda":
            torch.cuda.synchronize()

    rounds, warmup = (10, 2) if case.device == "cuda" else (3, 1)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)
    if benchmark.stats is not None:  # None when benchmarks are disabled (ran once)
        median = benchmark.stats.stats.median
        if case.kind == "train_step":
            benchmark.extra_info["images_per_s"] = case.batch / median
        else:
            benchmark.extra_info["s_per_mpx"] = median / (case.output_pixels / 1e6)
