import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from perceptual_fixtures import write_perceptual_weights
from safetensors.torch import save_file

import ugpnet
from ugpnet.degradations import degrade, get_degradation, sample_seed
from ugpnet.model import build_discriminator
from ugpnet.stages import STAGE_MODULES
from ugpnet.state_dicts import CheckpointMismatchError
from ugpnet.tasks import TRAINING_DEGRADATIONS as DEFAULT_DEGRADATIONS
from ugpnet.training import (
    MissingWeightsError,
    PerceptualWeights,
    StageTrainer,
    TrainHyperparams,
    check_hyperparams,
    default_hyperparams,
)
from ugpnet.training.initialisation import init_discriminator, init_generator, init_regression_backbone

PRESETS = ("tiny_denoise", "tiny_sr_x8")


def fixed_batch(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, model.preset.resolution, model.preset.resolution, generator=g)
    lq = torch.nn.functional.interpolate(gt, size=(model.input_size,) * 2, mode="area") if model.scale > 1 else gt
    return (lq + 0.1 * torch.randn(lq.shape, generator=g)).clamp(0, 1), gt


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def round_trip(state):
    """Through torch.save / torch.load(weights_only=True), as a checkpoint on disk would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("stage", list(STAGE_MODULES))
def test_stage_changes_only_its_module_and_frozen_modules_stay_in_eval(preset, stage):
    model = ugpnet.build(preset, seed=0)
    before = snapshot(model)
    trainer = StageTrainer(model, stage, default_hyperparams(preset))
    lq, gt = fixed_batch(model)
    terms = [trainer.train_step(lq, gt) for _ in range(2)]
    after = model.state_dict()
    prefix = STAGE_MODULES[stage] + "."
    unused = set(model.unused_parameter_names())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefix) for k in changed), sorted(changed - {k for k in changed
                                                                                     if k.startswith(prefix)})
    assert not changed & unused
    for name, module in model.named_children():
        trained = name == STAGE_MODULES[stage]
        assert module.training == trained
        assert all(p.requires_grad == (trained and f"{name}.{n}" not in unused)
                   for n, p in module.named_parameters())
    assert trainer.step == 2 and all("loss" in t and "lr" in t for t in terms)
    if stage == "synthesis":
        assert {"d_loss", "r1", "l1", "adversarial"} <= set(terms[0]) and "r1" not in terms[1]


@pytest.mark.parametrize("stage", list(STAGE_MODULES))
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(stage):
    model = ugpnet.build("tiny_denoise", seed=0)
    hp = default_hyperparams("tiny_denoise").stage(stage)
    # a larger learning rate so that a handful of steps show it; no augmentation/GAN noise in stage 2
    hp = replace(hp, lr=1e-3, augment=False, adversarial_weight=0.0)
    trainer = StageTrainer(model, stage, hp)
    lq, gt = fixed_batch(model)
    key = "psnr_loss" if stage == "restoration" else "l1"
    losses = [trainer.train_step(lq, gt)[key] for _ in range(5)]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("stage", ["synthesis", "fusion"])
def test_state_dict_round_trip_resumes_with_identical_next_step(stage):
    hp = default_hyperparams("tiny_denoise")
    # R1 on the resumed step and a learning-rate milestone inside the run, so both must be restored
    hp = replace(hp, synthesis=replace(hp.synthesis, r1_interval=2), fusion=replace(hp.fusion, lr_milestones=(2,)))
    model = ugpnet.build("tiny_denoise", seed=0)
    trainer = StageTrainer(model, stage, hp)
    lq, gt = fixed_batch(model)
    for _ in range(2):
        trainer.train_step(lq, gt)
    model_state, trainer_state = round_trip(model.state_dict()), round_trip(trainer.state_dict())
    expected = trainer.train_step(lq, gt)

    resumed_model = ugpnet.build("tiny_denoise", seed=1)
    resumed_model.load_state_dict(model_state)
    resumed = StageTrainer(resumed_model, stage, hp)
    resumed.load_state_dict(trainer_state)
    assert resumed.step == 2
    assert resumed.train_step(lq, gt) == expected
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    with pytest.raises(ValueError, match="stage"):
        StageTrainer(ugpnet.build("tiny_denoise"), "restoration", hp).load_state_dict(trainer_state)


def test_missing_vgg_file_fails_at_construction_naming_the_file():
    hp = default_hyperparams("tiny_denoise")
    model = ugpnet.build("tiny_denoise", seed=0)
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(MissingWeightsError, match=r"fusion\.contextual_weight.*VGG19.*perceptual\.vgg19"):
        StageTrainer(model, "fusion", replace(hp.fusion, contextual_weight=0.05))
    with pytest.raises(MissingWeightsError, match=r"synthesis\.perceptual_weight.*VGG16.*/nowhere/vgg16\.pth"):
        StageTrainer(model, "synthesis", replace(hp.synthesis, perceptual_weight=10.0),
                     perceptual=PerceptualWeights(vgg16="/nowhere/vgg16.pth", lpips_heads="/nowhere/heads.pth"))
    assert [p.requires_grad for p in model.parameters()] == before  # nothing was touched


def test_check_hyperparams_names_the_field():
    hp = default_hyperparams("tiny_denoise")
    check_hyperparams(hp, "tiny_denoise")
    for stage, field, value, message in [
        ("restoration", "steps", 0, r"restoration\.steps must be > 0"),
        ("synthesis", "r1_interval", -1, r"synthesis\.r1_interval must be > 0"),
        ("fusion", "lr_milestones", (5, 3), r"fusion\.lr_milestones"),
        ("restoration", "pixel_loss", "l2", r"restoration\.pixel_loss must be one of"),
        ("fusion", "contextual_patch_size", 24, r"fusion\.contextual_patch_size must divide"),
        ("restoration", "adversarial_weight", 0.3, r"restoration\.adversarial_weight must be 0"),
        ("synthesis", "steps", "100", r"synthesis\.steps must be an integer, got '100'"),
        ("synthesis", "lr", None, r"synthesis\.lr must be a number"),
    ]:
        stage_hp = replace(hp.stage(stage), **{field: value})
        if field == "contextual_patch_size":
            stage_hp = replace(stage_hp, contextual_weight=0.05)
        with pytest.raises(ValueError, match=message):
            check_hyperparams(replace(hp, **{stage: stage_hp}), "tiny_denoise")
    with pytest.raises(MissingWeightsError, match="vgg19"):
        check_hyperparams(replace(hp, fusion=replace(hp.fusion, contextual_weight=0.05)))
    assert TrainHyperparams.from_dict(round_trip(hp.to_dict())) == hp
    partial = TrainHyperparams.from_dict({"synthesis": {"lr": 2e-4}, "perceptual": {"vgg19": "/v.pth"}}, base=hp)
    assert partial.synthesis == replace(hp.synthesis, lr=2e-4) and partial.perceptual.vgg19 == "/v.pth"
    without_steps = hp.to_dict()
    del without_steps["fusion"]["steps"]
    with pytest.raises(ValueError, match=r"fusion\.steps is required"):
        TrainHyperparams.from_dict(without_steps)
    with pytest.raises(ValueError, match="unknown fields in fusion: lr_typo"):
        TrainHyperparams.from_dict({"fusion": {"lr_typo": 1}}, base=hp)


def test_official_defaults_match_the_reference():
    hp = default_hyperparams("nafnet_denoise")
    assert (hp.restoration.lr, hp.restoration.steps, hp.restoration.pixel_loss) == (1e-4, 20_000, "psnr")
    assert (hp.synthesis.lr, hp.synthesis.discriminator_lr, hp.synthesis.perceptual_weight,
            hp.synthesis.adversarial_weight, hp.synthesis.r1_gamma, hp.synthesis.r1_interval) == (
        1e-4, 2.5e-5, 10.0, 0.3, 10.0, 10)
    assert (hp.fusion.lr, hp.fusion.lr_milestones, hp.fusion.perceptual_weight, hp.fusion.contextual_weight,
            hp.fusion.contextual_patch_size) == (1e-3, (8000,), 10.0, 0.05, 128)
    assert all(hp.stage(s).batch_size == 8 for s in STAGE_MODULES) and hp.seed == 777
    small = default_hyperparams("small_denoise")
    assert small.synthesis.perceptual_weight == small.fusion.perceptual_weight == small.fusion.contextual_weight == 0


def test_perceptual_and_contextual_terms_with_supplied_weights(tmp_path):
    weights = write_perceptual_weights(tmp_path)
    hp = default_hyperparams("tiny_denoise")
    hp = replace(hp, perceptual=weights,
                 fusion=replace(hp.fusion, perceptual_weight=10.0, contextual_weight=0.05, lpips_resize=64))
    model = ugpnet.build("tiny_denoise", seed=0)
    trainer = StageTrainer(model, "fusion", hp)
    terms = trainer.train_step(*fixed_batch(model))
    assert terms["lpips"] > 0 and terms["contextual"] > 0
    assert terms["loss"] == pytest.approx(terms["l1"] + 10 * terms["lpips"] + 0.05 * terms["contextual"], rel=1e-5)


def test_validate_reports_each_output_and_the_input_baseline():
    model = ugpnet.build("tiny_sr_x8", seed=0)
    trainer = StageTrainer(model, "restoration", default_hyperparams("tiny_sr_x8"))
    metrics = trainer.validate(*fixed_batch(model))
    assert set(metrics) == {f"{o}_{m}" for o in ("restored", "synthesized", "fused") for m in ("psnr", "ssim")} | {
        "input_psnr", "count"}
    assert model.resmodule.training and not model.synmodule.training  # modes restored after validation


def test_wrapped_modules_train_through_the_wrapper_and_keep_plain_keys(tmp_path):
    """DistributedDataParallel with one gloo process: same numbers as unwrapped, unprefixed state dict."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    hp = replace(default_hyperparams("tiny_denoise"), seed=3)
    plain_model = ugpnet.build("tiny_denoise", seed=0)
    plain = StageTrainer(plain_model, "synthesis", hp)
    lq, gt = fixed_batch(plain_model)
    expected = [plain.train_step(lq, gt) for _ in range(2)]

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        wrapped_calls = []

        def wrap(module):
            wrapped_calls.append(type(module).__name__)
            return DistributedDataParallel(module)

        model = ugpnet.build("tiny_denoise", seed=0)
        trainer = StageTrainer(model, "synthesis", hp, wrap=wrap)
        got = [trainer.train_step(lq, gt) for _ in range(2)]
    finally:
        dist.destroy_process_group()
    assert wrapped_calls == ["SynModule", "StyleGAN2Discriminator"]
    assert set(model.state_dict()) == set(plain_model.state_dict())
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def procedural_photo(size: int, seed: int) -> torch.Tensor:
    """A photo-like test image (3,size,size) in [0,1]: a graded background and 40 soft-edged
    overlapping ellipses, half with striped texture. No image files ship with the project's packages."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.rand(3, 1, 1, generator=g) * (1 - y) + torch.rand(3, 1, 1, generator=g) * y
    for _ in range(40):
        cx, cy, rx, ry, frequency, angle, striped = torch.rand(7, generator=g).tolist()
        rx, ry = 0.03 + 0.2 * rx, 0.03 + 0.2 * ry
        inside = torch.sigmoid((1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2) * 20)
        direction = x * math.cos(math.pi * angle) + y * math.sin(math.pi * angle)
        stripes = 0.15 * torch.sin(2 * math.pi * (10 + 40 * frequency) * direction) * (striped > 0.5)
        image = image * (1 - inside) + (torch.rand(3, 1, 1, generator=g) + stripes) * inside
    return image.clamp(0, 1)


def random_crops(image: torch.Tensor, count: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    corners = rng.integers(0, image.shape[-1] - size + 1, (count, 2))
    return torch.stack([image[:, i:i + size, j:j + size] for i, j in corners])


@pytest.mark.slow
def test_stage_one_learns_to_denoise_held_out_crops():
    """Real learning, not a smoke test: 200 stage-1 iterations on crops of one image, then held-out
    crops of another image at σ = 25 come out cleaner than they went in. The learning rate is 10× the
    official 1e-4 (meant for 20k iterations) so that the check fits in well under a minute."""
    torch.manual_seed(0)
    model = ugpnet.build("tiny_denoise", seed=0)
    size = model.input_size
    hp = replace(default_hyperparams("tiny_denoise").restoration, lr=1e-3, batch_size=4)
    trainer = StageTrainer(model, "restoration", hp)
    train_image, held_out_image = procedural_photo(256, seed=0), procedural_photo(256, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        gt = random_crops(train_image, hp.batch_size, size, rng)
        lq = torch.stack([degrade(image, DEFAULT_DEGRADATIONS["denoise"], rng) for image in gt])
        trainer.train_step(lq, gt)
    val_gt = random_crops(held_out_image, 8, size, np.random.default_rng(1))
    val_lq = torch.stack([degrade(image, get_degradation("denoise_sigma25"), sample_seed(1, i))
                          for i, image in enumerate(val_gt)])
    metrics = trainer.validate(val_lq, val_gt)
    assert metrics["restored_psnr"] > metrics["input_psnr"] + 1.5, metrics


def test_pretrained_initialisation_from_basicsr_style_files(tmp_path):
    source = ugpnet.build("tiny_denoise", seed=1)
    torch.save({"params": source.resmodule.regression.state_dict()}, tmp_path / "nafnet.pth")
    torch.save({"params_ema": source.synmodule.generator.state_dict(), "params": {}}, tmp_path / "net_g.pth")
    source_discriminator = build_discriminator(source.preset)
    save_file(source_discriminator.state_dict(), str(tmp_path / "net_d.safetensors"))

    model, discriminator = ugpnet.build("tiny_denoise", seed=2), build_discriminator(source.preset)
    init_regression_backbone(model, tmp_path / "nafnet.pth")
    init_generator(model, tmp_path / "net_g.pth")
    init_discriminator(discriminator, tmp_path / "net_d.safetensors")
    for mine, theirs in [(model.resmodule.regression, source.resmodule.regression),
                         (model.synmodule.generator, source.synmodule.generator),
                         (discriminator, source_discriminator)]:
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(),
                                                     strict=True))
    with pytest.raises(CheckpointMismatchError, match="StyleGAN2 generator"):
        init_generator(model, tmp_path / "nafnet.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        init_regression_backbone(model, tmp_path / "missing.pth")
    sr = ugpnet.build("tiny_sr_x8", seed=0)  # direct approach: the backbone is the restoration module
    torch.save({"params_ema": sr.resmodule.state_dict()}, tmp_path / "rrdb.pth")
    init_regression_backbone(ugpnet.build("tiny_sr_x8", seed=1), tmp_path / "rrdb.pth")


def test_batches_of_the_wrong_shape_are_refused():
    model = ugpnet.build("tiny_sr_x8", seed=0)
    trainer = StageTrainer(model, "restoration", default_hyperparams("tiny_sr_x8"))
    lq, gt = fixed_batch(model)
    with pytest.raises(ValueError, match=r"lq \(B,3,8,8\) and gt \(B,3,64,64\)"):
        trainer.train_step(gt, gt)
    with pytest.raises(ValueError, match="got"):
        trainer.validate(lq, gt[:1])


@pytest.mark.parametrize("preset", ["tiny_denoise", "tiny_hinet_denoise", "tiny_sr_x8"])
def test_fusion_warm_start_reproduces_the_restoration_head(preset):
    from ugpnet.training.initialisation import FUSION_INIT_SHIFT, init_fusion_from_restoration

    model = ugpnet.build(preset, seed=3).eval()
    init_fusion_from_restoration(model)
    lq = torch.rand(2, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, fused = model(lq, return_all=True)
        feature = model.resmodule(lq)[1]
        head = model.resmodule.encoder.to_img.body[0] if hasattr(model.resmodule, "encoder") \
            else model.resmodule.conv_last
        expected = head(feature.clamp(min=-FUSION_INIT_SHIFT))
    # exact away from the 1-pixel border, where zero padding sees 0 instead of the shift
    torch.testing.assert_close(fused[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


def test_fusion_trainer_warm_starts_at_its_first_step_only():
    hp = default_hyperparams("tiny_denoise")
    assert hp.fusion.init_from_restoration and not default_hyperparams("nafnet_denoise").fusion.init_from_restoration
    model = ugpnet.build("tiny_denoise", seed=0)
    before = {k: v.clone() for k, v in model.fusmodule.state_dict().items()}
    trainer = StageTrainer(model, "fusion", hp)
    assert all(torch.equal(v, model.fusmodule.state_dict()[k]) for k, v in before.items())  # not at build
    trainer.train_step(*fixed_batch(model))
    assert not torch.equal(before["conv.weight"], model.fusmodule.conv.weight)
    with pytest.raises(ValueError, match="restoration.init_from_restoration"):
        StageTrainer(ugpnet.build("tiny_denoise"), "restoration",
                     replace(hp, restoration=replace(hp.restoration, init_from_restoration=True)))


@pytest.mark.parametrize("preset", ["tiny_denoise", "tiny_deblur"])
def test_restoration_warm_start_reproduces_the_input_exactly(preset):
    from ugpnet.training.initialisation import init_restoration_identity

    model = ugpnet.build(preset, seed=3).eval()
    lq = torch.rand(2, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.resmodule(lq)[0]
        init_restoration_identity(model)
        restored, feature = model.resmodule(lq)
    assert not torch.allclose(before, lq, atol=0.05)          # a fresh net is far from the identity
    torch.testing.assert_close(restored, lq, atol=1e-6, rtol=0)
    assert feature[:, 3:].abs().sum() > 0                      # the other channels keep their features


def test_sr_warm_start_is_nearest_x4_then_bilinear_x2():
    from ugpnet.training.initialisation import init_restoration_identity

    model = ugpnet.build("tiny_sr_x8", seed=3).eval()
    init_restoration_identity(model)
    lq = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        restored = model.resmodule(lq)[0]
    nearest = torch.nn.functional.interpolate(lq, scale_factor=4, mode="nearest")
    expected = torch.nn.functional.interpolate(nearest, scale_factor=2, mode="bilinear", align_corners=False)
    # exact inside; the outermost pixel differs (zero padding where bilinear repeats the edge)
    torch.testing.assert_close(restored[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_restoration_warm_start_refuses_what_it_cannot_do():
    from ugpnet.training.initialisation import init_restoration_identity

    with pytest.raises(ValueError, match="tiny_hinet_denoise|hinet"):
        init_restoration_identity(ugpnet.build("tiny_hinet_denoise", seed=0))
    trained = ugpnet.build("tiny_denoise", seed=0)
    with torch.no_grad():
        trained.resmodule.regression.decoders[0][0].gamma.fill_(0.1)
    with pytest.raises(ValueError, match="fresh NAFNet"):
        init_restoration_identity(trained)
    hp = default_hyperparams("tiny_denoise")
    with pytest.raises(ValueError, match="fusion.init_identity"):
        StageTrainer(ugpnet.build("tiny_denoise"), "fusion", replace(hp.fusion, init_identity=True))


def test_restoration_trainer_warm_starts_at_its_first_step_with_a_warm_up():
    """The warm start happens at the first step (a resumed trainer keeps its weights), and the lr
    warm-up keeps that first step small: without it Adam's first step moves every weight by about lr
    and the restored image falls far from the input."""
    from ugpnet.training.trainer import lr_factor

    model_lq = fixed_batch(ugpnet.build("tiny_deblur", seed=0))
    results = {}
    for warmup in (0, 50):
        model = ugpnet.build("tiny_deblur", seed=0)
        hp = replace(default_hyperparams("tiny_deblur").restoration, lr=5e-4, init_identity=True,
                     warmup_steps=warmup)
        trainer = StageTrainer(model, "restoration", hp)
        trainer.train_step(*model_lq)
        with torch.no_grad():
            restored = model.resmodule(model_lq[0])[0]
        results[warmup] = (restored - model_lq[0]).abs().mean().item()
    assert results[50] < 0.01 < results[0], results
    factor = lr_factor(replace(hp, warmup_steps=4, lr_milestones=(6, 8), lr_gamma=0.5))
    assert [factor(s) for s in range(10)] == [0.25, 0.5, 0.75, 1, 1, 1, 0.5, 0.5, 0.25, 0.25]
