"""Deletions from raw/ become erase runs: the events' pure core, the Lambda on loopback (real S3
deletions reach the queue, one erasure manifest and one erase run per batch) and the operator's
``python -m fruits_ops.erase`` command."""

from __future__ import annotations

import json
import re

import pytest

from emr_serverless_job import erase as job_erase
from fruits_ops import erase as command
from lambda_trigger import handler as trigger
from lambda_trigger import request as rq
from lambda_trigger.events import MalformedMessage, S3Object, parse_message
from lambda_trigger.manifest import build_erasure_manifest, split_batch
from tests.loopback import FakeContext, job_runs, keys, poll_and_invoke
from tests.test_trigger_core import BUCKET, ENV, notification

REMOVED = "ObjectRemoved:DeleteMarkerCreated"
WHEN = "2025-03-01T10:00:00.123Z"


def _event(key: str, name: str, sequencer: str, at: str = WHEN) -> S3Object:
    return S3Object(BUCKET, key, None, None, sequencer, name, event_time=at)


# --- the pure core --------------------------------------------------------------------------


def test_removals_are_parsed_with_their_time_and_need_one():
    body = json.loads(notification("raw/Kiwi/a+b.jpg", event=REMOVED))
    body["Records"][0]["eventTime"] = WHEN
    (obj,) = parse_message(json.dumps(body))
    assert obj.is_removal and obj.event_time == WHEN and obj.key == "raw/Kiwi/a b.jpg"
    del body["Records"][0]["eventTime"]
    with pytest.raises(MalformedMessage, match="without an ISO-8601 eventTime"):
        parse_message(json.dumps(body))


def test_a_key_is_featurized_only_when_its_latest_event_is_a_creation():
    up, down = "ObjectCreated:Put", "ObjectRemoved:Delete"
    events = [
        _event("raw/a.jpg", up, "01"),  # uploaded, then deleted: erased only
        _event("raw/a.jpg", down, "02"),
        _event("raw/b.jpg", down, "01"),  # deleted, then uploaded again: both
        _event("raw/b.jpg", up, "02"),
        _event("raw/c.jpg", up, "01"),
    ]
    creations, removals = split_batch(events)
    assert sorted(o.key for o in creations) == ["raw/b.jpg", "raw/c.jpg"]
    assert sorted(o.key for o in removals) == ["raw/a.jpg", "raw/b.jpg"]


def test_the_erasure_manifest_is_deterministic_and_names_the_jobs_run_id():
    a = _event("raw/K/ä.jpg", REMOVED, "01", "2025-03-01T10:00:00.000Z")
    later = _event("raw/K/ä.jpg", REMOVED, "02", "2025-03-01T11:00:00.000Z")
    b = _event("raw/K/b.jpg", REMOVED, "01")
    first, again = build_erasure_manifest([a, b, later]), build_erasure_manifest([later, b, a])
    assert first.body == again.body and first.erasure and (first.images, first.duplicates) == (2, 1)
    assert re.fullmatch(r"erase-[0-9a-f]{16}", first.run_id)
    found = job_erase.parse_erasures(first.body.decode())  # what the erase run reads
    assert found.problems == [] and found.uris == 2
    times = {s.path: s.erased_at.isoformat() for s in found.tombstones}
    assert times[f"s3://{BUCKET}/raw/K/ä.jpg"] == "2025-03-01T11:00:00+00:00"  # the latest


def test_an_erase_run_is_requested_like_a_batch_but_small():
    from lambda_trigger.settings import deployment_from_environment

    deployment = deployment_from_environment(ENV)
    manifest = build_erasure_manifest([_event("raw/a.jpg", REMOVED, "01")])
    uri = f"s3://{BUCKET}/manifests/{manifest.file_name}"
    request = rq.start_job_run_request(deployment, manifest.source(uri), manifest.run_id)
    args = request["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[:2] == ["--erase", uri] and args[args.index("--run-id") + 1] == manifest.run_id
    params = request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]
    assert "spark.executor.memoryOverhead=1g" in params
    assert "spark.dynamicAllocation.maxExecutors=2" in params
    batch = rq.start_job_run_request(deployment, rq.for_manifest(uri, b"x"), "t")
    assert (
        "spark.executor.memoryOverhead=6g"
        in batch["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]
    )
    one = deployment_from_environment({**ENV, "MAX_EXECUTORS": "1"})
    small = rq.start_job_run_request(one, manifest.source(uri), "t")
    assert "maxExecutors=1" in small["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]


# --- the Lambda on loopback -----------------------------------------------------------------


def upload(stack, names: list[str]) -> None:
    for name in names:
        stack.client("s3").put_object(Bucket=stack.bucket, Key=name, Body=b"x")


def delete(stack, names: list[str]) -> None:
    for name in names:
        stack.client("s3").delete_object(Bucket=stack.bucket, Key=name)


def drain(stack) -> list:
    invocations = []
    while (invocation := poll_and_invoke(stack, trigger.handler)) is not None:
        assert invocation.error is None, invocation.error
        invocations.append(invocation)
    return invocations


def manifest_lines(stack, run_id: str) -> list[dict]:
    body = stack.client("s3").get_object(Bucket=stack.bucket, Key=f"manifests/{run_id}.jsonl")
    return [json.loads(line) for line in body["Body"].read().decode().splitlines()]


def by_flag(stack) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for run in job_runs(stack):
        flag = run["jobDriver"]["sparkSubmit"]["entryPointArguments"][0]
        runs.setdefault(flag, []).append(run)
    return runs


PHOTOS = ["raw/Kiwi/a b.jpg", "raw/Kiwi/c+d.png", "raw/Pear/e.jpg"]


def test_deletions_become_one_erasure_manifest_and_one_erase_run(stack):
    upload(stack, PHOTOS)
    drain(stack)
    delete(stack, [*PHOTOS[:2], "raw/Kiwi/notes.txt"])  # the text file sends no event
    (invocation,) = drain(stack)
    assert invocation.response == {"batchItemFailures": []}
    runs = by_flag(stack)
    assert len(runs["--manifest"]) == 1
    (run,) = runs["--erase"]
    run_id = run["name"]
    assert re.fullmatch(r"erase-[0-9a-f]{16}", run_id)
    lines = manifest_lines(stack, run_id)
    assert [line["uri"] for line in lines] == sorted(f"s3://{stack.bucket}/{k}" for k in PHOTOS[:2])
    assert all(job_erase.parse_time(line["erased_at"]) for line in lines)
    args = run["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert args[1] == f"s3://{stack.bucket}/manifests/{run_id}.jsonl"
    assert args[args.index("--run-id") + 1] == run_id
    assert f"manifests/{run_id}.jobrun.json" in keys(stack, "manifests/")


def test_a_batch_of_uploads_and_deletions_starts_one_run_of_each(stack):
    upload(stack, PHOTOS[:1])
    drain(stack)
    upload(stack, PHOTOS[1:])
    delete(stack, PHOTOS[:1])
    assert len(drain(stack)) == 1  # one invocation for the uploads and the deletion
    runs = by_flag(stack)
    assert len(runs["--manifest"]) == 2 and len(runs["--erase"]) == 1
    newest = max(runs["--manifest"], key=lambda r: r["createdAt"])
    uris = [line["uri"] for line in manifest_lines(stack, newest["name"])]
    assert uris == sorted(f"s3://{stack.bucket}/{k}" for k in PHOTOS[1:])
    (erased,) = manifest_lines(stack, runs["--erase"][0]["name"])
    assert erased["uri"] == f"s3://{stack.bucket}/{PHOTOS[0]}"


def test_a_redelivered_batch_of_deletions_starts_no_second_erase_run(stack):
    from tests.test_trigger_aws import queue_event

    upload(stack, PHOTOS)
    drain(stack)
    delete(stack, PHOTOS)
    event, _ = queue_event(stack)
    first = trigger.handler(event, FakeContext())
    assert first == trigger.handler(event, FakeContext()) == {"batchItemFailures": []}
    assert len(by_flag(stack)["--erase"]) == 1


# --- the operator's command -----------------------------------------------------------------


def write_keys(tmp_path, *lines: str):
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ((), "names no photo"),
        (("s3://someone-else/raw/a.jpg",), "is not 'fruits-"),
        (("s3://{bucket}/output/features/a.jpg",), "is not under s3://"),
        (("/Kiwi/a.jpg",), "starts with '/'"),
        (("Kiwi/notes.txt",), "is not an image"),
        (("s3://",), "is not an s3://bucket/key URI"),
    ],
)
def test_bad_keys_are_refused_naming_the_flag_before_any_side_effect(
    stack, tmp_path, capsys, lines, said
):
    upload(stack, ["raw/Kiwi/a.jpg"])
    path = write_keys(tmp_path, "Kiwi/a.jpg", *(line.format(bucket=stack.bucket) for line in lines))
    if not lines:
        path.write_text("\n  \n")
    code = command.main(["--keys", str(path), "--delete-objects"], env=stack.environment)
    assert code == command.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "--keys" in err and said in err
    assert keys(stack, "raw/") == ["raw/Kiwi/a.jpg"]  # nothing deleted
    assert [k for k in keys(stack, "manifests/") if "erase-" in k] == []
    assert "--erase" not in by_flag(stack)


def test_a_missing_keys_file_and_bad_settings_are_refused(stack, tmp_path, capsys):
    assert command.main(["--keys", str(tmp_path / "nope.txt")], env=stack.environment) == 2
    assert "--keys: no file at" in capsys.readouterr().err
    path = write_keys(tmp_path, "Kiwi/a.jpg")
    env = {k: v for k, v in stack.environment.items() if k != "RAW_URI"}
    assert command.main(["--keys", str(path)], env=env) == 2
    assert "RAW_URI is not set" in capsys.readouterr().err
    assert job_runs(stack) == []


def test_a_stack_that_cannot_be_read_is_refused_naming_the_flag(stack, tmp_path, capsys):
    """GIVEN a stack name that does not exist WHEN erasing (with --delete-objects) THEN exit 2
    naming --stack, nothing deleted, no erase run (it used to end in botocore's traceback)."""
    upload(stack, ["raw/Kiwi/a.jpg"])
    path = write_keys(tmp_path, "Kiwi/a.jpg")
    argv = ["--keys", str(path), "--delete-objects", "--stack", "no-such-stack"]
    assert command.main(argv, env={}) == 2
    err = capsys.readouterr().err
    assert "configuration error: --stack no-such-stack:" in err and "Traceback" not in err
    assert keys(stack, "raw/") == ["raw/Kiwi/a.jpg"]
    assert job_runs(stack) == []


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--delete-objects" in out and "(default: False)" in out and "--keys" in out


def test_the_command_deletes_writes_the_manifest_and_starts_one_erase_run(stack, tmp_path, capsys):
    upload(stack, PHOTOS)
    stack.client("s3").put_bucket_versioning(
        Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    path = write_keys(
        tmp_path, "Kiwi/a b.jpg", f"s3://{stack.bucket}/raw/Pear/e.jpg", "", "Kiwi/a b.jpg"
    )
    code = command.main(["--keys", str(path), "--delete-objects"], env=stack.environment)
    assert code == 0
    captured = capsys.readouterr()
    assert "the bucket is versioned" in captured.err
    assert keys(stack, "raw/") == ["raw/Kiwi/c+d.png"]  # the current versions are gone
    (run,) = by_flag(stack)["--erase"]
    assert captured.out.strip() == run["jobRunId"]
    lines = manifest_lines(stack, run["name"])
    assert [line["uri"] for line in lines] == [
        f"s3://{stack.bucket}/raw/Kiwi/a b.jpg",
        f"s3://{stack.bucket}/raw/Pear/e.jpg",
    ]
    assert len({line["erased_at"] for line in lines}) == 1


def test_without_delete_objects_the_command_warns_about_photos_still_there(stack, tmp_path, capsys):
    upload(stack, PHOTOS[:1])
    path = write_keys(tmp_path, "Kiwi/a b.jpg")
    assert command.main(["--keys", str(path)], env=stack.environment) == 0
    err = capsys.readouterr().err
    assert "is still in raw/" in err
    assert keys(stack, "raw/") == PHOTOS[:1] and len(by_flag(stack)["--erase"]) == 1
