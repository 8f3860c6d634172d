"""Test set-up: run Triton kernels in the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported, hence here at the top.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture
def shared_data():
    """Path of ../shared/data (real images); skips the test when the folder is absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present (only on the project's machines)")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny denoising model whose tail is not zero (so it is not the identity), saved once per module."""
    from tiny_model import save_tiny_denoiser

    return save_tiny_denoiser(tmp_path_factory.mktemp("w"))
