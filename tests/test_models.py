"""Models: official state-dict names, equality with the official code, registry, complexity, weights I/O."""

from __future__ import annotations

import os
import types

import official_panet_reference as official
import pytest
import torch
from torch import nn

from tri_panet import models
from tri_panet.models import (
    PAEDSR,
    PANet,
    TinyPANet,
    TinySR,
    available_models,
    create,
    load_pretrained,
    load_weights,
    model_complexity,
    model_info,
    save_weights,
)
from tri_panet.nn import PyramidAttention

# ------------------------------------------------------------------------ expected names (SPEC section 3)


def _attention_names(prefix: str) -> list[str]:
    names = [f"{prefix}escape_NaN"]
    for m in ("conv_match_L_base", "conv_match", "conv_assembly"):
        names += [f"{prefix}{m}.0.weight", f"{prefix}{m}.0.bias", f"{prefix}{m}.1.weight"]
    return names


def expected_panet_names(n_resblocks: int = 80) -> set[str]:
    """Written out from the SPEC text, independently of the model code."""
    half = n_resblocks // 2
    names = ["head.0.weight", "head.0.bias", "tail.0.weight", "tail.0.bias"]
    names += ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"]
    for i in list(range(half)) + list(range(half + 1, n_resblocks + 1)):
        names += [f"body.{i}.body.0.weight", f"body.{i}.body.0.bias", f"body.{i}.body.1.weight"]
        names += [f"body.{i}.body.2.weight", f"body.{i}.body.2.bias"]
    names += _attention_names(f"body.{half}.")
    names += [f"body.{n_resblocks + 1}.weight", f"body.{n_resblocks + 1}.bias"]
    return set(names)


def expected_paedsr_names(scale: int, n_resblocks: int = 32) -> set[str]:
    half = n_resblocks // 2
    names = ["head.0.weight", "head.0.bias", "tail.1.weight", "tail.1.bias"]
    names += ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"]
    for i in list(range(half)) + list(range(half + 1, n_resblocks + 1)):
        names += [f"body.{i}.body.0.weight", f"body.{i}.body.0.bias"]  # ReLU: no parameter
        names += [f"body.{i}.body.2.weight", f"body.{i}.body.2.bias"]
    names += _attention_names(f"body.{half}.") + _attention_names("msa.")
    names += [f"body.{n_resblocks + 1}.weight", f"body.{n_resblocks + 1}.bias"]
    n_up = {2: 1, 3: 1, 4: 2}[scale]
    for j in range(n_up):
        names += [f"tail.0.{2 * j}.weight", f"tail.0.{2 * j}.bias"]
    return set(names)


def test_panet_full_state_dict_names_and_shapes():
    with torch.device("meta"):
        rgb, y = PANet(), PANet(n_colors=1)
    sd = rgb.state_dict()
    assert set(sd) == expected_panet_names(80)
    assert sd["head.0.weight"].shape == (64, 3, 3, 3)
    assert sd["tail.0.weight"].shape == (3, 64, 3, 3)
    assert sd["body.3.body.1.weight"].shape == (1,)  # single-parameter PReLU
    assert sd["body.40.conv_match_L_base.0.weight"].shape == (32, 64, 1, 1)
    assert sd["body.40.conv_assembly.0.weight"].shape == (64, 64, 1, 1)
    assert sd["body.40.escape_NaN"].shape == (1,)
    assert sd["body.81.weight"].shape == (64, 64, 3, 3)
    sd1 = y.state_dict()
    assert set(sd1) == expected_panet_names(80)
    assert sd1["head.0.weight"].shape == (64, 1, 3, 3) and sd1["tail.0.weight"].shape == (1, 64, 3, 3)
    assert sd1["sub_mean.weight"].shape == (3, 3, 1, 1)  # official MeanShift is RGB even for Y models


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paedsr_full_state_dict_names_and_shapes(scale):
    with torch.device("meta"):
        model = PAEDSR(scale=scale)
    sd = model.state_dict()
    assert set(sd) == expected_paedsr_names(scale)
    assert model.msa is model.body[16]
    assert sd["msa.conv_match.0.weight"].shape == (32, 256, 1, 1)  # reduction 8
    assert sd["body.16.conv_assembly.0.weight"].shape == (256, 256, 1, 1)
    assert sd["tail.0.0.weight"].shape == ({2: 1024, 3: 2304, 4: 1024}[scale], 256, 3, 3)
    assert sd["tail.1.weight"].shape == (3, 256, 3, 3)
    assert model.msa.res_scale == pytest.approx(0.1)


def test_panet_shares_one_prelu():
    model = PANet(n_feats=8, n_resblocks=6, backend="torch")
    acts = [model.body[i].body[1] for i in (0, 1, 2, 4, 5, 6)]
    assert all(a is acts[0] for a in acts) and isinstance(acts[0], nn.PReLU)
    sd = model.state_dict()
    ptrs = {sd[f"body.{i}.body.1.weight"].data_ptr() for i in (0, 1, 2, 4, 5, 6)}
    assert len(ptrs) == 1
    # the attention's PReLUs are its own
    assert model.attention.conv_match[1] is not acts[0]


def _conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def test_parameter_counts_of_published_networks():
    """Counted from the SPEC layout by hand; MeanShift (2 x 12, frozen) included in 'params'."""
    with torch.device("meta"):
        panet, paedsr = PANet(), PAEDSR(scale=2)
    att64 = 2 * (_conv_params(64, 32, 1) + 1) + _conv_params(64, 64, 1) + 1
    expect_panet = (
        _conv_params(3, 64, 3)
        + 80 * 2 * _conv_params(64, 64, 3)
        + 1
        + att64
        + _conv_params(64, 64, 3)
        + _conv_params(64, 3, 3)
    )
    att256 = 2 * (_conv_params(256, 32, 1) + 1) + _conv_params(256, 256, 1) + 1
    expect_paedsr = (
        _conv_params(3, 256, 3)
        + 32 * 2 * _conv_params(256, 256, 3)
        + att256
        + _conv_params(256, 256, 3)
        + _conv_params(256, 1024, 3)
        + _conv_params(256, 3, 3)
    )
    c1, c2 = model_complexity(panet, (8, 8)), model_complexity(paedsr, (8, 8))
    assert c1["trainable_params"] == expect_panet == 5_957_255
    assert c1["params"] == expect_panet + 24
    assert c2["trainable_params"] == expect_paedsr == 40_811_846


# ------------------------------------------------------------------------ equality with the official code


def _randomise(model: nn.Module, std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # MeanShift stays as built
                p.copy_(torch.randn(p.shape, generator=g) * std + (0.25 if p.numel() == 1 else 0.0))


def _check_same(ref: nn.Module, ours: nn.Module, x: torch.Tensor) -> None:
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        r64, o64 = ref.double()(x.double()), ours.double()(x.double())
        torch.testing.assert_close(o64, r64, rtol=0, atol=1e-10)
        r32, o32 = ref.float()(x), ours.float()(x)
        torch.testing.assert_close(o32, r32, rtol=1e-5, atol=2e-6)
        # the attention matters: moving its value embedding moves the output (the test can fail)
        ours.attention.conv_assembly[0].bias.add_(0.5)
        assert (ours(x) - o32).abs().max() > 1e-3


def test_panet_matches_official_code():
    # the official PANet attention is hard-wired to 64 channels
    args = types.SimpleNamespace(n_resblocks=2, n_feats=64, rgb_range=1, n_colors=3, res_scale=1, scale=[1])
    ref = official.PANET(args)
    _randomise(ref, 0.05, seed=1)
    ours = PANet(n_resblocks=2, recompute_scale_factor=False, backend="torch")
    x = torch.rand(2, 3, 11, 13, generator=torch.Generator().manual_seed(2))
    _check_same(ref, ours, x)


@pytest.mark.parametrize("scale", [2, 3])
def test_paedsr_matches_official_code(scale):
    # the official PA-EDSR attention is hard-wired to 256 channels, reduction 8
    args = types.SimpleNamespace(n_resblocks=2, n_feats=256, rgb_range=1, n_colors=3, res_scale=0.1, scale=[scale])
    ref = official.PAEDSR(args)
    _randomise(ref, 0.02, seed=3)
    ours = PAEDSR(scale=scale, n_resblocks=2, recompute_scale_factor=False, backend="torch")
    x = torch.rand(1, 3, 9, 8, generator=torch.Generator().manual_seed(4))
    _check_same(ref, ours, x)


def test_meanshift_applied_in_paedsr_not_in_panet():
    panet, paedsr = PANet(n_feats=8, n_resblocks=2), PAEDSR(n_feats=8, n_resblocks=2, reduction=2)
    for m in (panet, paedsr):
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.zero_()
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        assert torch.equal(panet(x), torch.zeros_like(x))
        y = paedsr(x)
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, mean.expand(1, 3, 12, 14))


# ------------------------------------------------------------------------ tiny models and registry

ALL_NAMES = [
    "panet-denoise",
    "panet-demosaic",
    "panet-jpeg",
    "paedsr-x2",
    "paedsr-x3",
    "paedsr-x4",
    "tiny-denoise",
    "tiny-jpeg",
    "tiny-demosaic",
    "tiny-sr-x2",
    "tiny-sr-x3",
    "tiny-sr-x4",
    "fast-denoise",
    "fast-jpeg",
    "fast-demosaic",
    "fast-sr-x2",
    "fast-sr-x3",
    "fast-sr-x4",
]


def test_registry_names_and_info():
    assert set(available_models()) == set(ALL_NAMES)
    expect = {
        "panet-jpeg": ("jpeg", 1, 1),
        "panet-denoise": ("denoise", 3, 1),
        "paedsr-x3": ("sr", 3, 3),
        "tiny-jpeg": ("jpeg", 1, 1),
        "tiny-demosaic": ("demosaic", 3, 1),
        "tiny-sr-x4": ("sr", 3, 4),
    }
    for name, (task, colours, scale) in expect.items():
        info = model_info(name)
        assert (info["task"], info["n_colors"], info["scale"]) == (task, colours, scale)
        assert info["description"]
    with pytest.raises(ValueError, match="available: panet-denoise"):
        create("panet-nope")
    with pytest.raises(TypeError, match="n_feat"):
        create("tiny-denoise", n_feat=8)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_create_every_name(name):
    info = model_info(name)
    small = {"n_feats": 16, "n_resblocks": 2, "backend": "torch"}
    if info["class"] == "PAEDSR":
        small["reduction"] = 8
    model = create(name, **small)
    assert model.model_name == name and model.attention.backend == "torch"
    assert model.n_colors == info["n_colors"] and model.scale == info["scale"]
    height, width = (9, 10) if model.multiple == 1 else (10, 12)  # the fast models unshuffle by 2
    x = torch.rand(2, info["n_colors"], height, width)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, info["n_colors"], height * info["scale"], width * info["scale"])
    with pytest.raises(ValueError, match="n_colors"):
        model(torch.rand(1, info["n_colors"] + 1, height, width))


def test_tiny_defaults_and_identity_start():
    model = TinyPANet(backend="torch")
    assert model.config["n_feats"] == 32 and model.config["n_resblocks"] == 8
    assert isinstance(model.body[4], PyramidAttention) and len(model.attention.scales) == 5
    assert model.attention.conv_match[0].out_channels == 16  # reduction 2
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(model(x), x)  # zero-initialised tail: identity before training
        sr = TinySR(scale=3, n_feats=8, n_resblocks=2, backend="torch")
        up = nn.functional.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False)
        torch.testing.assert_close(sr(x), up)
    loss = model(x).sub(x.flip(-1)).abs().mean()
    loss.backward()
    assert model.tail[0].weight.grad.abs().sum() > 0


def test_set_backend():
    model = create("tiny-denoise", n_feats=8, n_resblocks=2)
    assert models.set_backend(model, "reference").attention.backend == "reference"
    with pytest.raises(ValueError, match="backend"):
        models.set_backend(model, "nope")


# ------------------------------------------------------------------------ complexity


def test_complexity_of_a_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    c = model_complexity(conv, (10, 7))
    assert c["flops"] == 2 * 3 * 9 * 8 * 70 and c["attention_flops"] == 0
    assert c["params"] == 3 * 8 * 9 + 8
    assert c["flops_per_megapixel"] == pytest.approx(2 * 3 * 9 * 8 * 1e6)


def test_complexity_of_the_attention_block():
    block = PyramidAttention(channels=8, reduction=2, backend="torch")
    h, w = 8, 10
    sizes = [(8, 10), (7, 9), (6, 8), (5, 7), (4, 6)]  # floor(8 s) x floor(10 s) by hand
    keys = sum(a * b for a, b in sizes)
    convs = 2 * 8 * 4 * h * w + sum((2 * 8 * 4 + 2 * 8 * 8) * a * b for a, b in sizes)
    att = h * w * keys * (2 * 4 * 9 + 2 * 8 * 9)
    c = model_complexity(block, (h, w))
    assert (c["conv_flops"], c["attention_flops"]) == (convs, att)


def test_complexity_of_full_panet_matches_spec_numbers():
    with torch.device("meta"):
        model = PANet()
    c = model_complexity(model, (48, 48))
    assert c["attention_flops"] == 48 * 48 * 7470 * 1728  # SPEC: 7,470 keys at 48x48, 1728 FLOPs/pair
    convs3 = 2 * 9 * (3 * 64 + 161 * 64 * 64 + 64 * 3) * 48 * 48
    att_convs = 2 * 64 * 32 * 48 * 48 + (2 * 64 * 32 + 2 * 64 * 64) * 7470
    assert c["conv_flops"] == convs3 + att_convs


def test_complexity_leaves_the_model_alone():
    model = create("tiny-sr-x2", n_feats=8, n_resblocks=2, backend="torch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = model_complexity(model, (12, 12))
    assert c["flops"] > 0 and c["attention_sizes"] == [(12, 12)]
    assert model_complexity(create("fast-sr-x2", n_feats=8, n_resblocks=2), (12, 12))["attention_sizes"] == [(6, 6)]
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="size"):
        model_complexity(model, (12,))


# ------------------------------------------------------------------------ weights I/O


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    model = create("tiny-denoise", n_feats=8, n_resblocks=2, backend="torch", **kw)
    nn.init.normal_(model.tail[0].weight, std=0.1)
    return model


def test_save_load_roundtrip_and_rebuild(tmp_path):
    model = _tiny()
    path = save_weights(model, tmp_path / "m.safetensors", metadata={"note": "hi", "steps": 3})
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind
    meta = models.read_metadata(path)
    assert meta["tri_panet.model"] == "tiny-denoise" and meta["note"] == "hi" and meta["steps"] == "3"
    rebuilt = load_weights(path, backend="torch")
    assert isinstance(rebuilt, TinyPANet) and rebuilt.config == model.config
    other = load_weights(_tiny(seed=1), path)
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x)) and torch.equal(other(x), model(x))


def test_save_refuses_overwrite_and_pickle_suffix(tmp_path):
    model = _tiny()
    path = tmp_path / "m.safetensors"
    save_weights(model, path)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_weights(_tiny(seed=1), path)
    save_weights(_tiny(seed=1), path, overwrite=True)
    assert not torch.equal(load_weights(_tiny(), path).tail[0].weight, model.tail[0].weight)
    with pytest.raises(ValueError, match=".safetensors"):
        save_weights(model, tmp_path / "m.pth")


def test_save_load_aliased_modules(tmp_path):
    """PA-EDSR's msa/body.<n/2> alias and PANet's shared PReLU survive a round trip."""
    for model in (PAEDSR(n_feats=16, n_resblocks=2, backend="torch"), PANet(n_feats=8, n_resblocks=2, backend="torch")):
        _randomise(model, 0.1, seed=5)
        path = save_weights(model, tmp_path / f"{type(model).__name__}.safetensors")
        rebuilt = load_weights(path)
        assert set(models.load_state_file(path)) == set(model.state_dict())
        for k, v in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[k], v), k


def test_official_pth_checkpoint(tmp_path):
    """Official checkpoints are plain state dicts saved with torch.save: read with weights_only."""
    src = _tiny(seed=2)
    plain, wrapped = tmp_path / "model_N50.pt", tmp_path / "wrapped.pth"
    torch.save(src.state_dict(), plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        model = load_weights(_tiny(seed=9), path)
        assert torch.equal(model.tail[0].weight, src.tail[0].weight)
    with pytest.raises(ValueError, match="registry name"):
        load_weights(plain)  # a .pth says nothing about the model


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pth_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"head.0.weight": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_weights(_tiny(), path)


def test_missing_unexpected_and_shape_errors_name_the_keys(tmp_path):
    model = _tiny()
    sd = model.state_dict()
    sd.pop("tail.0.bias")
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(ValueError, match=r"missing keys: tail\.0\.bias.*unexpected keys: extra\.weight"):
        load_weights(model, tmp_path / "a.pth")
    load_weights(model, tmp_path / "a.pth", strict=False)
    sd = model.state_dict()
    sd["head.0.weight"] = torch.zeros(8, 3, 5, 5)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(ValueError, match=r"head\.0\.weight: file \(8, 3, 5, 5\) vs model \(8, 3, 3, 3\)"):
        load_weights(model, tmp_path / "b.pth")
    with pytest.raises(FileNotFoundError):
        load_weights(model, tmp_path / "nope.safetensors")


def test_load_pretrained(tmp_path, monkeypatch):
    from tri_panet.models import weights as weights_mod

    monkeypatch.setattr(weights_mod, "_bundled_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="bundled weights: none"):
        load_pretrained("tiny-denoise")
    model = _tiny(seed=4)
    save_weights(model, tmp_path / "tiny-denoise.safetensors")
    with pytest.raises(FileNotFoundError, match="bundled weights: tiny-denoise"):
        load_pretrained("tiny-jpeg")
    with pytest.raises(ValueError, match="unknown model name"):
        load_pretrained("nope")
    loaded = load_pretrained("tiny-denoise", backend="torch")
    assert not loaded.training and loaded.config == model.config
    assert torch.equal(loaded.tail[0].weight, model.tail[0].weight)


@pytest.mark.parametrize("scale", [1, 3])
def test_fast_variant_runs_attention_at_half_resolution(scale):
    """down=2: the attention sees a feature map of half the input side; an untrained model is
    the identity (or bicubic upsampling); odd input sides are refused with the multiple."""
    model = (
        TinyPANet(n_feats=8, n_resblocks=2, down=2, backend="torch")
        if scale == 1
        else TinySR(scale=scale, n_feats=8, n_resblocks=2, down=2, backend="torch")
    )
    assert model.multiple == 2 and model.config["down"] == 2
    seen = []
    model.attention.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        y = model(x)
    assert seen == [(1, 8, 5, 6)]
    expected = (
        x if scale == 1 else nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    )
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.rand(1, 3, 9, 12))


def test_full_resolution_config_has_no_down_key():
    """The metadata of the bundled full-resolution weights stays as it was."""
    assert "down" not in TinyPANet().config and "down" not in TinySR(scale=2).config


@pytest.mark.parametrize("cls", [TinyPANet, TinySR])
def test_ablation_variants_save_and_load(cls, tmp_path):
    """The ablation's variants: no attention block (an identity in its place, the other
    state-dict names unchanged) and single-scale non-local attention; both round-trip."""
    full = cls(n_feats=8, n_resblocks=2, backend="torch")
    bare = cls(n_feats=8, n_resblocks=2, attention=False)
    assert "attention" not in full.config and bare.config["attention"] is False
    assert not any(isinstance(m, PyramidAttention) for m in bare.modules())
    attention_names = {k for k in full.state_dict() if k.startswith("body.1.")}
    assert set(bare.state_dict()) == set(full.state_dict()) - attention_names
    with pytest.raises(ValueError, match="attention=False"):
        _ = bare.attention
    with pytest.raises(TypeError, match="attention must be a bool"):
        cls(attention="no")
    single = cls(n_feats=8, n_resblocks=2, scales=(1.0,), backend="torch")
    assert single.attention.scales == (1.0,)
    x = torch.rand(1, 3, 8, 8)
    for model in (bare, single):
        nn.init.normal_(model.tail[-1].weight)  # so that the output depends on the whole body
        rebuilt = load_weights(save_weights(model, tmp_path / "m.safetensors", overwrite=True), backend="torch")
        assert rebuilt.config == model.config
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), model(x))
