"""UGPNet forward semantics, the generator's skipped layers, and per-stage training isolation."""

import pytest
import torch

import ugpnet
from ugpnet.stages import STAGE_MODULES, prepare_for_stage

TINY = ["tiny_denoise", "tiny_deblur", "tiny_unet_denoise", "tiny_hinet_denoise", "tiny_sr_x8"]


def lq_for(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, model.input_size, model.input_size, generator=g)


@pytest.mark.parametrize("preset", TINY)
def test_return_all_gives_named_outputs_at_output_size(preset):
    model = ugpnet.build(preset, seed=0)
    with torch.inference_mode():
        out = model(lq_for(model, batch=3), return_all=True)
        fused = model(lq_for(model, batch=3))
    size = model.input_size * model.scale
    for tensor in out:
        assert tensor.shape == (3, 3, size, size)
    assert torch.equal(out.fused, fused)
    assert out._fields == ("restored", "synthesized", "fused")


def test_batch_items_are_independent():
    model = ugpnet.build("tiny_denoise", seed=0)
    lq = lq_for(model, batch=4)
    with torch.inference_mode():
        batched = model(lq)
        single = torch.cat([model(lq[i:i + 1]) for i in range(4)])
    # Batched convs sum in another order; compare relative to the output's magnitude.
    scale = batched.abs().max().item()
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5 * scale)


def test_skipping_discarded_generator_layers_changes_nothing():
    model = ugpnet.build("tiny_denoise", seed=0)
    lq = lq_for(model)
    with torch.inference_mode():
        skipped = model(lq, return_all=True)
        computed = model(lq, return_all=True, compute_discarded=True)
    for a, b in zip(skipped, computed, strict=True):
        assert torch.equal(a, b)


def test_fixed_noise_is_deterministic_and_randomize_noise_is_not():
    model = ugpnet.build("tiny_denoise", seed=0)
    for p in model.synmodule.generator.parameters():  # noise strengths start at 0: make noise matter
        if p.shape == (1,):
            p.data.fill_(0.5)
    lq = lq_for(model)
    with torch.inference_mode():
        assert torch.equal(model(lq), model(lq))
        assert not torch.equal(model(lq, randomize_noise=True), model(lq, randomize_noise=True))


def test_wrong_input_size_names_the_expected_size():
    model = ugpnet.build("tiny_denoise")
    with pytest.raises(ValueError, match=r"\(B,3,64,64\)"):
        model(torch.rand(1, 3, 60, 64))


@pytest.mark.parametrize("preset", ["tiny_denoise", "tiny_hinet_denoise", "tiny_sr_x8"])
def test_restoration_backbones_take_any_size(preset):
    model = ugpnet.build(preset)
    with torch.inference_mode():
        restored, feature = model.resmodule(torch.rand(1, 3, 37, 21))
    assert restored.shape[-2:] == (37 * model.scale, 21 * model.scale)
    assert feature.shape[-2:] == restored.shape[-2:]


def make_pretrained_like(model):
    """Official init zeroes NAFNet's beta/gamma and StyleGAN noise strengths, which blocks the
    gradient of the layers behind them at step 0; a trained checkpoint has them non-zero."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("preset", ["tiny_denoise", "tiny_sr_x8", "tiny_hinet_denoise"])
@pytest.mark.parametrize("stage", list(STAGE_MODULES))
def test_one_step_changes_exactly_the_stage_module(preset, stage):
    model = make_pretrained_like(ugpnet.build(preset, seed=0))
    trainable = prepare_for_stage(model, stage)
    module_name = STAGE_MODULES[stage]
    assert trainable, "a stage must have trainable parameters"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    out = model(lq_for(model), return_all=True)
    target = {"restoration": out.restored, "synthesis": out.synthesized, "fusion": out.fused}[stage]
    loss = (target - 0.5).abs().mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    trainable_names = {names[id(p)] for p in trainable}
    for name in trainable_names:
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    # Everything else is bit-identical: other modules, unused parameters, and every buffer outside
    # the trained module (the trained module's BatchNorm statistics may move in train mode).
    buffers = dict(model.named_buffers())
    for key in before.keys() - trainable_names:
        if key in buffers and key.startswith(module_name + "."):
            continue
        assert torch.equal(before[key], after[key]), f"{key} changed while training {module_name}"
    assert set(model.unused_parameter_names()).isdisjoint(trainable_names)
    frozen = [m for n, m in model.named_children() if n != module_name]
    assert all(not m.training for f in frozen for m in f.modules())
