"""Which module each training stage trains, and how the rest is frozen (reference §5, §3.8).

Stage 1 trains the restoration module, stage 2 the synthesis module (generator fine-tuned too),
stage 3 the fusion module. Everything else is frozen and kept in eval mode, so BatchNorm running
statistics of frozen modules never move. Parameters that cannot influence the output (unused
backbone heads, the generator layers the base code replaces, the mapping MLP) are frozen too:
they stay in checkpoints only for compatibility.
"""

from torch import nn

from ugpnet.model import UGPNet

STAGE_MODULES = {"restoration": "resmodule", "synthesis": "synmodule", "fusion": "fusmodule"}
STAGES = tuple(STAGE_MODULES)


def prepare_for_stage(model: UGPNet, stage: str) -> list[nn.Parameter]:
    """Freeze everything but `stage`'s module, set train/eval modes; return the trainable parameters."""
    if stage not in STAGE_MODULES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    module_name = STAGE_MODULES[stage]
    unused = set(model.unused_parameter_names())
    model.eval().requires_grad_(False)
    trainable = []
    for name, param in model.named_parameters():
        if name.startswith(module_name + ".") and name not in unused:
            param.requires_grad_(True)
            trainable.append(param)
    getattr(model, module_name).train()
    return trainable
