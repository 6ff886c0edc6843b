"""Manifest parsing and path spelling: pure functions (checked against Hadoop's own)."""

from __future__ import annotations

import json

import pytest

from emr_serverless_job.inputs import (
    IMAGE_GLOB,
    from_folder,
    hadoop_path_string,
    input_files,
    is_hidden_name,
    parse_manifest,
    sink_log_uri,
    size_reason,
    spark_spelling,
)


def lines(*objects) -> str:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objects)


def test_uris_in_order_without_duplicates():
    text = lines(
        {"uri": "s3://b/raw/Apple Braeburn/1.jpg", "size": 10, "etag": "x"},
        {"uri": "s3://b/raw/Kiwi/2.PNG"},
        {"uri": "s3://b/raw/Apple Braeburn/1.jpg"},
        "",
    )
    entries = parse_manifest(text)
    assert entries.uris == ["s3://b/raw/Apple Braeburn/1.jpg", "s3://b/raw/Kiwi/2.PNG"]
    assert entries.duplicates == 1
    assert entries.problems == []
    assert entries.sizes == {"s3://b/raw/Apple Braeburn/1.jpg": 10}


def test_sizes_that_are_not_byte_counts_are_ignored():
    text = lines(
        {"uri": "s3://b/1.jpg", "size": "10"},
        {"uri": "s3://b/2.jpg", "size": -1},
        {"uri": "s3://b/3.jpg", "size": True},
        {"uri": "s3://b/4.jpg", "size": 0},
    )
    entries = parse_manifest(text)
    assert entries.sizes == {"s3://b/4.jpg": 0} and len(entries.uris) == 4


def test_bad_lines_become_problems_with_line_numbers():
    text = lines({"uri": "s3://b/a.jpg"}, "{not json", {"size": 3}, [1, 2], {"uri": "s3://b/x.txt"})
    entries = parse_manifest(text)
    assert entries.uris == ["s3://b/a.jpg"]
    whats = [what for what, _ in entries.problems]
    assert whats == ["manifest line 2", "manifest line 3", "manifest line 4", "s3://b/x.txt"]
    reasons = [reason for _, reason in entries.problems]
    assert "not valid JSON" in reasons[0] and "uri" in reasons[1] and "suffix" in reasons[3]


def test_listed_uris_are_spelled_like_spark_path_columns():
    assert hadoop_path_string("file:///tmp/Cherry%203/a%20b.jpg") == "file:/tmp/Cherry 3/a b.jpg"
    assert hadoop_path_string("file:///tmp/Pear%20%C3%98/x.jpg") == "file:/tmp/Pear Ø/x.jpg"
    assert hadoop_path_string("file:///tmp/Pear Ø/100%25.jpg") == "file:/tmp/Pear Ø/100%.jpg"
    assert hadoop_path_string("s3://bucket/raw/a%2Bb.jpg") == "s3://bucket/raw/a+b.jpg"


def test_hidden_names_as_spark_skips_them():
    assert is_hidden_name("s3://b/raw/Kiwi/_IMG_1.jpg") and is_hidden_name("file:/t/.x.jpg")
    assert not is_hidden_name("s3://b/raw/_Kiwi/IMG_1.jpg")
    assert not is_hidden_name("s3://b/raw/_a=1.jpg")  # Spark reads "_" names holding "="


def test_size_reasons():
    assert size_reason(0, 10) == "empty file (0 bytes)"
    assert "too large: 11 bytes" in size_reason(11, 10)
    assert size_reason(10, 10) is None


SPELLINGS = [
    "/tmp/Apple Braeburn/0_100.jpg",
    "file:///tmp/Pear Ø/x.jpg",
    "file:/tmp//double//slash.jpg",
    "/tmp/a/./b/../c.jpg",
    "s3://bucket/raw/Apple Braeburn/0_100.jpg",
    "s3://bucket/raw/100%.jpg",
    "s3://bucket/raw/what?.jpg",
    "s3://bucket/raw/a#b.jpg",
    "s3://bucket/raw/a+b=c&d.jpg",
    "s3a://bucket//raw//x.png",
]


@pytest.mark.parametrize("uri", SPELLINGS)
def test_manifest_uris_are_spelled_as_hadoop_spells_them(spark, uri):
    """The job matches manifest entries to Spark's listing by this spelling; Hadoop's
    Path (qualified against the local file system for scheme-less paths) is the truth."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    if path.toUri().getScheme() is None:
        conf = spark.sparkContext._jsc.hadoopConfiguration()
        path = path.getFileSystem(conf).makeQualified(path)
    assert spark_spelling(uri) == path.toString()


@pytest.mark.parametrize("uri", SPELLINGS)
def test_file_log_uris_come_back_as_spark_spells_the_file(spark, uri):
    """A manifest's files reach Spark as escaped URIs in a file log, which Spark reads
    with ``new Path(new URI(...))``; the rows' ``path`` must be the spelling the job
    matches them by."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(sink_log_uri(spark_spelling(uri))))
    assert path.toString() == spark_spelling(uri)


def test_a_folders_files_all_come_back_from_the_jvm_however_they_are_named(spark, tmp_path):
    """A backfill's listing crosses from the JVM as one joined string (``input_files``):
    names with a line break, a comma, spaces, '%', '#' or non-ASCII letters must still come
    back one file each, spelled as the rows' ``path`` column spells them."""
    names = ["plain.jpg", "two\nlines.jpg", "a, b.jpg", "100%.JPG", "Pear Ø.jpeg", "a#b.png"]
    folder = tmp_path / "Kiwi Gold"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"not decoded here")
    (folder / "notes.txt").write_bytes(b"not an image")
    files = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", IMAGE_GLOB)
        .option("recursiveFileLookup", "true")
        .load(str(tmp_path))
    )
    listed = [hadoop_path_string(uri) for uri in input_files(files)]
    assert sorted(listed) == sorted(f"file:{folder / name}" for name in names)
    found = from_folder(spark, str(tmp_path), max_bytes=1 << 20)  # listed in Python: the same
    assert sorted(found.listed) == sorted(listed) and found.expected == len(names)
