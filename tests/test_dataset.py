"""RestorationDataset: shapes per task, determinism, augmentation, sr sizes, grey input."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch.utils.data import DataLoader

from tri_panet.data import bayer_mosaic, bicubic_downsample
from tri_panet.tasks import make_degradation
from tri_panet.training.dataset import RestorationDataset


@pytest.fixture
def folder(tmp_path):
    """Three small real-photo crops (colour PNG) of different sizes."""
    photo = data.astronaut()
    for i, (y, x, h, w) in enumerate([(50, 60, 40, 52), (200, 220, 36, 36), (300, 100, 50, 44)]):
        Image.fromarray(photo[y : y + h, x : x + w]).save(tmp_path / f"img{i}.png")
    return tmp_path


def _tensor(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def _dihedral(t):
    """The 8 flips/transposes of a square [C, S, S] patch."""
    out = []
    for tr in (False, True):
        base = t.transpose(-1, -2) if tr else t
        for hf in (False, True):
            for vf in (False, True):
                x = base.flip(-1) if hf else base
                out.append(x.flip(-2) if vf else x)
    return out


@pytest.mark.parametrize(
    "task, deg, patch, in_size, out_size",
    [
        ("denoise", make_degradation("denoise", sigma_range=(0, 50)), 16, 16, 16),
        ("jpeg", make_degradation("jpeg", quality_range=(10, 40)), 16, 16, 16),
        ("demosaic", None, 16, 16, 16),
        ("sr", make_degradation("sr", scale=2), 8, 8, 16),
        ("sr", make_degradation("sr", scale=3), 8, 8, 24),
    ],
)
def test_shapes_per_task(folder, task, deg, patch, in_size, out_size):
    ds = RestorationDataset(folder, task, patch_size=patch, degradation=deg)
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == {"input", "target"}
    assert item["input"].shape == (3, in_size, in_size) and item["input"].dtype == torch.float32
    assert item["target"].shape == (3, out_size, out_size) and item["target"].dtype == torch.float32
    assert 0 <= item["target"].min() and item["target"].max() <= 1
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["input"].shape == (3, 3, in_size, in_size)


def test_inputs_are_the_degraded_targets(folder):
    ds = RestorationDataset(folder, "sr", patch_size=6, scale=4)
    assert ds.scale == 4
    item = ds[0]
    assert torch.equal(item["input"], bicubic_downsample(item["target"], 4, quantize=True))
    dm = RestorationDataset(folder, "demosaic", patch_size=10)
    item = dm[2]
    assert torch.equal(item["input"], bayer_mosaic(item["target"]))
    dn = RestorationDataset(folder, "denoise", patch_size=32, degradation=make_degradation("denoise", sigma=30))
    item = dn[0]
    assert (item["input"] - item["target"]).std().item() == pytest.approx(30 / 255, rel=0.1)


def test_determinism_and_epochs(folder):
    deg = make_degradation("denoise", sigma_range=(5, 50))
    a = RestorationDataset(folder, "denoise", patch_size=12, degradation=deg, seed=3)
    b = RestorationDataset([folder], "denoise", patch_size=12, degradation=deg, seed=3, cache=False)
    # Same (seed, epoch, index) -> same sample, whatever the order of access.
    first = [a[i] for i in (0, 1, 2)]
    second = [b[i] for i in (2, 1, 0)][::-1]
    for x, y in zip(first, second):
        assert torch.equal(x["input"], y["input"]) and torch.equal(x["target"], y["target"])
    assert torch.equal(a[0]["input"], a[0]["input"])
    a.set_epoch(1)
    assert not torch.equal(a[0]["input"], first[0]["input"])
    a.set_epoch(0)
    assert torch.equal(a[0]["input"], first[0]["input"])
    c = RestorationDataset(folder, "denoise", patch_size=12, degradation=deg, seed=4)
    assert not torch.equal(c[0]["input"], first[0]["input"])
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def test_crops_come_from_the_image_and_augmentation_covers_the_8_transforms(folder):
    src = _tensor(folder / "img1.png")  # 36 x 36
    plain = RestorationDataset(folder, "demosaic", patch_size=20, augment=False)
    seen_pos = set()
    for epoch in range(6):
        plain.set_epoch(epoch)
        t = plain[1]["target"]
        hits = [(y, x) for y in range(17) for x in range(17) if torch.equal(src[:, y : y + 20, x : x + 20], t)]
        assert hits, "target is not a crop of its image"
        seen_pos.add(hits[0])
    assert len(seen_pos) > 1  # random crop positions

    whole = RestorationDataset(folder, "demosaic", patch_size=36, augment=True)
    variants = _dihedral(src)
    seen = set()
    for epoch in range(40):
        whole.set_epoch(epoch)
        t = whole[1]["target"]
        k = [i for i, v in enumerate(variants) if torch.equal(v, t)]
        assert k, "augmented target is not a flip/transpose of the image"
        seen.add(k[0])
    assert len(seen) == 8


def test_grey(folder):
    deg = make_degradation("jpeg", quality=10)
    ds = RestorationDataset(folder, "jpeg", patch_size=16, color=False, degradation=deg)
    item = ds[0]
    assert item["input"].shape == (1, 16, 16) and item["target"].shape == (1, 16, 16)
    assert not torch.equal(item["input"], item["target"])
    with pytest.raises(ValueError, match="colour"):
        RestorationDataset(folder, "demosaic", color=False)


def test_small_images_are_padded_with_a_warning(folder):
    ds = RestorationDataset(folder, "sr", patch_size=16, scale=3)  # 48 px HR crop > 36 px image
    with pytest.warns(UserWarning, match="img1.png"):
        item = ds[1]
    assert item["target"].shape == (3, 48, 48) and item["input"].shape == (3, 16, 16)


def test_whole_images_and_length(folder):
    ds = RestorationDataset(folder, "sr", patch_size=None, scale=3, augment=False)
    item = ds[0]  # 40 x 52 -> modcrop 39 x 51
    assert item["target"].shape == (3, 39, 51) and item["input"].shape == (3, 13, 17)
    assert torch.equal(item["target"], _tensor(folder / "img0.png")[:, :39, :51])
    long = RestorationDataset(folder, "demosaic", patch_size=8, length=7)
    assert len(long) == 7 and long[6]["target"].shape == (3, 8, 8)
    with pytest.raises(IndexError):
        long[7]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "denoise"}, "needs a degradation"),
        ({"task": "paint"}, "task"),
        ({"task": "sr", "scale": 5}, "scale"),
        ({"task": "sr", "scale": 2, "degradation": make_degradation("sr", scale=4)}, "differs"),
        ({"task": "denoise", "scale": 2, "degradation": make_degradation("denoise", sigma=5)}, "'sr' only"),
        ({"task": "jpeg", "degradation": make_degradation("denoise", sigma=5)}, "for task"),
        ({"task": "demosaic", "patch_size": 0}, "patch_size"),
    ],
)
def test_errors(folder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RestorationDataset(folder, **kwargs)


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no image"):
        RestorationDataset(tmp_path, "demosaic")
