"""emr_emulator copies only what a run reads (emr_emulator/reads.py): the rule as a pure
function of the request and its manifest, then once against the moto server, where photos
outside the run's reads stay in S3 and never reach the machine."""

from __future__ import annotations

import json
from pathlib import Path

from emr_emulator.reads import Reads, first_photo, reads, split_uri
from emr_emulator.run import run_job
from emr_emulator.submit import launch
from lambda_trigger.request import (
    Deployment,
    for_backfill,
    for_compaction,
    for_erasure,
    for_manifest,
    for_preflight,
    start_job_run_request,
)

BUCKET = "bucket"
ARTIFACTS = {
    f"s3://{BUCKET}/artifacts/main.py",
    f"s3://{BUCKET}/artifacts/emr_serverless_job.zip",
    f"s3://{BUCKET}/artifacts/pyspark_venv.tar.gz",
    f"s3://{BUCKET}/artifacts/mobilenet_v2.onnx",
}


def deployment(bucket: str = BUCKET) -> Deployment:
    return Deployment(
        application_id="00fapp",
        job_role_arn="arn:aws:iam::111122223333:role/job",
        artifacts_uri=f"s3://{bucket}/artifacts",
        output_uri=f"s3://{bucket}/output",
        logs_uri=f"s3://{bucket}/logs",
        weights_uri=f"s3://{bucket}/artifacts/mobilenet_v2_weights.h5",
        model_uri=f"s3://{bucket}/artifacts/mobilenet_v2.onnx",
    )


def request_for(source, bucket: str = BUCKET) -> dict:
    return start_job_run_request(deployment(bucket), source, client_token="t")


def uris(pairs) -> set[str]:
    return {f"s3://{bucket}/{key}" for bucket, key in pairs}


def test_a_backfill_reads_its_artifacts_and_its_prefix_and_nothing_of_the_output():
    wanted = reads(launch(request_for(for_backfill(f"s3://{BUCKET}/raw"))))
    assert uris(wanted.keys) == ARTIFACTS
    assert uris(wanted.prefixes) == {f"s3://{BUCKET}/raw/"}  # a folder: not raw-old/
    assert not wanted.excluded and not wanted.first_photo and wanted.manifest is None
    assert wanted.wants(BUCKET, "raw/Kiwi/a.jpg") and not wanted.wants(BUCKET, "raw-old/a.jpg")
    assert not wanted.wants(BUCKET, "output/pca_model/current.json")
    assert not wanted.wants(BUCKET, "other/photos/x.jpg")


def test_a_batch_reads_its_manifest_the_photos_it_lists_and_the_current_pca_version():
    manifest_uri = f"s3://{BUCKET}/manifests/batch-1.jsonl"
    run = launch(request_for(for_manifest(manifest_uri, b"{}")))
    first = reads(run)  # before the manifest and the pointer are read
    assert first.manifest == (BUCKET, "manifests/batch-1.jsonl")
    assert first.pointer == (BUCKET, "output/pca_model/current.json")
    assert uris(first.keys) == ARTIFACTS | {manifest_uri}
    assert first.wants(BUCKET, "output/pca_model/current.json")
    assert first.wants(BUCKET, "output/pca_model/featurizer.json")  # a model from before versions
    assert not first.wants(BUCKET, "output/pca_model/versions/v1/projection.npz")

    lines = [
        {"uri": f"s3://{BUCKET}/raw/Kiwi/a.jpg", "size": 4},
        {"uri": f"s3://{BUCKET}/raw/Kiwi/50% #2?.jpg"},  # kept as written: not a URL
        {"uri": "s3://elsewhere/raw/b.png"},
        {"uri": "gs://b/c.jpg"},  # an error row of the job, nothing to copy
        {"no uri": 1},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n"
    pointer = json.dumps({"version": "v1", "fitted_by_run": "backfill-x"})
    wanted = reads(run, manifest=text, pointer=pointer)
    assert uris(wanted.keys) - ARTIFACTS - {manifest_uri} == {
        f"s3://{BUCKET}/raw/Kiwi/a.jpg",
        f"s3://{BUCKET}/raw/Kiwi/50% #2?.jpg",
        "s3://elsewhere/raw/b.png",
    }
    assert wanted.buckets == [BUCKET, "elsewhere"]
    assert wanted.wants(BUCKET, "output/pca_model/versions/v1/projection.npz")
    assert not wanted.wants(BUCKET, "output/pca_model/versions/v0/projection.npz")
    assert not wanted.wants(BUCKET, "raw/Kiwi/b.jpg")  # not listed: not read
    assert not wanted.wants(BUCKET, "output/features/run_id=r/part-0.parquet")
    # A pointer that names no safe version adds nothing.
    for bad in ('{"version": "../x"}', "{}", "not json"):
        assert reads(run, manifest=text, pointer=bad).prefixes == wanted.prefixes - {
            (BUCKET, "output/pca_model/versions/v1/")
        }


def test_a_batch_with_its_own_pca_model_reads_that_one():
    request = request_for(for_manifest(f"s3://{BUCKET}/m.jsonl", b"{}"))
    request["jobDriver"]["sparkSubmit"]["entryPointArguments"] += ["--pca-model", "s3://m/pca"]
    wanted = reads(launch(request), pointer='{"version": "v2"}')
    assert uris(wanted.prefixes) == {"s3://m/pca/", "s3://m/pca/versions/v2/"}
    assert uris(wanted.excluded) == {"s3://m/pca/versions/"}


def test_a_compaction_reads_the_tables_it_merges_and_their_reports_not_photos_or_model():
    run = launch(request_for(for_compaction(7, "compact-1", dry_run=True)))
    wanted = reads(run)
    assert uris(wanted.keys) == ARTIFACTS
    output = f"s3://{BUCKET}/output"
    assert uris(wanted.prefixes) == {
        f"{output}/features/",
        f"{output}/errors/",
        f"{output}/reports/",
    }
    assert not wanted.wants(BUCKET, "raw/Kiwi/a.jpg")
    assert not wanted.wants(BUCKET, "output/pca_model/current.json")


def test_an_erase_run_reads_its_manifest_and_the_output_tables_not_the_photos():
    manifest_uri = f"s3://{BUCKET}/erasures/e-1.jsonl"
    run = launch(request_for(for_erasure(manifest_uri, b"{}")))
    text = json.dumps({"uri": f"s3://{BUCKET}/raw/Kiwi/a.jpg", "erased_at": "2026-01-01T00:00Z"})
    wanted = reads(run, manifest=None, pointer=None)
    assert wanted == reads(run)  # its manifest names nothing more to copy
    assert uris(wanted.keys) == ARTIFACTS | {manifest_uri}
    output = f"s3://{BUCKET}/output"
    assert uris(wanted.prefixes) == {
        f"{output}/features/",
        f"{output}/errors/",
        f"{output}/erasures/",
        f"{output}/reports/",
    }
    assert not reads(run, manifest=text).wants(BUCKET, "raw/Kiwi/a.jpg")
    assert not wanted.wants(BUCKET, "output/pca_model/current.json")


def test_a_preflight_reads_one_photo_and_the_artifacts_record():
    source = for_preflight(deployment(), f"s3://{BUCKET}/raw/", "preflight-1", "s3://r/fp32.onnx")
    wanted = reads(launch(request_for(source)))
    assert uris(wanted.keys) == ARTIFACTS | {
        f"s3://{BUCKET}/artifacts/artifacts.json",
        "s3://r/fp32.onnx",
    }
    assert uris(wanted.first_photo) == {f"s3://{BUCKET}/raw/"} and not wanted.prefixes
    listing = ["raw/_drafts/a.jpg", "raw/Kiwi/.b.jpg", "raw/Kiwi/notes.txt", "raw/Kiwi/c.JPG"]
    assert first_photo([*listing, "raw/Kiwi/d.jpg"], "raw/") == "raw/Kiwi/c.JPG"
    assert first_photo(listing[:3], "raw/") is None
    one = reads(launch(request_for(for_preflight(deployment(), f"s3://{BUCKET}/raw/K/a.jpg", "p"))))
    assert (BUCKET, "raw/K/a.jpg") in one.keys


def test_uris_split_as_s3_keys_not_urls():
    assert split_uri("s3://b/raw/a #1?.jpg") == ("b", "raw/a #1?.jpg")
    assert split_uri("s3a://b") == ("b", "")
    assert split_uri("file:///tmp/x") is None and split_uri("s3:///x") is None
    assert Reads().buckets == []


def test_a_run_copies_only_what_it_reads_and_lists_nothing_else(stack, tmp_path):
    """Against the moto server: a batch run whose archive is missing ends before Spark starts,
    after its pull. Photos the manifest does not list, another prefix's photos, older PCA
    versions and the output tables stay in S3 only."""
    s3 = stack.client("s3")
    bucket = stack.bucket
    manifest_key = "manifests/batch-1.jsonl"
    read = {
        "artifacts/main.py": b"print(1)",
        "artifacts/emr_serverless_job.zip": b"zip",
        "artifacts/mobilenet_v2.onnx": b"onnx",
        manifest_key: json.dumps({"uri": f"s3://{bucket}/raw/Kiwi/a.jpg"}).encode(),
        "raw/Kiwi/a.jpg": b"listed",
        "output/pca_model/current.json": b'{"version": "v1"}',
        "output/pca_model/versions/v1/projection.npz": b"current",
        "output/pca_model/versions/v1/featurizer.json": b"{}",
    }
    unread = {
        "raw/Kiwi/b.jpg": b"not in this batch",
        "other/photos/x.jpg": b"another prefix's photo",
        "output/pca_model/versions/v0/projection.npz": b"an older version",
        "output/features/run_id=r0/part-0.parquet": b"rows",
    }
    for key, body in {**read, **unread}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    source = for_manifest(f"s3://{bucket}/{manifest_key}", read[manifest_key])
    request = request_for(source, bucket)
    result = run_job(request, s3, workdir=tmp_path / "run", keep=True)
    assert result["state"] == "FAILED" and "could not fetch" in result["stateDetails"]
    mirrored = tmp_path / "run" / "s3"
    files = {
        p.relative_to(mirrored / bucket).as_posix() for p in mirrored.rglob("*") if p.is_file()
    }
    assert files == set(read)
    assert [p.name for p in mirrored.iterdir()] == [bucket]
    for key, body in read.items():
        assert Path(mirrored / bucket / key).read_bytes() == body
    emulator = result["emulator"]
    assert emulator["pulled"]["copied"] == len(read)
    assert emulator["notInS3"] == {
        f"s3://{bucket}/artifacts/pyspark_venv.tar.gz": "not copied: 404"
    }
