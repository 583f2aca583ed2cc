"""Collisions across runs (issue 10, point 2) as an adversarial matrix: two `ugpnet restore` runs over
one output folder (or S3 prefix), with the input tree or the settings changed in between.

Each case asserts the second run's exact outcome: exit status, each input's row (status and error
text), that error and skipped rows wrote nothing (outputs byte for byte as before), that inputs are
unchanged byte for byte, and that every output is named by exactly one done-marker of its own input.
Real runs through the CLI entry point on the module's 2-CPU Ray; tiny images and the tiny preset.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from restore_samples import photo

from pipelines import cli, storage
from pipelines.done_markers import DONE_DIR, parse_marker

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]
pytest_plugins = ["services"]

MODEL = "preset:tiny_denoise"
A_PNG, A_JPG = photo(20, 16, seed=1, fmt="PNG"), photo(20, 16, seed=2)


@dataclass(frozen=True)
class Case:
    name: str
    first: dict                      # input files of run 1 (relative name -> bytes); {} = no run 1
    change: dict                     # then: name -> bytes (added or rewritten), or None (deleted)
    expect: dict                     # run 2: input name -> (status, error text or "")
    flags_1: tuple = ()
    flags_2: tuple = ()
    exit_status: int = 0
    legacy_markers: bool = False     # rewrite run 1's markers as markers from before the tags were written


COLLIDES = "collision: output 'a.png' is already the output of {in}/a.png (done-marker under _ugpnet/done/"
CASES = [
    Case("sibling_extension_appears", {"a.png": A_PNG}, {"a.jpg": A_JPG},
         {"a.png": ("skipped", ""), "a.jpg": ("error", COLLIDES)}),
    Case("input_renamed_to_another_extension", {"a.png": A_PNG}, {"a.png": None, "a.jpg": A_JPG},
         {"a.jpg": ("error", COLLIDES)}, exit_status=3),  # 1 error of 1 input: exit 3
    Case("two_new_inputs_one_name", {}, {"a.jpg": A_JPG, "a.png": A_PNG},
         {"a.jpg": ("ok", ""), "a.png": ("error", "collision: output 'a.png' is already the output of {in}/a.jpg "
                                                  "in this run; {in}/a.png is not written")}),
    Case("legacy_marker_of_another_input", {"a.png": A_PNG}, {"a.jpg": A_JPG},
         {"a.png": ("ok", ""), "a.jpg": ("error", COLLIDES)}, legacy_markers=True),
    Case("nothing_changed", {"a.png": A_PNG}, {}, {"a.png": ("skipped", "")}),
    Case("input_rewritten_in_place", {"a.png": A_PNG}, {"a.png": photo(20, 16, seed=3, fmt="PNG")},
         {"a.png": ("ok", "")}),
    Case("fit_changed", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_2=("--fit", "tile")),
    Case("save_intermediate_added", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_2=("--save-intermediate",)),
    Case("jpg_quality_changed", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_1=("--ext", "jpg"),
         flags_2=("--ext", "jpg", "--quality", "60")),
    Case("png_quality_changes_no_byte", {"a.png": A_PNG}, {}, {"a.png": ("skipped", "")},
         flags_2=("--quality", "60")),
    Case("model_changed", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_2=("--model", MODEL + "@1")),
]


@dataclass
class Tree:
    """An input folder and an output root (a folder, or a prefix on the moto server)."""

    input_root: str
    output_root: str
    inputs: Path
    written: dict = field(default_factory=dict)

    def apply(self, files: dict) -> None:
        for name, data in files.items():
            path = self.inputs / name
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def input_bytes(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.inputs)): p.read_bytes() for p in sorted(self.inputs.rglob("*")) if p.is_file()}

    def output_files(self) -> dict[str, bytes]:
        root = storage.resolve(self.output_root)
        return {storage.relative_to(root, info.path): storage.read_bytes(storage.Location(root.spec, info.path))
                for info in storage.list_files(root)}


def restore(tree: Tree, run_id: str, flags: tuple) -> int:
    argv = ["restore", "--input", tree.input_root, "--output", tree.output_root, "--model", MODEL,
            "--run-id", run_id, *flags]
    if "--model" in flags:  # the case's own model replaces the default one
        index = argv.index("--model")
        del argv[index:index + 2]
    return cli.main(argv)


def rows_of(tree: Tree, run_id: str) -> dict[str, dict]:
    import pyarrow.dataset as pads

    location = storage.resolve(tree.output_root).child(f"_ugpnet/manifest/{run_id}")
    table = pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table()
    return {row["input_uri"]: row for row in table.to_pylist()}


def make_legacy(tree: Tree) -> None:
    """Run 1's markers as an older release wrote them: `<key>@<version>`, body {input_uri, run_id}."""
    root = storage.resolve(tree.output_root)
    for name, data in tree.output_files().items():
        marker = parse_marker(name)
        if marker is not None:
            body = json.loads(data)
            storage.delete_if_exists(root.child(name))
            storage.write_bytes(root.child(f"{DONE_DIR}/{marker.output_rel}@{marker.model_version}"),
                                json.dumps({"input_uri": body["input_uri"], "run_id": body["run_id"]}).encode())


def check_markers_name_their_own_inputs(tree: Tree) -> None:
    """Every output is described by exactly one marker, and that marker's body names an input that
    maps to that output name (never another input's)."""
    files = tree.output_files()
    outputs = {name for name in files if not name.startswith("_ugpnet/") and not name.startswith("_intermediate/")}
    markers = {}
    for name, data in files.items():
        marker = parse_marker(name)
        if marker is not None:
            assert marker.output_rel not in markers, f"two markers for {marker.output_rel}"
            markers[marker.output_rel] = json.loads(data)["input_uri"]
    assert set(markers) == outputs
    for key, uri in markers.items():
        assert uri.rsplit("/", 1)[1].rsplit(".", 1)[0] == key.rsplit(".", 1)[0], (key, uri)


def run_case(case: Case, tree: Tree) -> None:
    tree.apply(case.first)
    if case.first:
        assert restore(tree, "one", case.flags_1) == 0
        if case.legacy_markers:
            make_legacy(tree)
    tree.apply(case.change)
    inputs_before, outputs_before = tree.input_bytes(), tree.output_files()

    assert restore(tree, "two", case.flags_2) == case.exit_status
    rows = rows_of(tree, "two")
    prefix = tree.input_root.rstrip("/")
    assert set(rows) == {f"{prefix}/{name}" for name in case.expect}
    outputs_after = tree.output_files()
    for name, (status, error) in case.expect.items():
        row = rows[f"{prefix}/{name}"]
        assert row["status"] == status, row
        if error:
            assert row["error"].startswith(error.format(**{"in": prefix})), row["error"]
            assert row["error_kind"] == "collision" and row["output_uri"] is None
        else:
            assert row["error"] is None and row["output_uri"] is not None
    made = {row["output_uri"] for row in rows.values() if row["status"] == "ok"}
    root = storage.resolve(tree.output_root)
    for name in set(outputs_after) - set(outputs_before):  # new files: only the outputs of ok rows
        assert name.startswith(("_ugpnet/", "_intermediate/")) or root.child(name).uri in made, name
    if not made:  # nothing was (re)done: every output is byte for byte as before
        assert {k: v for k, v in outputs_after.items() if not k.startswith("_ugpnet/")} == \
               {k: v for k, v in outputs_before.items() if not k.startswith("_ugpnet/")}
    assert tree.input_bytes() == inputs_before
    check_markers_name_their_own_inputs(tree)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_collision_matrix_local(case, tmp_path):
    run_case(case, Tree(str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "in"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES[:2], ids=[case.name for case in CASES[:2]])
def test_collision_matrix_s3_output(case, tmp_path, s3_buckets):
    """The same with outputs and markers on S3 (the moto server)."""
    run_case(case, Tree(str(tmp_path / "in"), "s3://outputs/restored", tmp_path / "in"))


@pytest.mark.timeout(400)
def test_the_archive_never_takes_over_another_inputs_output(tmp_path):
    """Archive run 1 restores a.png; a.jpg appears. Run 2 plans a.jpg alone: it must neither delete
    a.png's marker nor overwrite a.png's output; a.jpg is committed as a collision error naming both,
    a.png stays ok, and the next run has nothing to redo."""
    from pipelines.archive import ArchiveConfig
    from pipelines.archive import run as archive_run
    from pipelines.archive_state import StateStore

    source, dest = tmp_path / "src", tmp_path / "dest"
    source.mkdir()
    (source / "a.png").write_bytes(A_PNG)
    config = ArchiveConfig(source=str(source), dest=str(dest), state=str(tmp_path / "state"), model=MODEL)
    store = StateStore(storage.resolve(str(tmp_path / "state")))
    assert archive_run(config).committed
    tree = Tree(str(source), str(dest), source)
    before = tree.output_files()

    (source / "a.jpg").write_bytes(A_JPG)
    inputs = tree.input_bytes()
    second = archive_run(config)
    assert (second.committed, second.new, second.selected, second.ok, second.errors) == (True, 1, 1, 0, 1)
    records = ("_ugpnet/manifest/", "_ugpnet/runs/")  # each run adds its own; nothing else may change
    assert {k: v for k, v in tree.output_files().items() if not k.startswith(records)} == \
           {k: v for k, v in before.items() if not k.startswith(records)}  # a.png's output and marker included
    assert tree.input_bytes() == inputs
    state = {row["key"]: row for row in store.iter_state(store.head())}
    assert (state["a.png"]["status"], state["a.png"]["output_uri"]) == ("ok", str(dest / "a.png"))
    assert (state["a.jpg"]["status"], state["a.jpg"]["error_kind"], state["a.jpg"]["output_uri"]) == \
           ("error", "collision", None)
    assert state["a.jpg"]["error"].startswith(f"collision: output 'a.png' is already the output of {source}/a.png")
    assert f"{source}/a.jpg is neither skipped nor written" in state["a.jpg"]["error"]
    check_markers_name_their_own_inputs(tree)
    assert archive_run(config).committed is False  # a collision is the input's own error: not retried
