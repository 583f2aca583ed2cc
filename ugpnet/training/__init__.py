"""Per-stage training in plain PyTorch (no Ray, MLflow or S3 here): hyperparameters and StageTrainer."""

from ugpnet.training.hyperparams import (
    OFFICIAL,
    StageHyperparams,
    TrainHyperparams,
    check_hyperparams,
    check_perceptual_weights,
    check_stage_hyperparams,
    default_hyperparams,
)
from ugpnet.training.initialisation import init_discriminator, init_generator, init_regression_backbone
from ugpnet.training.trainer import StageTrainer
from ugpnet.vgg import MissingWeightsError, PerceptualWeights

__all__ = [
    "OFFICIAL", "MissingWeightsError", "PerceptualWeights", "StageHyperparams", "StageTrainer", "TrainHyperparams",
    "check_hyperparams", "check_perceptual_weights", "check_stage_hyperparams", "default_hyperparams",
    "init_discriminator", "init_generator", "init_regression_backbone",
]
