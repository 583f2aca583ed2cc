"""The fast inference path (the default without autograd) computes what the reference path does."""

import copy

import pytest
import torch
from torch import nn

import ugpnet
from ugpnet.archs.hinet import HINet
from ugpnet.archs.stylegan2 import ModulatedConv2d
from ugpnet.fastpath import runs_fast, set_fast
from ugpnet.ops import make_resample_kernel, upfirdn2d, upfirdn2d_depthwise

TINY = ["tiny_denoise", "tiny_deblur", "tiny_unet_denoise", "tiny_hinet_denoise", "tiny_sr_x8"]
TOLERANCE = 1e-4  # relative L2, as the conformance tests


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def with_noise(model):
    """Noise strengths start at 0; make the noise inputs count so their fast-path adds are checked."""
    for name, param in model.synmodule.generator.named_parameters():
        if name.endswith("weight") and param.shape == (1,):
            param.data.fill_(0.5)
    return model


def fast_and_reference(preset):
    fast = with_noise(ugpnet.build(preset, seed=0))
    return fast, set_fast(copy.deepcopy(fast), False)


def lq_for(model, batch, seed=1):
    return torch.rand(batch, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_matches_the_reference_path(preset, batch):
    fast, reference = fast_and_reference(preset)
    lq = lq_for(fast, batch)
    with torch.inference_mode():
        assert runs_fast(fast) and not runs_fast(reference)
        ours, ref = fast(lq, return_all=True), reference(lq, return_all=True)
    for name, a, b in zip(ours._fields, ours, ref, strict=True):
        assert a.is_contiguous(), name  # callers get plain NCHW whatever the inside used
        assert relative_error(a, b) <= TOLERANCE, name


def test_with_autograd_the_default_model_is_the_reference_computation():
    fast, reference = fast_and_reference("tiny_denoise")
    lq = lq_for(fast, 2)
    outputs, grads = [], []
    for model in (fast, reference):
        out = model(lq, return_all=True)
        loss = sum(t.square().mean() for t in out)
        loss.backward()
        outputs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


@pytest.mark.parametrize("upsample,demodulate,kernel_size", [(False, True, 3), (True, True, 3),
                                                             (False, False, 1)])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_modulated_conv_as_plain_convs_matches_the_grouped_conv(upsample, demodulate, kernel_size, batch,
                                                                channels_last):
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, kernel_size, 16, demodulate=demodulate, upsample=upsample)
    x, style = torch.randn(batch, 8, 9, 9), torch.randn(batch, 16)
    with torch.inference_mode():
        ref = conv._forward_reference(x, style)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ours = conv(x, style)
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) <= 1e-6


@pytest.mark.parametrize("down,pad", [(1, (1, 1)), (1, (2, 1)), (2, (2, 2)), (2, (1, 2)), (1, (-1, 0))])
def test_depthwise_fir_filter_matches_upfirdn2d(down, pad):
    kernel = make_resample_kernel((1, 3, 3, 1)) * 4
    x = torch.randn(2, 5, 17, 17)
    ref = upfirdn2d(x, kernel, 1, down, pad)
    for layout in (torch.contiguous_format, torch.channels_last):
        ours = upfirdn2d_depthwise(x.contiguous(memory_format=layout), kernel, down, pad)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        assert ours.is_contiguous(memory_format=layout)  # keeps the caller's layout: no copies


def test_hinet_fast_path_stays_channels_last_through_the_half_instance_norm():
    # nn.InstanceNorm2d returns a contiguous tensor; before the in-place half norm that turned every
    # later block (all of stage 2) contiguous, which kept hinet_deblur's fast path at 1.29x.
    torch.manual_seed(0)
    net = HINet(wf=8, depth=3, hin_position_left=1, hin_position_right=2)  # HIN in later blocks, as GoPro
    for norm in (m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)):
        norm.weight.data.uniform_(0.5, 1.5)  # non-trivial affine, so the in-place form is checked
        norm.bias.data.normal_()
    reference = set_fast(copy.deepcopy(net), False)
    calls = []  # (conv name, its input was channels_last)
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.register_forward_hook(lambda m, args, out, name=name: calls.append(
                (name, args[0].is_contiguous(memory_format=torch.channels_last))))
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, ref = net(image), reference(image)
    assert [name for name, channels_last in calls if not channels_last] == []
    assert [name for name, _ in calls].count("conv_01") == 1  # stage 2 reuses the stem, as it may
    assert relative_error(ours, ref) <= 1e-5
