"""An independent definition of pyramid attention by explicit loops (SPEC section 1).

Written from the formulas only (no unfold, conv or fold), in float64 numpy, for tiny inputs.
"""

import numpy as np


def pyramid_attention_brute_force(
    query, keys, values, *, patch_size=3, softmax_scale=10.0, key_eps=1e-4, fold_divisor=4.0
):
    """query [B, Cq, H, W], keys/values lists of [B, C, H_l, W_l] (numpy or torch) -> [B, Cv, H, W] numpy."""
    as_np = lambda t: np.asarray(t.detach().double().cpu() if hasattr(t, "detach") else t, dtype=np.float64)  # noqa: E731
    query = as_np(query)
    keys = [as_np(k) for k in keys]
    values = [as_np(v) for v in values]
    k, r = patch_size, patch_size // 2
    pad = lambda x: np.pad(x, ((0, 0), (r, r), (r, r)))  # noqa: E731
    batch, _, height, width = query.shape
    out = np.zeros((batch, values[0].shape[1], height, width))
    for b in range(batch):
        q_pad = pad(query[b])
        key_patches, value_maps = [], []
        for key, value in zip(keys, values):
            k_pad, v_pad = pad(key[b]), pad(value[b])
            for py in range(key.shape[2]):
                for px in range(key.shape[3]):
                    patch = k_pad[:, py : py + k, px : px + k]
                    key_patches.append(patch / max(np.sqrt((patch**2).sum()), key_eps))
                    value_maps.append((v_pad, py, px))
        weights = np.zeros((height, width, len(key_patches)))
        for qy in range(height):
            for qx in range(width):
                q_patch = q_pad[:, qy : qy + k, qx : qx + k]
                scores = np.array([softmax_scale * (q_patch * kp).sum() for kp in key_patches])
                e = np.exp(scores - scores.max())
                weights[qy, qx] = e / e.sum()
        for oy in range(height):
            for ox in range(width):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        qy, qx = oy - dy, ox - dx
                        if not (0 <= qy < height and 0 <= qx < width):
                            continue
                        for j, (v_pad, py, px) in enumerate(value_maps):
                            out[b, :, oy, ox] += weights[qy, qx, j] * v_pad[:, py + r + dy, px + r + dx]
        out[b] /= fold_divisor
    return out
