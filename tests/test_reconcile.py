"""The reconcile command's core: a merge of S3's sorted listing against the tables' sorted keys,
read from Parquet's path column only. (On loopback, end to end: test_nothing_lost.py.)"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fruits_contract import is_image_name
from fruits_ops.reconcile import (
    Tally,
    _filesystem,
    ascending,
    is_table_file,
    reconcile,
    row_keys,
)
from lambda_trigger.events import S3Object
from lambda_trigger.settings import parse_s3_location


def obj(key: str) -> S3Object:
    return S3Object("b", key, 1, None, "", "reconcile")


def test_objects_in_neither_table_are_missing_whatever_the_characters():
    # S3 lists in UTF-8 byte order: " " < "-" < "." < "a" < "ä" (Python's str order agrees)
    keys = sorted(
        ["raw/a b.jpg", "raw/a-b.jpg", "raw/a.jpg", "raw/ä.jpg", "raw/z.PNG", "raw/Z.Jpg"]
    )
    featurized = ["raw/a b.jpg", "raw/old-and-gone.jpg", "raw/ä.jpg"]
    errored = ["raw/a b.jpg", "raw/z.PNG"]  # a later feature row wins over an earlier error
    tally = Tally()
    missing = list(reconcile(map(obj, keys), sorted(featurized), sorted(errored), tally))
    assert [m.key for m in missing] == ["raw/Z.Jpg", "raw/a-b.jpg", "raw/a.jpg"]
    assert (tally.objects, tally.featurized, tally.errored, tally.missing) == (6, 2, 1, 3)


def test_photos_are_images_in_any_letter_case_and_never_folder_markers():
    photos = ("a.Jpg", "b.JPEG", "c.png", "d.WebP", "e.heic", "f.HEIF")
    others = ("raw/Kiwi/", "raw/Kiwi.jpg/", "d.txt", "e.jpg.txt", "f.gif")
    assert [is_image_name(k) for k in photos + others] == [True] * len(photos) + [False] * len(
        others
    )


def test_row_keys_are_the_buckets_sorted_distinct_keys_from_the_path_column(tmp_path):
    tables = tmp_path / "bucket" / "output"
    rows = {
        "features/run_id=b-1": ["s3://bucket/raw/b.jpg", "s3://bucket/raw/a.jpg"],
        "features/run_id=batch-2": ["s3://bucket/raw/a.jpg", "s3://other/raw/c.jpg"],
    }
    for folder, paths in rows.items():
        (tables / folder).mkdir(parents=True)
        table = pa.table({"path": paths, "features": [[0.0] * 4] * len(paths)})
        pq.write_table(table, tables / folder / "part-0.parquet")
    filesystem = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    output = parse_s3_location("s3://bucket/output")
    keys = row_keys(filesystem, output, "features", "bucket")
    assert keys.to_pylist() == ["raw/a.jpg", "raw/b.jpg"]
    assert list(ascending(keys)) == ["raw/a.jpg", "raw/b.jpg"]
    assert row_keys(filesystem, output, "errors", "bucket").to_pylist() == []  # no table yet


def test_only_a_tables_parquet_files_are_read():
    assert [
        is_table_file(name)
        for name in (
            "run_id=b-1/part-00000-1f.c000.snappy.parquet",
            "run_id=b-1_$folder$",  # EMRFS's zero-byte folder marker
            "run_id=b-1/_SUCCESS",
            "run_id=b-1/.part-00000.snappy.parquet.crc",
            "_temporary/0/part-00000.parquet",  # a write in progress
            "run_id=b-1/notes.txt",
        )
    ] == [True, False, False, False, False, False]


@pytest.mark.parametrize(
    "stray",
    [
        {"output/features/run_id=x_$folder$": b"", "output/features_$folder$": b""},
        {"output/features/run_id=x/README.txt": b"not parquet"},
    ],
    ids=["emrfs folder markers", "not parquet"],
)
def test_row_keys_skip_emrfs_folder_markers_and_other_objects_on_s3(stack, stray):
    # GIVEN a features table on S3 as EMRFS leaves it: Parquet parts and a _SUCCESS file, with
    # zero-byte `_$folder$` markers beside its folders, or an object that is not Parquet
    s3 = stack.client("s3")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"path": [f"s3://{stack.bucket}/raw/a.jpg"]}), buffer)
    objects = {
        "output/features/run_id=x/part-00000-1.c000.snappy.parquet": buffer.getvalue(),
        "output/features/run_id=x/_SUCCESS": b"",
        **stray,
    }
    for key, body in objects.items():
        s3.put_object(Bucket=stack.bucket, Key=key, Body=body)
    # WHEN reconcile reads the table's keys through pyarrow's S3 client
    output = parse_s3_location(f"s3://{stack.bucket}/output")
    keys = row_keys(_filesystem(s3), output, "features", stack.bucket)
    # THEN it reads the Parquet part alone (pyarrow failed on the marker: "Parquet file size is
    # 0 bytes")
    assert keys.to_pylist() == ["raw/a.jpg"]
