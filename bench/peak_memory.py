"""Time and peak extra RSS of the torch backend, forward + backward, PANet config, one image.

Usage: python bench/peak_memory.py SIZE   (e.g. 192). Prints one line. Peak extra RSS is
ru_maxrss after the call minus before it (inputs already allocated), so it counts the
output, the gradients and every temporary of the op.
"""

import resource
import sys
import time

import torch

from tri_panet.nn import DEFAULT_SCALES, build_pyramid
from tri_panet.ops import pyramid_attention_torch


def main(size: int) -> None:
    torch.manual_seed(0)
    levels = build_pyramid(torch.empty(1, 64, size, size, device="meta"), DEFAULT_SCALES)
    query = torch.randn(1, 32, size, size, requires_grad=True)
    keys = [torch.randn(1, 32, *lv.shape[2:], requires_grad=True) for lv in levels]
    values = [torch.randn(1, 64, *lv.shape[2:], requires_grad=True) for lv in levels]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = pyramid_attention_torch(query, keys, values)
    t1 = time.perf_counter()
    out.sum().backward()
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{size}px fwd {t1 - t0:.1f}s bwd {t2 - t1:.1f}s extra peak RSS {(peak - before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]))
