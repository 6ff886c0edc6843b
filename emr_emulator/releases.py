"""Which Apache Spark each EMR Serverless release runs, from AWS' release pages.

Source: "EMR Serverless 7.x.0" pages of the EMR Serverless User Guide
(docs.aws.amazon.com/emr/latest/EMR-Serverless-UserGuide/release-version-7x0.html), read
2026-11-22. The tests pin PySpark to the Spark of template.yaml's default ReleaseLabel, and the
emulator warns when the release it is asked to stand in for runs another Spark.
"""

from __future__ import annotations

SPARK_VERSIONS = {
    "emr-7.0.0": "3.5.0",
    "emr-7.1.0": "3.5.0",
    "emr-7.4.0": "3.5.2",
    "emr-7.5.0": "3.5.2",
    "emr-7.6.0": "3.5.3",
    "emr-7.7.0": "3.5.3",
    "emr-7.8.0": "3.5.4",
    "emr-7.9.0": "3.5.5",
    "emr-7.10.0": "3.5.5",
}


def spark_version_of(release_label: str) -> str | None:
    """The Spark version of ``release_label``, or None for a release not listed here."""
    return SPARK_VERSIONS.get(release_label)
