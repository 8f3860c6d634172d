#!/usr/bin/env bash
# The GPU work of the Triton issues, one stage per device call (each stays under the
# 10-minute limit of a call; a session's 30 minutes of GPU time fit about five of them).
#
#   bash bench/gpu_session.sh tests    # pytest -m cuda: kernels vs reference on CUDA, fp32/tf32/fp16/bf16
#   bash bench/gpu_session.sh props    # 30 hypothesis draws of the compiled kernels, fwd + grads vs float64
#   bash bench/gpu_session.sh op       # report, the op, 64/96/128 px, fwd and fwd+bwd, every impl, bf16 + fp32
#   bash bench/gpu_session.sh block    # the same for the whole PyramidAttention block
#   bash bench/gpu_session.sh large    # op + block at 256/512 px, triton + SDPA alternatives (naive does not fit);
#                                      # block fwd+bwd at 256 px is the training-memory target (4 GB)
#   bash bench/gpu_session.sh huge     # op at 1024 px forward, triton only: the 4 GB inference target
#
# Outputs go to $OUT (the device tool brings that folder back) or to bench/results/; copy
# the tables into bench/results/ and the README afterwards. Stage times are unknown
# (no GPU session has run them yet): if one runs out of time, pass fewer sizes.
# The device image has torch and triton but no network: install the project without deps.
set -euo pipefail
stage="${1:?usage: bash bench/gpu_session.sh tests|props|op|block|large|huge}"
out_dir="${OUT:-bench/results}"
mkdir -p "$out_dir"
python=python3

"$python" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
"$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

stamp="$(date -u +%Y%m%d-%H%M%S)"
report() {  # report NAME ARGS...: one table per stage, named after the GPU
    local name="$1"; shift
    local slug
    slug="$(cd bench && "$python" -c "from report import device_slug; print(device_slug('cuda'))")"
    "$python" bench/report.py --device cuda "$@" --out "$out_dir/${slug}_${stamp}_${name}.txt"
}

case "$stage" in
    tests) "$python" -m pytest -m cuda -q --maxfail=25 tests 2>&1 | tee "$out_dir/pytest_cuda_${stamp}.txt" | tail -40 ;;
    props) TRI_PANET_HYPOTHESIS_EXAMPLES=30 "$python" -m pytest -q tests/test_triton_properties.py 2>&1 |
        tee "$out_dir/pytest_props_${stamp}.txt" | tail -20 ;;
    op) report op --sizes 64 96 128 --backward --kinds op ;;
    block) report block --sizes 64 96 128 --backward --kinds block ;;
    large) report large --sizes 256 512 --backward --kinds op block --impls triton sdpa sdpa_pad ;;
    huge) report huge --sizes 1024 --impls triton --dtype bfloat16 --kinds op --no-errors ;;
    *) echo "unknown stage: $stage (tests|props|op|block|large|huge)" >&2; exit 2 ;;
esac
