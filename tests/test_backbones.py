"""Every registered backbone implements the declared interfaces (ugpnet.archs), and their members do
what they promise: the feature width is the width returned, unused parameters never reach the output,
and the identity warm start leaves the image channels of the feature empty (residual) or upscales the
input (direct)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ugpnet
from ugpnet.archs import RegressionBackbone, RestorationModule
from ugpnet.backbones import BACKBONES
from ugpnet.presets import PRESETS

TINY = [p for p in PRESETS.values() if p.name.startswith("tiny_")]
TEST_KWARGS = {name: next(p.backbone_kwargs for p in TINY if p.backbone == name) for name in BACKBONES}
NO_IDENTITY = {"hinet"}  # backbones whose init_identity refuses (ValueError)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return BACKBONES[name].build(**TEST_KWARGS[name]).eval()


def lq_batch(size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_declares_and_satisfies_the_interface(name):
    net = build(name)
    assert isinstance(net, RegressionBackbone)
    assert RegressionBackbone in type(net).__mro__  # declared, not only shaped alike
    with torch.no_grad():
        out = net(lq_batch())
    feature = out[1] if BACKBONES[name].approach == "direct" else out
    assert feature.shape[1] == net.feature_channels
    assert feature.shape[-1] == 32 * BACKBONES[name].scale


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_unused_parameters_are_real_and_never_reach_the_output(name):
    net = build(name)
    parameters = dict(net.named_parameters())
    assert set(net.unused_parameter_names()) <= set(parameters)
    lq = lq_batch()
    with torch.no_grad():
        before = net(lq)
        for unused in net.unused_parameter_names():
            parameters[unused].add_(1.0)
        after = net(lq)
    for a, b in zip(before if isinstance(before, tuple) else [before], after if isinstance(after, tuple) else [after],
                    strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - NO_IDENTITY))
def test_identity_init_does_what_the_approach_promises(name):
    net = build(name)
    lq = lq_batch()
    with torch.no_grad():
        net.init_identity()
        out = net(lq)
    if BACKBONES[name].approach == "residual":
        assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))
        assert out[:, 3:].abs().sum() > 0                    # the other channels keep their features
    else:
        image = out[0]
        expected = F.interpolate(F.interpolate(lq, scale_factor=4, mode="nearest"), scale_factor=2,
                                 mode="bilinear", align_corners=False)
        torch.testing.assert_close(image[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(NO_IDENTITY))
def test_a_backbone_without_identity_init_says_so(name):
    with pytest.raises(ValueError, match=name):
        build(name).init_identity()


@pytest.mark.parametrize("preset", [p.name for p in TINY])
def test_every_restoration_module_satisfies_its_interface(preset):
    model = ugpnet.build(preset, seed=0)
    resmodule = model.resmodule
    assert isinstance(resmodule, RestorationModule) and RestorationModule in type(resmodule).__mro__
    assert isinstance(resmodule.regression_backbone, RegressionBackbone)
    assert isinstance(resmodule.image_head, nn.Conv2d) and resmodule.image_head.out_channels == 3
    lq = lq_batch(model.input_size)
    with torch.no_grad():
        restored, _ = resmodule(lq)
        assert restored.shape[1] == 3
        resmodule.image_head.bias.add_(1.0)                  # the head really makes the restored image
        assert not torch.equal(resmodule(lq)[0], restored)


def test_a_class_lacking_a_member_is_refused():
    class Partial(nn.Module, RegressionBackbone):
        def __init__(self):
            super().__init__()
            self.feature_channels = 3

        def unused_parameter_names(self) -> list[str]:
            return []

    with pytest.raises(TypeError, match="init_identity"):
        Partial()

    class Undeclared(nn.Module):  # no feature_channels, no methods
        pass

    assert not isinstance(Undeclared(), RegressionBackbone)
