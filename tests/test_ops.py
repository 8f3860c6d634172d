"""How ``pyramid_attention`` picks a backend, and says why: "auto", its fallback warning,
TRI_PANET_DEBUG, deterministic mode, the backend table, and the package's attributes.

CUDA tensors are simulated with ``FakeTensorMode`` (shapes and devices only, no GPU): the
choice depends on the device type, and the torch path's custom op has a fake that runs there.
"""

import subprocess
import sys

import pytest
import torch
from op_inputs import make_inputs
from torch._subclasses.fake_tensor import FakeTensorMode

from tri_panet import ops, pyramid_attention
from tri_panet.ops import backends, explain_backend, resolve_backend


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for the test, restored afterwards."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


@pytest.fixture
def fresh_reports(monkeypatch):
    """Forget which choices were already reported (warnings and debug lines are once per process)."""
    monkeypatch.setattr(backends, "_reported", set())


@pytest.fixture
def triton_missing(monkeypatch, fresh_reports):
    """The state of a process whose ``import triton`` failed."""
    monkeypatch.setattr(backends, "TRITON_IMPORT_ERROR", "ImportError: No module named 'triton'")
    monkeypatch.delitem(backends.BACKENDS, "triton", raising=False)


def fake_cuda_inputs(mode, dtype=torch.float16):
    with mode:
        query = torch.empty(1, 4, 6, 5, device="cuda", dtype=dtype)
        keys = [torch.empty(1, 4, h, w, device="cuda", dtype=dtype) for h, w in ((6, 5), (3, 3))]
        values = [torch.empty(1, 3, h, w, device="cuda", dtype=dtype) for h, w in ((6, 5), (3, 3))]
    return query, keys, values


def test_auto_on_cpu_is_the_torch_path_and_says_so():
    query = torch.zeros(1, 2, 3, 3)
    choice = explain_backend(query)
    assert choice.backend == "torch" == resolve_backend("auto", query)
    assert "cpu" in choice.reason and not choice.fallback
    assert explain_backend(query, "reference") == ("reference", "requested", False)


def test_auto_on_cuda_picks_triton_when_it_imported():
    if "triton" not in ops.available_backends():
        pytest.skip("triton did not import here")
    query, _, _ = fake_cuda_inputs(FakeTensorMode())
    assert explain_backend(query).backend == "triton"
    assert explain_backend(query.double()).backend == "torch"  # no float64 kernels: by design, no warning
    assert not explain_backend(query.double()).fallback


def test_auto_falls_back_with_one_warning_naming_the_reason(triton_missing):
    mode = FakeTensorMode()
    query, keys, values = fake_cuda_inputs(mode)
    choice = explain_backend(query)
    assert choice.backend == "torch" and choice.fallback and "No module named 'triton'" in choice.reason
    with pytest.warns(RuntimeWarning, match=r"falling back to the torch path.*No module named 'triton'") as record:
        with mode:
            out = pyramid_attention(query, keys, values)
            pyramid_attention(query, keys, values)  # the same reason again: no second warning
    assert len(record) == 1
    assert out.shape == (1, 3, 6, 5) and out.device.type == "cuda"


def test_explicit_triton_without_triton_names_the_import_error(triton_missing):
    with pytest.raises(ValueError, match=r"backend='triton' is unavailable.*No module named 'triton'"):
        resolve_backend("triton", torch.zeros(1))


def test_debug_variable_prints_each_new_choice_once(monkeypatch, fresh_reports, capsys):
    monkeypatch.setenv("TRI_PANET_DEBUG", "1")
    query, keys, values = make_inputs(1, 2, 3, (4, 4), [(4, 4)])
    pyramid_attention(query, keys, values)
    pyramid_attention(query, keys, values, backend="reference")
    pyramid_attention(query, keys, values)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "tri_panet: pyramid_attention runs torch (backend='auto' on a cpu tensor: the tiled torch path)",
        "tri_panet: pyramid_attention runs reference (requested)",
    ]


def test_no_debug_output_without_the_variable(monkeypatch, fresh_reports, capsys):
    monkeypatch.delenv("TRI_PANET_DEBUG", raising=False)
    pyramid_attention(*make_inputs(1, 2, 3, (4, 4), [(4, 4)]))
    assert capsys.readouterr().err == ""


def test_deterministic_mode_makes_auto_pick_the_torch_path(deterministic, fresh_reports):
    if "triton" not in ops.available_backends():
        pytest.skip("triton did not import here")
    query, _, _ = fake_cuda_inputs(FakeTensorMode())
    choice = explain_backend(query)
    assert choice.backend == "torch" and "use_deterministic_algorithms" in choice.reason and choice.fallback


def test_torch_path_is_bitwise_reproducible(deterministic):
    inputs = make_inputs(1, 3, 2, (6, 5), [(6, 5), (4, 3)], requires_grad=True)
    grad_out = torch.randn(1, 2, 6, 5, generator=torch.Generator().manual_seed(3))
    runs = []
    for _ in range(2):
        out = pyramid_attention(*inputs, backend="torch")
        runs.append([out, *torch.autograd.grad(out, [inputs[0], *inputs[1], *inputs[2]], grad_out)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_explicit_triton_refuses_deterministic_mode(deterministic):
    launcher = pytest.importorskip("tri_panet.ops.triton_launcher")
    if not launcher.configs.INTERPRETING:
        pytest.skip("needs the Triton interpreter (CPU tensors)")
    with pytest.raises(RuntimeError, match="backend='triton' is not deterministic.*float32 atomic"):
        pyramid_attention(*make_inputs(1, 2, 3, (4, 4), [(4, 4)]), backend="triton")


def test_explicit_triton_warns_in_warn_only_deterministic_mode():
    launcher = pytest.importorskip("tri_panet.ops.triton_launcher")
    if not launcher.configs.INTERPRETING:
        pytest.skip("needs the Triton interpreter (CPU tensors)")
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.warns(UserWarning, match="not deterministic"):
            out = pyramid_attention(*make_inputs(1, 2, 3, (4, 4), [(4, 4)]), backend="triton")
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    assert out.shape == (1, 3, 4, 4)


def test_a_process_without_triton_explains_the_fallback():
    """The real path: ``import triton`` fails in a fresh process (None in sys.modules)."""
    script = """
import sys, warnings
sys.modules["triton"] = None
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
import tri_panet
from tri_panet.ops import available_backends, explain_backend
assert "triton" not in available_backends(), available_backends()
mode = FakeTensorMode()
with mode:
    q = torch.empty(1, 2, 4, 4, device="cuda")
    k = [torch.empty(1, 2, 4, 4, device="cuda")]
    v = [torch.empty(1, 3, 4, 4, device="cuda")]
print(explain_backend(q))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with mode:
        tri_panet.pyramid_attention(q, k, v)
        tri_panet.pyramid_attention(q, k, v)
print(len(caught), caught[0].message)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    explained, warned = proc.stdout.strip().splitlines()
    assert explained.startswith("torch (backend='auto' on a CUDA tensor, but Triton failed to import: ModuleNotFound")
    assert warned.startswith("1 tri_panet: falling back to the torch path") and "ModuleNotFoundError" in warned


def test_subpackages_are_attributes_of_the_package():
    script = "import tri_panet; tri_panet.nn.PyramidAttention; tri_panet.models.create; tri_panet.ops.pyramid_attention"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_block_validates_the_backend_name_without_reporting(monkeypatch, fresh_reports, capsys):
    from tri_panet.nn import PyramidAttention

    monkeypatch.setenv("TRI_PANET_DEBUG", "1")
    PyramidAttention(channels=4, backend="auto")  # a name check, not a choice: nothing printed
    assert capsys.readouterr().err == ""
