"""restore, archive and evaluate on a two-node cluster whose nodes share nothing but S3 and the MLflow server
(tests/multinode.py), all submitted through the job server; training is in test_multinode_train.py."""


import pytest
from multinode import json_object, keys, succeeded, ugpnet
from restore_samples import photo

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["multinode"]

MODEL = "preset:tiny_denoise"


@pytest.fixture(scope="module")
def s3(multinode_cluster):
    client = multinode_cluster.s3.client()
    for bucket in ("mn-in", "mn-out"):
        client.create_bucket(Bucket=bucket)
    return client


@pytest.mark.timeout(900)
def test_restore_s3_to_s3_fused_and_split(multinode_cluster, s3):
    for index in range(3):
        s3.put_object(Bucket="mn-in", Key=f"restore/{index}.jpg", Body=photo(80, 64, seed=index))
    # Fused (default compact transport) ships its blended images as their exact 8-bit levels; split's
    # compact output tiles are float16 (within one level), so split runs under float32 here: compact
    # fused must then give split's bytes exactly.
    for mode, actors, transport in (("fused", "1", "compact"), ("split", "1,1,1", "float32")):
        logs = succeeded(multinode_cluster, ugpnet(
            "restore", "--input", "s3://mn-in/restore/", "--output", f"s3://mn-out/{mode}/", "--model", MODEL,
            "--stages", mode, "--actors", actors, "--run-id", mode, "--fit", "tile", "--transport", transport))
        assert f"restore {mode}: 3 ok, 0 error" in logs, logs[-3000:]
        assert [k for k in keys(s3, "mn-out", f"{mode}/") if k.endswith(".png")] == \
            [f"{mode}/{index}.png" for index in range(3)]
        assert json_object(s3, "mn-out", f"{mode}/_ugpnet/runs/{mode}.json")["ok"] == 3
    fused, split = (s3.get_object(Bucket="mn-out", Key=f"{m}/0.png")["Body"].read() for m in ("fused", "split"))
    assert fused == split  # the same model in one pool or three gives the same image


@pytest.mark.timeout(900)
def test_two_archive_runs_over_a_growing_prefix(multinode_cluster, s3):
    for index in range(2):
        s3.put_object(Bucket="mn-in", Key=f"archive/{index}.jpg", Body=photo(64, 48, seed=10 + index))
    args = ["archive", "--source", "s3://mn-in/archive", "--dest", "s3://mn-out/archive",
            "--state", "s3://mn-out/archive-state", "--model", MODEL]
    first = succeeded(multinode_cluster, ugpnet(*args))
    assert "committed version 1" in first and "new 2" in first, first[-3000:]
    s3.put_object(Bucket="mn-in", Key="archive/2.jpg", Body=photo(64, 48, seed=12))
    second = succeeded(multinode_cluster, ugpnet(*args))
    assert "committed version 2" in second and "new 1" in second and "unchanged 2" in second, second[-3000:]
    assert [k for k in keys(s3, "mn-out", "archive/") if k.endswith(".png")] == \
        [f"archive/{index}.png" for index in range(3)]


@pytest.mark.timeout(900)
def test_evaluate_writes_its_report_to_s3(multinode_cluster, s3):
    for index in range(2):
        s3.put_object(Bucket="mn-in", Key=f"eval/{index}.png", Body=photo(96, 80, seed=20 + index, fmt="PNG"))
    logs = succeeded(multinode_cluster, ugpnet(
        "evaluate", "--model", MODEL, "--data", "s3://mn-in/eval", "--task", "denoise", "--report",
        "s3://mn-out/report", "--strengths", "25", "--grid-images", "1"))
    assert "2 of 2 image×strength evaluated (0 errors)" in logs, logs[-3000:]
    report = keys(s3, "mn-out", "report/")
    assert {"report/report.html", "report/summary.json", "report/per_image.parquet"} <= set(report), report
    assert any(key.startswith("report/grids/") for key in report), report
