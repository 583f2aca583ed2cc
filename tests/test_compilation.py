"""ugpnet.compiled.compile_model: the compiled model gives the reference outputs and fills the cache."""

import copy

import pytest
import torch

import ugpnet
from ugpnet.compiled import COMPILED_MODULES, compile_model

TOLERANCE = 1e-4  # relative L2, as the conformance tests


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute on 2 quiet cores, far longer under load
@pytest.mark.timeout(2400)
def test_compiled_model_matches_the_reference_and_fills_the_cache(tmp_path, monkeypatch):
    # compile_model sets process-wide cache variables; setting them here first makes monkeypatch restore them.
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.setenv(name, "")
    monkeypatch.delenv("TORCHINDUCTOR_FX_GRAPH_CACHE")
    reference = ugpnet.set_fast(ugpnet.build("tiny_denoise", seed=0), False)  # 64 px output
    compiled = compile_model(ugpnet.set_fast(copy.deepcopy(reference), True), cache_dir=tmp_path / "cache")
    lq = torch.rand(2, 3, reference.input_size, reference.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, ref = compiled(lq, return_all=True), reference(lq, return_all=True)
    for name, a, b in zip(ours._fields, ours, ref, strict=True):
        assert float((a - b).norm() / b.norm()) <= TOLERANCE, name
    assert list(compiled.state_dict()) == list(reference.state_dict())  # official keys, no _orig_mod.
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # inductor wrote its cache there


def test_one_entry_point_compiles_a_ugpnet_module_by_module_and_any_other_module_whole():
    # The bench and the model actors (pipelines/restore/model_runtime.py) both call compile_model: a whole
    # UGPNet compiles its three modules (split mode runs compiled too), an actor's single module
    # compiles itself. Compilation is lazy, so nothing is compiled here.
    model = ugpnet.build("tiny_denoise", seed=0)
    assert compile_model(model) is model
    assert all("forward" in vars(getattr(model, name)) for name in COMPILED_MODULES)  # compiled forward
    assert "forward" not in vars(model)
    fusion = ugpnet.build("tiny_denoise", seed=0).fusmodule
    assert compile_model(fusion, options={"freezing": True}) is fusion
    assert "forward" in vars(fusion)
    assert list(fusion.state_dict()) == list(ugpnet.build("tiny_denoise", seed=0).fusmodule.state_dict())
