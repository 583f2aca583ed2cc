"""`ugpnet presets` and `ugpnet import-official`: model-library commands that need no cluster."""

import json
from dataclasses import dataclass

from pipelines.common import options
from pipelines.common.options import option


@dataclass
class PresetsConfig(options.Declared):
    json: bool = option(False, help="print JSON instead of a table")


@dataclass
class ImportOfficialConfig(options.Declared):
    preset: str = option(help="official preset, e.g. nafnet_denoise")
    resmodule: str = option(help="resmodule_best_*.pth (or rrdbnet_x8_bicubic.pth)")
    synmodule: str = option(help="synmodule_*.pth")
    fusmodule: str = option(help="fusmodule_best.pth")
    out: str = option(help="bundle directory to write")


def add_parsers(sub) -> None:
    options.add_verb(sub, "presets", PresetsConfig, run_presets, help="list the model presets")
    options.add_verb(sub, "import-official", ImportOfficialConfig, run_import_official,
                     help="convert official UGPNet .pth files into a bundle")


def run_presets(args: PresetsConfig) -> int:
    import ugpnet

    infos = ugpnet.list_presets()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    print(f"{'preset':24} {'task':8} {'backbone':13} {'input':>6} {'output':>6} {'scale':>5} {'params':>12}")
    for i in infos:
        print(f"{i.name:24} {i.task:8} {i.backbone:13} {i.input_size:>6} {i.resolution:>6} {i.scale:>5} "
              f"{i.parameters:>12,}")
    return 0


def run_import_official(args: ImportOfficialConfig) -> int:
    import ugpnet
    from ugpnet.official import official_discriminator, read_official_file

    model = ugpnet.import_official(args.preset, resmodule=args.resmodule, synmodule=args.synmodule,
                                   fusmodule=args.fusmodule)
    extra = {}
    synthesis = read_official_file(args.synmodule)
    if "discriminator" in synthesis:
        extra["discriminator"] = official_discriminator(args.preset, synthesis).state_dict()
    provenance = {"source": "official", "resmodule": str(args.resmodule), "synmodule": str(args.synmodule),
                  "fusmodule": str(args.fusmodule)}
    out = ugpnet.save(model, args.out, provenance=provenance, extra_tensors=extra)
    print(f"wrote bundle {out} (preset {args.preset})")
    return 0
