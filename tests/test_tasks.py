"""The task registry (ugpnet.tasks) is the one vocabulary of tasks, and ugpnet.images.quantize_levels
the one 8-bit rounding rule: these tests fail when a verb, a preset or a rounding site keeps a copy
that drifts from them."""

import argparse
from dataclasses import fields

import numpy as np
import pytest
import torch

from pipelines.cli import build_parser
from pipelines.common.config_fields import ConfigError
from pipelines.demo import DemoConfig
from pipelines.evaluate.run import EvaluateConfig
from pipelines.train.config import TrainConfig, degradation_for, validate
from ugpnet import PRESETS, metrics
from ugpnet.baselines import BASELINES
from ugpnet.degradations import NAMED_DEGRADATIONS, Degradation, degrade
from ugpnet.fitting import tensor_to_pil
from ugpnet.images import quantize_levels, quantize_to_uint8
from ugpnet.inference import eight_bit_distance
from ugpnet.model_refs import DEFAULT_TASK as CHECKPOINT_DEFAULT_TASK
from ugpnet.tasks import DEFAULT_TASK, TASK_SPECS, TASKS, TRAINING_DEGRADATIONS, get_task

# Exact halves in float32 and float64 alike (k + 0.5 for even k): half-up gives k + 1, half-to-even k.
EVEN_LEVELS = np.arange(0, 255, 2)
HALVES = (EVEN_LEVELS + 0.5) / 255


def task_option(config_class):
    """The declaration of a verb config's `task` field (pipelines.common.options)."""
    return next(f for f in fields(config_class) if f.name == "task").metadata["option"]


# ---------------------------------------------------------------- one task vocabulary

def test_the_registry_is_keyed_by_name_and_lookups_name_the_known_tasks():
    assert TASKS == tuple(TASK_SPECS) and len(set(TASKS)) == len(TASKS)
    assert all(get_task(name).name == name for name in TASKS)
    assert DEFAULT_TASK in TASKS and CHECKPOINT_DEFAULT_TASK == DEFAULT_TASK
    with pytest.raises(ValueError, match="unknown task 'upscale'; tasks are " + ", ".join(TASKS)):
        get_task("upscale")


@pytest.mark.parametrize("config_class", [TrainConfig, DemoConfig, EvaluateConfig])
def test_every_verbs_task_choices_are_the_registry(config_class):
    assert task_option(config_class).choices == TASKS
    verb = {TrainConfig: "train", DemoConfig: "demo", EvaluateConfig: "evaluate"}[config_class]
    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    flag = next(a for a in parser._actions if "--task" in a.option_strings)
    assert f"one of {', '.join(TASKS)}" in flag.help


def test_the_demo_shows_the_default_task():
    assert DemoConfig().task == DEFAULT_TASK


def test_evaluate_accepts_exactly_the_registrys_tasks():
    for name in TASKS:
        config = EvaluateConfig(data="d", report="r", task=name).validate()
        spec = get_task(name)
        assert config.model == spec.default_model == f"default:{name}"
        assert config.strengths == spec.default_strengths
    with pytest.raises(ConfigError, match="must be one of " + ", ".join(TASKS)):
        EvaluateConfig(data="d", report="r", task="upscale").validate()


def test_train_accepts_exactly_the_registrys_tasks(tmp_path):
    for name in TASKS:
        config = TrainConfig(preset="tiny_denoise", data=str(tmp_path), run_name="t", task=name)
        assert degradation_for(config) == TRAINING_DEGRADATIONS[name]
    with pytest.raises(ValueError, match="must be one of " + ", ".join(TASKS)):
        validate(TrainConfig(preset="tiny_denoise", data=str(tmp_path), run_name="t", task="upscale"))


def test_every_preset_is_of_a_registered_task_at_that_tasks_scale():
    for preset in PRESETS.values():
        assert get_task(preset.task).scale == preset.scale, preset.name
    assert {preset.task for preset in PRESETS.values()} == set(TASKS)  # no task without a model


@pytest.mark.parametrize("name", TASKS)
def test_each_tasks_degradations_exist_and_match_its_scale(name):
    spec = get_task(name)
    assert NAMED_DEGRADATIONS[spec.training_degradation] == TRAINING_DEGRADATIONS[name]
    assert TRAINING_DEGRADATIONS[name].downscale == spec.scale
    assert NAMED_DEGRADATIONS[spec.demo_degradation].downscale == spec.scale
    assert all(spec.evaluation_degradation(s).downscale == spec.scale for s in spec.default_strengths)
    assert spec.fixed_strengths == (spec.scale > 1) and spec.label and spec.strength_label
    assert name in BASELINES


def test_a_super_resolution_task_is_evaluated_at_its_scale_only():
    sr = next(spec for spec in TASK_SPECS.values() if spec.scale > 1)
    with pytest.raises(ConfigError, match=f"×{sr.scale}"):
        EvaluateConfig(data="d", report="r", task=sr.name, strengths=str(sr.scale // 2)).validate()


# ---------------------------------------------------------------- one 8-bit rounding rule

def test_quantize_levels_rounds_exact_halves_up_for_numpy_and_torch():
    for dtype in (np.float32, np.float64):
        values = HALVES.astype(dtype)
        assert np.array_equal(values * dtype(255), EVEN_LEVELS + 0.5)  # the halves are exact
        levels = quantize_levels(values)
        assert levels.dtype == dtype and np.array_equal(levels, EVEN_LEVELS + 1)
        assert np.array_equal(quantize_to_uint8(values), EVEN_LEVELS + 1)
    for dtype in (torch.float32, torch.float64):
        levels = quantize_levels(torch.tensor(HALVES, dtype=dtype))
        assert levels.dtype == dtype and torch.equal(levels, torch.tensor(EVEN_LEVELS + 1, dtype=dtype))
    assert quantize_levels(np.array([-0.2, 1.3])).tolist() == [0, 255]
    assert quantize_levels(torch.tensor([-0.2, 1.3])).tolist() == [0, 255]


def test_every_site_that_rounds_to_8_bits_rounds_halves_up():
    image = torch.tensor(np.resize(HALVES, 3 * 8 * 8), dtype=torch.float32).view(3, 8, 8)
    expected = torch.tensor(np.resize(EVEN_LEVELS + 1, 3 * 8 * 8), dtype=torch.float32).view(3, 8, 8)
    # metrics: the half-up levels of `image` are `expected`, so their PSNR is infinite
    assert torch.isinf(metrics.psnr_uint8(image[None], expected[None] / 255)).all()
    # degradations: the final 8-bit rounding of every degraded input
    assert torch.equal((degrade(image, Degradation(), 0) * 255).round(), expected)  # k/255·255 is k ± an ulp
    # fitting: the PIL image a restored tensor becomes
    assert np.array_equal(np.asarray(tensor_to_pil(image)), expected.permute(1, 2, 0).numpy())
    # inference: the 8-bit distance between a tensor and its own half-up levels is zero
    assert eight_bit_distance(image[None], expected[None] / 255)["max_abs_levels"] == 0.0
