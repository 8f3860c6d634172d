"""Test oracle: a faithful re-statement of the official PANet / PA-EDSR network definitions.

For tests ONLY (never imported by the package). It follows the official code
(github.com/SHI-Labs/Pyramid-Attention-Networks, ``*/code/model/{common,attention,panet,
paedsr}.py`` and ``utils/tools.py``) as SPEC section 3 describes it, including its quirks:

- ``ResBlock`` and ``BasicBlock`` take ``act=nn.PReLU()`` as a mutable default argument, and
  PANet passes ``nn.PReLU()`` positionally into the ``bias`` slot, so every PANet ResBlock
  uses the one default PReLU (it is even shared between instances of this module);
- PANet's attention is hard-wired to 64 channels, PA-EDSR's to 256 channels, reduction 8;
- PANet builds MeanShift modules but does not apply them; PA-EDSR registers its attention
  also as ``msa``;
- the attention loops over the images of a batch, extracts patches with TF-style "same"
  padding and resamples the pyramid with ``F.interpolate(..., mode='bicubic')`` and no
  further arguments (on PyTorch >= 1.6: the factor s is used directly, i.e. our
  ``recompute_scale_factor=False``).

One deliberate fix (SPEC section 3): the official ``Upsampler`` calls
``conv(n_feats, 4 * n_feats, 3, bias)``, which lands ``bias`` in ``stride``; here it is
``bias=bias``. The official networks' lenient ``load_state_dict`` overrides (which skip
``tail`` keys) are left out: tests load with the standard strict loader.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- utils/tools.py


def same_padding(images, ksizes, strides, rates):
    assert len(images.size()) == 4
    batch_size, channel, rows, cols = images.size()
    out_rows = (rows + strides[0] - 1) // strides[0]
    out_cols = (cols + strides[1] - 1) // strides[1]
    effective_k_row = (ksizes[0] - 1) * rates[0] + 1
    effective_k_col = (ksizes[1] - 1) * rates[1] + 1
    padding_rows = max(0, (out_rows - 1) * strides[0] + effective_k_row - rows)
    padding_cols = max(0, (out_cols - 1) * strides[1] + effective_k_col - cols)
    padding_top = int(padding_rows / 2.0)
    padding_left = int(padding_cols / 2.0)
    padding_bottom = padding_rows - padding_top
    padding_right = padding_cols - padding_left
    paddings = (padding_left, padding_right, padding_top, padding_bottom)
    images = torch.nn.ZeroPad2d(paddings)(images)
    return images


def extract_image_patches(images, ksizes, strides, rates, padding="same"):
    assert len(images.size()) == 4
    assert padding in ["same", "valid"]
    if padding == "same":
        images = same_padding(images, ksizes, strides, rates)
    unfold = torch.nn.Unfold(kernel_size=ksizes, dilation=rates, padding=0, stride=strides)
    patches = unfold(images)
    return patches  # [N, C*k*k, L]


def reduce_sum(x, axis=None, keepdim=False):
    if not axis:
        axis = range(len(x.shape))
    for i in sorted(axis, reverse=True):
        x = torch.sum(x, dim=i, keepdim=keepdim)
    return x


# ----------------------------------------------------------------------------- model/common.py


def default_conv(in_channels, out_channels, kernel_size, stride=1, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size // 2), stride=stride, bias=bias)


class MeanShift(nn.Conv2d):
    def __init__(self, rgb_range, rgb_mean=(0.4488, 0.4371, 0.4040), rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.Tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.Tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class BasicBlock(nn.Sequential):
    def __init__(self, conv, in_channels, out_channels, kernel_size, stride=1, bias=True, bn=False, act=nn.PReLU()):
        m = [conv(in_channels, out_channels, kernel_size, bias=bias)]
        if bn:
            m.append(nn.BatchNorm2d(out_channels))
        if act is not None:
            m.append(act)
        super().__init__(*m)


class ResBlock(nn.Module):
    def __init__(self, conv, n_feats, kernel_size, bias=True, bn=False, act=nn.PReLU(), res_scale=1):
        super().__init__()
        m = []
        for i in range(2):
            m.append(conv(n_feats, n_feats, kernel_size, bias=bias))
            if bn:
                m.append(nn.BatchNorm2d(n_feats))
            if i == 0:
                m.append(act)
        self.body = nn.Sequential(*m)
        self.res_scale = res_scale

    def forward(self, x):
        res = self.body(x).mul(self.res_scale)
        res += x
        return res


class Upsampler(nn.Sequential):
    def __init__(self, conv, scale, n_feats, bn=False, act=False, bias=True):
        m = []
        if (scale & (scale - 1)) == 0:  # Is scale = 2^n?
            for _ in range(int(math.log(scale, 2))):
                m.append(conv(n_feats, 4 * n_feats, 3, bias=bias))  # the one fix: official passes bias as stride
                m.append(nn.PixelShuffle(2))
                if bn:
                    m.append(nn.BatchNorm2d(n_feats))
                if act == "relu":
                    m.append(nn.ReLU(True))
                elif act == "prelu":
                    m.append(nn.PReLU(n_feats))
        elif scale == 3:
            m.append(conv(n_feats, 9 * n_feats, 3, bias=bias))
            m.append(nn.PixelShuffle(3))
            if bn:
                m.append(nn.BatchNorm2d(n_feats))
            if act == "relu":
                m.append(nn.ReLU(True))
            elif act == "prelu":
                m.append(nn.PReLU(n_feats))
        else:
            raise NotImplementedError
        super().__init__(*m)


# ----------------------------------------------------------------------------- model/attention.py


class PyramidAttention(nn.Module):
    def __init__(
        self,
        level=5,
        res_scale=1,
        channel=64,
        reduction=2,
        ksize=3,
        stride=1,
        softmax_scale=10,
        average=True,
        conv=default_conv,
    ):
        super().__init__()
        self.ksize = ksize
        self.stride = stride
        self.res_scale = res_scale
        self.softmax_scale = softmax_scale
        self.scale = [1 - i / 10 for i in range(level)]
        self.average = average
        escape_NaN = torch.FloatTensor([1e-4])
        self.register_buffer("escape_NaN", escape_NaN)
        self.conv_match_L_base = BasicBlock(conv, channel, channel // reduction, 1, bn=False, act=nn.PReLU())
        self.conv_match = BasicBlock(conv, channel, channel // reduction, 1, bn=False, act=nn.PReLU())
        self.conv_assembly = BasicBlock(conv, channel, channel, 1, bn=False, act=nn.PReLU())

    def forward(self, input):
        res = input
        # theta
        match_base = self.conv_match_L_base(input)
        shape_base = list(res.size())
        input_groups = torch.split(match_base, 1, dim=0)
        kernel = self.ksize
        raw_w = []  # for reconstruction
        w = []  # for matching
        # build feature pyramid
        for i in range(len(self.scale)):
            ref = input
            if self.scale[i] != 1:
                ref = F.interpolate(input, scale_factor=self.scale[i], mode="bicubic")
            # feature transformation function f
            base = self.conv_assembly(ref)
            shape_input = base.shape
            raw_w_i = extract_image_patches(
                base, ksizes=[kernel, kernel], strides=[self.stride, self.stride], rates=[1, 1], padding="same"
            )  # [N, C*k*k, L]
            raw_w_i = raw_w_i.view(shape_input[0], shape_input[1], kernel, kernel, -1)
            raw_w_i = raw_w_i.permute(0, 4, 1, 2, 3)  # [N, L, C, k, k]
            raw_w_i_groups = torch.split(raw_w_i, 1, dim=0)
            raw_w.append(raw_w_i_groups)

            # feature transformation function g
            ref_i = self.conv_match(ref)
            shape_ref = ref_i.shape
            w_i = extract_image_patches(
                ref_i, ksizes=[self.ksize, self.ksize], strides=[self.stride, self.stride], rates=[1, 1], padding="same"
            )
            w_i = w_i.view(shape_ref[0], shape_ref[1], self.ksize, self.ksize, -1)
            w_i = w_i.permute(0, 4, 1, 2, 3)  # [N, L, C, k, k]
            w_i_groups = torch.split(w_i, 1, dim=0)
            w.append(w_i_groups)

        y = []
        for idx, xi in enumerate(input_groups):
            wi = torch.cat([w[i][idx][0] for i in range(len(self.scale))], dim=0)  # [L, C, k, k]
            max_wi = torch.max(torch.sqrt(reduce_sum(torch.pow(wi, 2), axis=[1, 2, 3], keepdim=True)), self.escape_NaN)
            wi_normed = wi / max_wi
            xi = same_padding(xi, [self.ksize, self.ksize], [1, 1], [1, 1])
            yi = F.conv2d(xi, wi_normed, stride=1)  # [1, L, H, W]
            yi = yi.view(1, wi.shape[0], shape_base[2], shape_base[3])
            yi = F.softmax(yi * self.softmax_scale, dim=1)
            if self.average == False:  # noqa: E712 (official)
                yi = (yi == yi.max(dim=1, keepdim=True)[0]).float()
            raw_wi = torch.cat([raw_w[i][idx][0] for i in range(len(self.scale))], dim=0)
            yi = F.conv_transpose2d(yi, raw_wi, stride=self.stride, padding=1) / 4.0
            y.append(yi)

        y = torch.cat(y, dim=0) + res * self.res_scale
        return y


# ----------------------------------------------------------------------------- model/panet.py (DN_RGB, CAR, Demosaic)


class PANET(nn.Module):
    def __init__(self, args, conv=default_conv):
        super().__init__()
        n_resblocks = args.n_resblocks
        n_feats = args.n_feats
        kernel_size = 3
        rgb_mean = (0.4488, 0.4371, 0.4040)
        rgb_std = (1.0, 1.0, 1.0)
        self.sub_mean = MeanShift(args.rgb_range, rgb_mean, rgb_std)
        msa = PyramidAttention()
        m_head = [conv(args.n_colors, n_feats, kernel_size)]
        # nn.PReLU() lands in `bias` (truthy -> conv bias on); `act` stays the shared default
        m_body = [
            ResBlock(conv, n_feats, kernel_size, nn.PReLU(), res_scale=args.res_scale) for _ in range(n_resblocks // 2)
        ]
        m_body.append(msa)
        for i in range(n_resblocks // 2):
            m_body.append(ResBlock(conv, n_feats, kernel_size, nn.PReLU(), res_scale=args.res_scale))
        m_body.append(conv(n_feats, n_feats, kernel_size))
        m_tail = [conv(n_feats, args.n_colors, kernel_size)]
        self.add_mean = MeanShift(args.rgb_range, rgb_mean, rgb_std, 1)
        self.head = nn.Sequential(*m_head)
        self.body = nn.Sequential(*m_body)
        self.tail = nn.Sequential(*m_tail)

    def forward(self, x):
        # x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.tail(res)
        # x = self.add_mean(x)
        return x


# ----------------------------------------------------------------------------- model/paedsr.py (SR)


class PAEDSR(nn.Module):
    def __init__(self, args, conv=default_conv):
        super().__init__()
        n_resblock = args.n_resblocks
        n_feats = args.n_feats
        kernel_size = 3
        scale = args.scale[0]
        act = nn.ReLU(True)
        rgb_mean = (0.4488, 0.4371, 0.4040)
        rgb_std = (1.0, 1.0, 1.0)
        self.sub_mean = MeanShift(args.rgb_range, rgb_mean, rgb_std)
        self.msa = PyramidAttention(channel=256, reduction=8, res_scale=args.res_scale)
        m_head = [conv(args.n_colors, n_feats, kernel_size)]
        m_body = [
            ResBlock(conv, n_feats, kernel_size, act=act, res_scale=args.res_scale) for _ in range(n_resblock // 2)
        ]
        m_body.append(self.msa)
        for _ in range(n_resblock // 2):
            m_body.append(ResBlock(conv, n_feats, kernel_size, act=act, res_scale=args.res_scale))
        m_body.append(conv(n_feats, n_feats, kernel_size))
        m_tail = [
            Upsampler(conv, scale, n_feats, act=False),
            nn.Conv2d(n_feats, args.n_colors, kernel_size, padding=(kernel_size // 2)),
        ]
        self.add_mean = MeanShift(args.rgb_range, rgb_mean, rgb_std, 1)
        self.head = nn.Sequential(*m_head)
        self.body = nn.Sequential(*m_body)
        self.tail = nn.Sequential(*m_tail)

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.tail(res)
        x = self.add_mean(x)
        return x
