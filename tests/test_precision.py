"""bf16 on CPU stays within the tolerance documented in docs/execution.md, on a conformance input."""

import pytest
import torch
from conformance_fixtures import lq_input, reference_outputs, write_official_files

import ugpnet
from ugpnet.inference import autocast, eight_bit_distance

# docs/execution.md: bf16 against fp32, outputs written as 8-bit images, on the conformance inputs.
BF16_RELATIVE_L2 = 0.05
PRESET = "rrdb_x8"  # the cheapest official preset on CPU (64 px in, 512 px out)


@pytest.mark.slow
def test_bf16_on_cpu_stays_within_the_documented_tolerance(tmp_path):
    model = ugpnet.import_official(PRESET, **write_official_files(PRESET, tmp_path))
    with torch.inference_mode(), autocast("bf16", torch.device("cpu")):
        outputs = model(lq_input(PRESET), return_all=True)
    reference = reference_outputs(PRESET)  # the official fp32 outputs: a centre crop and a subsampled grid
    distances = {}
    for name, tensor in zip(("I_R", "I_G", "I_F"), outputs, strict=True):
        ours = tensor[0].float()
        size = ours.shape[-1]
        c, step = size // 2 - 64, size // 128
        for part, values in (("crop", ours[:, c:c + 128, c:c + 128]), ("sub", ours[:, ::step, ::step])):
            distances[name, part] = eight_bit_distance(torch.from_numpy(reference[f"{name}_{part}"]), values)
    assert all(d["relative_l2"] <= BF16_RELATIVE_L2 for d in distances.values()), distances
    assert any(d["relative_l2"] > 0 for d in distances.values()), "bf16 changed nothing: autocast was not applied"
