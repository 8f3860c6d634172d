"""Compile the Triton kernels for NVIDIA GPUs on this CPU machine (no GPU needed).

``triton.compile`` builds PTX and a cubin for sm_80 (A100) and sm_90 (H100) with the ptxas
shipped in the triton wheel; ``cuobjdump --dump-resource-usage`` then reports registers and
stack (register spills). Every forward launch config the GPU path can pick is compiled for
the PANet shapes and checked against the device's shared-memory limit; the default forward
config and every backward kernel must not spill. The slow test adds float32, other shape
classes (odd channels, PA-EDSR values, 1x1 and 5x5 patches) and the backward in bf16/fp32.
Compiles run in a subprocess (the interpreter mode breaks GPU code generation) and are cached
by Triton on disk (~/.triton/cache): about 1 min cold for the default set, seconds warm.

``python tests/test_triton_compile.py [--full]`` prints the table (shared bytes, REG, STACK).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from tri_panet.kernels import pyramid_bwd, pyramid_fwd  # noqa: E402
from tri_panet.ops import triton_configs as tb  # noqa: E402

#: Largest dynamic shared memory per block: A100 (sm_80) and H100 (sm_90).
SHARED_LIMIT = {80: 166_912, 90: 232_448}
CAPABILITY = {80: (8, 0), 90: (9, 0)}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4}

# Runtime arguments of the kernels: pointer element types ("DT" = the input dtype) and scalars.
FWD_ARGS = {
    "Q": "*DT",
    "K": "*DT",
    "V": "*DT",
    "KINV": "*fp32",
    "LEVELS": "*i32",
    "OUT": "*fp32",
    "LSE": "*fp32",
    "O": "*DT",
    "H": "i32",
    "W": "i32",
    "NK": "i32",
    "CV": "i32",
    "n_levels": "i32",
    "qk_scale": "fp32",
    "out_scale": "fp32",
}
NORM_ARGS = {"K": "*DT", "NORM": "*fp32", "KINV": "*fp32", "LEVELS": "*i32", "NK": "i32", "key_eps": "fp32"}
_SCALARS = {"H": "i32", "W": "i32", "NK": "i32"}
DQ_ARGS = {
    "Q": "*DT",
    "K": "*DT",
    "V": "*DT",
    "KINV": "*fp32",
    "LEVELS": "*i32",
    "G": "*DT",
    "LSE": "*fp32",
    "DELTA": "*fp32",
    "DQ": "*fp32",
    **_SCALARS,
    "n_levels": "i32",
    "qk_scale": "fp32",
    "scale": "fp32",
    "out_scale": "fp32",
}
DK_ARGS = {
    "Q": "*DT",
    "K": "*DT",
    "V": "*DT",
    "NORM": "*fp32",
    "KINV": "*fp32",
    "LEVELS": "*i32",
    "G": "*DT",
    "LSE": "*fp32",
    "DELTA": "*fp32",
    "DK": "*fp32",
    **_SCALARS,
    "key_eps": "fp32",
    "qk_scale": "fp32",
    "scale": "fp32",
    "out_scale": "fp32",
}
DV_ARGS = {
    "Q": "*DT",
    "K": "*DT",
    "KINV": "*fp32",
    "LEVELS": "*i32",
    "G": "*DT",
    "LSE": "*fp32",
    "DV": "*fp32",
    **_SCALARS,
    "qk_scale": "fp32",
    "out_scale": "fp32",
}
DELTA_ARGS = {"G": "*DT", "O": "*DT", "DELTA": "*fp32", "H": "i32", "W": "i32", "out_scale": "fp32"}


def _jit(kernel):
    # Under TRITON_INTERPRET=1 the decorator returns an interpreter wrapper; compile the function itself.
    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


@functools.cache
def compile_kernel(kernel, args: tuple, constexprs: tuple, dtype: str, cc: int, num_warps: int, num_stages: int):
    """Compile for sm_``cc``: returns (shared bytes, registers, stack bytes)."""
    fn = _jit(kernel)
    signature = {name: kind.replace("DT", dtype) for name, kind in args}
    constexprs = dict(constexprs)
    signature.update({name: "constexpr" for name in constexprs})
    # Pointers from torch's allocator are 16-byte aligned: the launcher specialises on that too.
    attrs = {
        (fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, kind in signature.items() if kind.startswith("*")
    }
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=num_warps, num_stages=num_stages)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", path], capture_output=True, text=True, check=True)
    regs = int(re.search(r"REG:(\d+)", usage.stdout).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage.stdout).group(1))
    return compiled.metadata.shared, regs, stack


def fwd_meta(cq: int, cv: int, patch: int, dtype: str, cc: int) -> dict:
    """The constexprs the launcher picks on an sm_``cc`` GPU for these channels and dtype."""
    fam = tb.family(CAPABILITY[cc])
    cv_block = tb.value_block(cv, patch, tb.VALUE_COLUMNS[fam][ELEMENT_SIZE[dtype]])
    return dict(
        CQP=tb.padded_channels(cq),
        CVP=triton.cdiv(cv, cv_block) * cv_block,
        CV_BLOCK=cv_block,
        PATCH=patch,
        PRECISION="tf32" if dtype == "fp32" else "ieee",
    )


def compile_fwd(cq, cv, patch, dtype, cc, config, store_o=False):
    block_m, block_n, warps, stages = config
    meta = dict(fwd_meta(cq, cv, patch, dtype, cc), STORE_O=store_o, BLOCK_M=block_m, BLOCK_N=block_n)
    return compile_kernel(
        pyramid_fwd.pyramid_fwd_kernel, tuple(FWD_ARGS.items()), tuple(meta.items()), dtype, cc, warps, stages
    )


def compile_norm(cq, patch, dtype, cc):
    meta = dict(CQP=tb.padded_channels(cq), PATCH=patch, BLOCK=tb.NORM_BLOCK)
    return compile_kernel(pyramid_fwd.key_norm_kernel, tuple(NORM_ARGS.items()), tuple(meta.items()), dtype, cc, 4, 1)


def compile_bwd(kernel_name, cq, cv, patch, dtype, cc, config=None):
    """Compile one backward kernel ("dq", "dk", "dv", "delta") with the launcher's constexprs."""
    fam = tb.family(CAPABILITY[cc])
    block_m, block_n, warps, stages = config or tb.BWD_CONFIGS[fam].get(kernel_name, (0, 0, 4, 1))
    meta = fwd_meta(cq, cv, patch, dtype, cc)
    cq_block = tb.value_block(cq, patch, tb.VALUE_COLUMNS[fam][ELEMENT_SIZE[dtype]])
    cqp, cvp, cv_block, prec = meta["CQP"], meta["CVP"], meta["CV_BLOCK"], meta["PRECISION"]
    if kernel_name == "delta":
        kernel, args = pyramid_bwd.delta_kernel, DELTA_ARGS
        consts = dict(CVP=cvp, CV_BLOCK=cv_block, PATCH=patch, BLOCK_M=tb.DELTA_BLOCK)
        warps, stages = 4, 1
    elif kernel_name == "dq":
        kernel, args = pyramid_bwd.dq_kernel, DQ_ARGS
        consts = dict(
            CQP=cqp,
            CQ_BLOCK=cq_block,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch,
            PRECISION=prec,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
        )
    elif kernel_name == "dk":
        kernel, args = pyramid_bwd.dk_kernel, DK_ARGS
        consts = dict(
            N_SLICES=cqp // cq_block,
            CQP=cqp,
            CQ_BLOCK=cq_block,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch,
            PRECISION=prec,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
        )
    else:
        kernel, args = pyramid_bwd.dv_kernel, DV_ARGS
        consts = dict(
            N_SLICES=cvp // cv_block,
            CQP=cqp,
            CVP=cvp,
            CV_BLOCK=cv_block,
            PATCH=patch,
            PRECISION=prec,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
        )
    return compile_kernel(kernel, tuple(args.items()), tuple(consts.items()), dtype, cc, warps, stages)


def configs(cc, shape=None, dtype="fp16"):
    """Configs the GPU path can pick on an sm_``cc`` GPU (A100/H100 limits) for ``shape``; all if None."""
    fam = tb.family(CAPABILITY[cc])
    if shape is None:
        return tb.GPU_CONFIGS[fam]
    meta = fwd_meta(*shape, dtype, cc)
    return tb.fitting_configs(fam, shape[2], meta["CQP"], meta["CV_BLOCK"], ELEMENT_SIZE[dtype], SHARED_LIMIT[cc])


# PANet: Cq = 32, Cv = 64, 3x3 patches (d_qk = 288, d_v = 576).
PANET = (32, 64, 3)
# Other shape classes the GPU path meets: (Cq, Cv, patch).
OTHER_SHAPES = {
    "odd-channels": (3, 5, 3),
    "pa-edsr": (32, 256, 3),
    "k1-wide": (32, 256, 1),
    "k5": (32, 64, 5),
}

CC = [80, 90]


def _fwd_row(cc, shape, dtype, config, name, store_o=False):
    shared, regs, stack = compile_fwd(*shape, dtype, cc, config, store_o)
    meta = fwd_meta(*shape, dtype, cc)
    return dict(
        kernel="fwd+O" if store_o else "fwd",
        cc=cc,
        dtype=dtype,
        name=name,
        shape=list(shape),
        config=list(config),
        default=config == configs(cc, shape, dtype)[0],
        cv_block=meta["CV_BLOCK"],
        shared=shared,
        regs=regs,
        stack=stack,
        estimate=tb.shared_estimate(config, shape[2], meta["CQP"], meta["CV_BLOCK"], ELEMENT_SIZE[dtype]),
    )


def _bwd_row(cc, kernel, shape, dtype, name):
    shared, regs, stack = compile_bwd(kernel, *shape, dtype, cc)
    fam = tb.family(CAPABILITY[cc])
    config = tb.BWD_CONFIGS[fam].get(kernel, (tb.DELTA_BLOCK, 0, 4, 1))
    return dict(
        kernel=kernel,
        cc=cc,
        dtype=dtype,
        name=name,
        shape=list(shape),
        config=list(config),
        default=True,
        cv_block=fwd_meta(*shape, dtype, cc)["CV_BLOCK"],
        shared=shared,
        regs=regs,
        stack=stack,
        estimate=0,
    )


def table(full: bool = False) -> list[dict]:
    """Compile what the tests check; one row per (kernel, sm, dtype, shape, config).

    The default set (cheap enough to run with every test run, cached on disk by Triton
    afterwards): every forward config at PANet shapes in fp16, the default in bf16, the
    key-norm pre-pass and the backward kernels in fp16. ``full`` adds float32 (TF32), other
    shapes (odd channels, PA-EDSR, 1x1 and 5x5 patches) and the backward in bf16/fp32.
    """
    rows = []
    for cc in CC:
        rows += [_fwd_row(cc, PANET, "fp16", c, "panet") for c in configs(cc, PANET)]
        rows.append(_fwd_row(cc, PANET, "bf16", configs(cc, PANET, "bf16")[0], "panet"))
        shared, regs, stack = compile_norm(PANET[0], PANET[2], "fp16", cc)
        rows.append(
            dict(
                kernel="key_norm",
                cc=cc,
                dtype="fp16",
                name="panet",
                shape=list(PANET),
                config=[tb.NORM_BLOCK, 0, 4, 1],
                default=True,
                cv_block=0,
                shared=shared,
                regs=regs,
                stack=stack,
                estimate=0,
            )
        )
        rows += [_bwd_row(cc, k, PANET, "fp16", "panet") for k in ("delta", "dq", "dk", "dv")]
        if not full:
            continue
        rows.append(_fwd_row(cc, PANET, "fp32", configs(cc, PANET, "fp32")[0], "panet"))
        rows.append(_fwd_row(cc, PANET, "fp16", configs(cc, PANET)[0], "panet", store_o=True))
        rows += [
            _fwd_row(cc, shape, "fp16", configs(cc, shape)[0], name)
            for name, shape in OTHER_SHAPES.items()
            if name != "k5"
        ]
        # every fitting config of the most shared-memory-hungry shape
        rows += [_fwd_row(cc, OTHER_SHAPES["k5"], "fp16", c, "k5") for c in configs(cc, OTHER_SHAPES["k5"])]
        rows += [_bwd_row(cc, k, PANET, dt, "panet") for dt in ("bf16", "fp32") for k in ("dq", "dk", "dv")]
        rows += [_bwd_row(cc, k, OTHER_SHAPES[n], "fp16", n) for n in ("pa-edsr", "k5") for k in ("dq", "dk", "dv")]
    return rows


def _compiled(full: bool) -> list[dict]:
    # Triton's interpreter mode (TRITON_INTERPRET=1, set by conftest.py) breaks GPU code
    # generation in this process: compile in a subprocess without it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cmd = [sys.executable, __file__, "--json"] + (["--full"] if full else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled():
    return _compiled(full=False)


@pytest.fixture(scope="module")
def compiled_full():
    return _compiled(full=True)


def select(rows, **where):
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert found, where
    return found


def check_shared_and_registers(rows, cc):
    for r in rows:
        assert r["shared"] <= SHARED_LIMIT[cc], r
        assert 0 < r["regs"] <= 255, r
        # the launcher prunes forward configs with this estimate: it must not under-count
        assert not r["kernel"].startswith("fwd") or r["shared"] <= r["estimate"], r


@pytest.mark.parametrize("cc", CC)
def test_every_config_compiles_within_shared_memory(compiled, cc):
    rows = select(compiled, cc=cc)
    assert {tuple(r["config"]) for r in select(rows, kernel="fwd", name="panet")} == set(configs(cc))
    check_shared_and_registers(rows, cc)


@pytest.mark.parametrize("cc", CC)
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_default_config_does_not_spill(compiled, cc, dtype):
    (row,) = select(compiled, kernel="fwd", cc=cc, name="panet", dtype=dtype, default=True)
    assert row["stack"] == 0, f"default config spills on sm_{cc} ({dtype}): {row}"


@pytest.mark.parametrize("cc", CC)
def test_backward_kernels_compile(compiled, cc):
    rows = select(compiled, cc=cc)
    assert {r["kernel"] for r in rows} >= {"key_norm", "delta", "dq", "dk", "dv"}
    for kernel in ("key_norm", "delta", "dq", "dk", "dv"):
        for r in select(rows, kernel=kernel):
            assert r["stack"] == 0, r


@pytest.mark.slow
@pytest.mark.parametrize("cc", CC)
def test_full_set_compiles_within_shared_memory(compiled_full, cc):
    check_shared_and_registers(select(compiled_full, cc=cc), cc)


def format_table(rows) -> str:
    lines = [
        "kernel    sm  dtype  shape (Cq,Cv,k)  name          config (BM,BN,warps,stages)  CV_BLOCK  shared  REG  STACK"
    ]
    lines[0] += "   (* = default: the first config the autotuner may pick)"
    for r in rows:
        lines.append(
            f"{r['kernel']:<9} {r['cc']}  {r['dtype']:<5}  {str(tuple(r['shape'])):<15}  {r['name']:<12}  "
            f"{str(tuple(r['config'])) + (' *' if r['default'] else ''):<27}  {r['cv_block']:>8}  {r['shared']:>6}  "
            f"{r['regs']:>3}  {r['stack']:>5}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter breaks GPU code generation")
    result = table(full="--full" in sys.argv)
    if "--json" in sys.argv:
        print(json.dumps(result))
    else:
        print(format_table(result))
