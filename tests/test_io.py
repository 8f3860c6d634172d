"""Image reading/writing: exact round trips, conversions, no surprise overwrites, atomicity."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tri_panet.data.io import list_images, load_image, save_image


def _rand_u8(c, h=9, w=13, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8))


def _entries(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_exact(tmp_path, channels):
    u8 = _rand_u8(channels)
    img = u8.float() / 255
    path = save_image(img, tmp_path / "a.png")
    back = load_image(path, color=channels == 3)
    assert back.shape == img.shape and back.dtype == torch.float32
    assert torch.equal((back * 255).round().to(torch.uint8), u8)
    # Independent check of what is on disk.
    on_disk = np.asarray(Image.open(path)).reshape(9, 13, channels)
    assert np.array_equal(on_disk, u8.numpy().transpose(1, 2, 0))
    assert _entries(tmp_path) == ["a.png"]  # no temporary file left behind


def test_save_rounds_clamps_and_accepts_batch_of_one(tmp_path):
    img = torch.tensor([[[0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, -0.3, 1.7]]])  # [1, 1, 6]
    save_image(img[None], tmp_path / "r.png")
    assert np.asarray(Image.open(tmp_path / "r.png")).tolist() == [[0, 1, 1, 2, 0, 255]]


def test_colour_and_grey_conversions(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    grey = load_image(tmp_path / "c.png", color=False)
    want = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))  # Pillow's ITU-R 601-2 luma
    assert grey.shape == (1, 6, 7)
    assert torch.equal((grey[0] * 255).round().to(torch.uint8), torch.from_numpy(want.copy()))
    # Loose sanity check of that convention (full-range BT.601 weights).
    approx = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(want - approx).max() <= 1

    g = np.random.default_rng(2).integers(0, 256, (5, 4), dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    col = load_image(tmp_path / "g.png")
    assert col.shape == (3, 5, 4)
    assert torch.equal(col[0], col[1]) and torch.equal(col[1], col[2])
    assert torch.equal((col[0] * 255).round().to(torch.uint8), torch.from_numpy(g))

    rgba = np.concatenate([rgb, np.full((6, 7, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert torch.equal(load_image(tmp_path / "alpha.png"), load_image(tmp_path / "c.png"))  # alpha dropped


def test_sixteen_bit_grey(tmp_path):
    g16 = np.array([[0, 1000, 65535], [30000, 40000, 257]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "w.png")
    img = load_image(tmp_path / "w.png", color=False)
    assert img.shape == (1, 2, 3)
    assert torch.allclose(img[0].double(), torch.from_numpy(g16.astype(np.float64) / 65535), atol=1e-7)


def test_no_overwrite_and_overwrite(tmp_path):
    p = tmp_path / "x.png"
    save_image(torch.zeros(3, 4, 4), p)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_image(torch.ones(3, 4, 4), p)
    assert load_image(p).max() == 0  # untouched
    save_image(torch.ones(3, 4, 4), p, overwrite=True)
    assert load_image(p).min() == 1
    assert _entries(tmp_path) == ["x.png"]


def test_atomic_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "y.png"
    save_image(torch.zeros(1, 4, 4), p)

    def boom(self, fp, format=None, **kw):  # the encoder dies half-way
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.ones(1, 4, 4), p, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.ones(1, 4, 4), tmp_path / "new.png")
    monkeypatch.undo()
    assert _entries(tmp_path) == ["y.png"]  # no temp file, no partial new file
    assert load_image(p, color=False).max() == 0  # old content intact


def test_jpeg_by_extension(tmp_path):
    img = torch.rand(3, 16, 16)
    save_image(img, tmp_path / "z.jpg")
    assert Image.open(tmp_path / "z.jpg").format == "JPEG"
    assert load_image(tmp_path / "z.jpg").shape == (3, 16, 16)


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        save_image(torch.rand(3, 4, 4), tmp_path / "a.xyz")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_image(torch.rand(2, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="batch"):
        save_image(torch.rand(2, 3, 4, 4), tmp_path / "a.png")
    with pytest.raises(ValueError, match="finite"):
        save_image(torch.full((1, 4, 4), float("nan")), tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_image(torch.rand(1, 4, 4), tmp_path / "missing" / "a.png")
    assert _entries(tmp_path) == []


def test_load_errors_name_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(bad)
    with pytest.raises(ValueError, match="nothing.png"):
        load_image(tmp_path / "nothing.png")


def test_list_images(tmp_path):
    for name in ("b.png", "a.JPG", "c.bmp", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.bmp"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.bmp", "d.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        list_images(tmp_path / "absent")
