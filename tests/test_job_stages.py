"""The stages of a run whose inputs and outputs are plain values, without a Spark session."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from emr_serverless_job import job
from emr_serverless_job.config import JobConfig, parse_args
from emr_serverless_job.reduce import ReductionInfo
from emr_serverless_job.run_report import RANDOM_WEIGHTS_WARNING, RunReport

FAST = ["--weights", "random:0", "--image-size", "96", "--batch-size", "8"]


def config(tmp_path: Path, *argv: str) -> JobConfig:
    return parse_args([*FAST, "--input", str(tmp_path), "--output", "s3://b/out", *argv])


def featurizer(chosen: JobConfig) -> job.Featurizer:
    return job.Featurizer(
        chosen,
        identity="random:0",
        weights=chosen.weights.describe(),
        weights_sha256=None,
        random_weights=chosen.weights.is_random,
    )


def test_a_report_starts_with_what_the_run_was_asked_and_says_its_weights_are_random(tmp_path):
    asked = config(tmp_path)
    report = job.start_report(asked, featurizer(asked), "2026-12-02T10:00:00.000Z")
    assert report.run_id == ""  # named by the inputs, once listed
    assert (report.mode, report.source, report.output) == ("backfill", str(tmp_path), "s3://b/out")
    assert (report.image_size, report.batch_size, report.runtime) == (96, 8, "tensorflow")
    assert report.started_at == "2026-12-02T10:00:00.000Z"
    assert report.random_weights and report.warnings == [RANDOM_WEIGHTS_WARNING]
    assert report.featurizer == {"image_size": 96, "weights": "random:0", "precision": "fp32"}
    assert report.timings_s == {} and report.inputs == 0


def test_a_report_keeps_the_run_id_it_was_given(tmp_path):
    asked = config(tmp_path, "--run-id", "mine")
    assert job.start_report(asked, featurizer(asked), "t").run_id == "mine"


def test_counts_add_the_undecodable_to_the_rejected_and_throughput_counts_every_image_read():
    report = RunReport(run_id="r", mode="backfill", source="s", output="o", started_at="t")
    report.timings_s["featurize"] = 2.0
    outcomes = Counter({None: 5, "corrupt": 2})
    featurized = job.record_counts(report, outcomes, Counter({"too large": 1, "corrupt": 1}))
    assert featurized == report.features == 5
    assert report.errors_by_reason == {"corrupt": 3, "too large": 1}
    assert list(report.errors_by_reason) == ["corrupt", "too large"]  # the pass's first
    assert (report.errors, report.inputs) == (4, 9)
    assert report.images_per_second == 3.5  # 7 images read, the 2 undecodable among them
    assert outcomes == Counter({None: 5, "corrupt": 2})  # the caller's counts are left alone


def test_a_pass_too_fast_to_time_reports_no_throughput_rather_than_dividing_by_zero():
    report = RunReport(run_id="r", mode="manifest", source="s", output="o", started_at="t")
    report.timings_s["featurize"] = 0.0
    assert job.record_counts(report, Counter(), Counter({"gone": 2})) == 0
    assert (report.images_per_second, report.inputs, report.errors) == (0.0, 2, 2)


def test_the_pca_record_rounds_variances_and_names_the_version():
    info = ReductionInfo(
        k=2,
        explained_variance=0.951234567,
        component_variance=[0.61234567, 0.33888889],
        image_size=96,
        weights="random:0",
        fitted_by_run="backfill-1",
        fitted_rows=10,
        scaling="none",
        version="v1",
    )
    assert job.pca_record(info, "s3://b/out/pca_model") == {
        "k": 2,
        "scaling": "none",
        "precision": "fp32",
        "explained_variance": 0.951235,
        "component_variance": [0.612346, 0.338889],
        "model": "s3://b/out/pca_model",
        "version": "v1",
    }


def test_each_table_is_written_into_its_own_run_partition():
    assert job.table_uris("s3://b/out", "batch-1") == {
        "features": "s3://b/out/features/run_id=batch-1",
        "errors": "s3://b/out/errors/run_id=batch-1",
    }


def test_a_run_that_lost_an_input_fails_naming_the_counts_and_its_report():
    report = RunReport(run_id="r", mode="backfill", source="s", output="o", started_at="t")
    report.features, report.errors, report.inputs = 3, 1, 4
    job.check_accounted(report, 4, "o/reports/run_id=r/report.json")
    with pytest.raises(job.ReconciliationError, match=r"5 inputs .* 4 .* \(3 features \+ 1"):
        job.check_accounted(report, 5, "o/reports/run_id=r/report.json")
