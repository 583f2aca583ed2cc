"""`ugpnet presets` and `ugpnet import-official`: model-library commands that need no cluster."""

import json


def add_parsers(sub) -> None:
    presets = sub.add_parser("presets", help="list the model presets")
    presets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    presets.set_defaults(handler=run_presets)

    imp = sub.add_parser("import-official", help="convert official UGPNet .pth files into a bundle")
    imp.add_argument("--preset", required=True, help="official preset, e.g. nafnet_denoise")
    imp.add_argument("--resmodule", required=True, help="resmodule_best_*.pth (or rrdbnet_x8_bicubic.pth)")
    imp.add_argument("--synmodule", required=True, help="synmodule_*.pth")
    imp.add_argument("--fusmodule", required=True, help="fusmodule_best.pth")
    imp.add_argument("--out", required=True, help="bundle directory to write")
    imp.set_defaults(handler=run_import_official)


def run_presets(args) -> int:
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


def run_import_official(args) -> int:
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
