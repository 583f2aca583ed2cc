"""train.run's plan: what it derives from the config, gathered once; and a config validated once."""

import shutil
from dataclasses import replace

import pytest

from pipelines.train.config import build_config, plan_run, validate
from ugpnet.degradations import NAMED_DEGRADATIONS
from ugpnet.tasks import TRAINING_DEGRADATIONS as DEFAULT_DEGRADATIONS


def config_in(tmp_path, **values):
    (tmp_path / "photos").mkdir(exist_ok=True)
    return build_config({"preset": "tiny_sr_x8", "data": str(tmp_path / "photos"), "run_name": "plan",
                         "storage": str(tmp_path / "runs"), **values})


def test_the_plan_holds_what_the_run_reads_from_the_config(tmp_path):
    config = config_in(tmp_path, stages=["fusion", "restoration"], steps="3,5")
    plan = plan_run(config)
    assert plan.config is config
    assert list(plan.stages) == ["restoration", "fusion"]          # run in STAGES order, not as given
    assert plan.stages["fusion"].steps == 3 and plan.stages["restoration"].steps == 5  # steps follow `stages`
    assert plan.stages["fusion"] is config.hyperparams.fusion
    assert (plan.task, plan.registered_name) == ("sr", "ugpnet-sr")
    assert plan.degradation is DEFAULT_DEGRADATIONS["sr"]
    assert plan.params == config.to_dict() and plan.hyperparams == config.hyperparams.to_dict()
    named = next(iter(NAMED_DEGRADATIONS))
    chosen = plan_run(config_in(tmp_path, degradation=named, task="sr", register="mine"))
    assert chosen.degradation is NAMED_DEGRADATIONS[named] and chosen.registered_name == "mine"


def test_a_config_is_validated_once(tmp_path):
    config = config_in(tmp_path)
    shutil.rmtree(tmp_path / "photos")
    validate(config)                          # build_config validated this very object: not checked again
    with pytest.raises(ValueError, match="data:"):
        validate(replace(config))             # an equal config that was never validated is checked
