"""Runs sized to their batch (sizing.py) and the cost model built on it (capacity.py): plain
functions on counts, no Spark and no AWS."""

from __future__ import annotations

import pytest

from fruits_ops import capacity
from lambda_trigger import sizing

# EMR Serverless worker sizes: vCPU -> (min GB, max GB), 1 GB steps (app-behavior.html).
WORKER_LIMITS = {1: (2, 8), 2: (4, 16), 4: (8, 30)}


def within_limits(worker: sizing.Worker) -> bool:
    low, high = WORKER_LIMITS[worker.cores]
    return low <= worker.billed_gb <= high


@pytest.mark.parametrize("runtime", ["onnx", "tensorflow"])
@pytest.mark.parametrize("photos", [1, 50, 1_000, 19_000, 20_000, 100_000, 1_000_000])
def test_every_size_is_one_emr_serverless_accepts(photos, runtime):
    size = sizing.size_run(photos, runtime=runtime, max_executors=20)
    assert within_limits(size.driver) and within_limits(size.executor)
    assert 1 <= size.min_executors <= size.initial_executors <= size.max_executors <= 20
    # Python needs its overhead: per worker (one per vCPU) the model plus the worst decode.
    per_worker = {"onnx": 0.86 + 0.43, "tensorflow": 1.6 + 0.43}[runtime]
    assert size.executor.overhead_gb >= size.executor.cores * per_worker


def test_a_trigger_batch_holds_the_smallest_footprint_and_a_backfill_spreads_wide():
    batch = sizing.size_run(50, runtime="onnx", max_executors=3)
    assert (batch.executor.cores, batch.max_executors, batch.max_vcpu) == (2, 1, 4)
    assert sizing.size_run(1_000, runtime="onnx", max_executors=3) == batch
    wide = sizing.size_run(1_000_000, runtime="onnx", max_executors=20)
    assert (wide.executor.cores, wide.initial_executors, wide.max_vcpu) == (4, 20, 82)
    assert sizing.size_run(1_000_000, runtime="onnx", max_executors=3).max_executors == 3
    middle = sizing.size_run(100_000, runtime="onnx", max_executors=20)
    assert middle.max_executors == 3  # 1,255 vCPU-s: 3 executors of 4 vCPU for ~2 minutes


def test_past_the_widest_work_more_photos_change_nothing():
    """Where a backfill's listing may stop counting (fruits_ops/listing.py)."""
    for executors in (1, 3, 20):
        threshold = sizing.widest_work_vcpu_s(executors)
        photos = int(threshold / sizing.PHOTO_VCPU_S) + 1
        at = sizing.size_run(photos, runtime="onnx", max_executors=executors)
        assert at == sizing.size_run(photos * 10, runtime="onnx", max_executors=executors)
        assert at.max_executors == executors and at.executor.cores == 4
        below = sizing.size_run(photos // 2, runtime="onnx", max_executors=executors)
        assert executors == 1 or below.max_executors < executors


def test_large_photos_count_as_more_work():
    phones = 2_000 * 3_000_000  # 2,000 phone photos of 3 MB
    assert sizing.size_run(2_000, runtime="onnx", max_executors=3).executor.cores == 2
    assert (
        sizing.size_run(2_000, runtime="onnx", max_executors=3, total_bytes=phones).executor.cores
        == 4
    )


def test_the_request_confs_name_the_size():
    conf = sizing.size_run(50, runtime="onnx", max_executors=3).spark_conf()
    assert conf["spark.executor.cores"] == "2"
    assert conf["spark.executor.memory"] == "2g" and conf["spark.executor.memoryOverhead"] == "4g"
    assert conf["spark.dynamicAllocation.maxExecutors"] == "1"
    assert conf["spark.default.parallelism"] == "2"
    with pytest.raises(ValueError, match="at least 1"):
        sizing.size_run(50, runtime="onnx", max_executors=0)


def test_a_sized_trigger_batch_is_billed_a_fraction_of_the_fixed_request():
    service = capacity.Service()
    common = {"batch_size": 1000, "window_s": 120, "service": service, "max_executors": 3}
    fixed = capacity.trigger("t", 30_000, sized=False, max_concurrent_runs=1, **common)
    sized = capacity.trigger("t", 30_000, sized=True, max_concurrent_runs=1, **common)
    assert fixed.photos_per_run == sized.photos_per_run == 1000
    # Both are billing minimums: 60 s x (2 + 3 x 4) vCPU against 60 s x (2 + 2).
    assert fixed.vcpu_s_per_1000 == pytest.approx(840)
    assert sized.vcpu_s_per_1000 == pytest.approx(240)
    assert sized.p50_s < sized.p95_s


def stack_defaults(per_hour: float, service: capacity.Service) -> capacity.Figures:
    """The trigger path at ``per_hour`` uploads with the stack's defaults, sized runs."""
    return capacity.trigger(
        "t",
        per_hour,
        batch_size=1000,
        window_s=120,
        sized=True,
        service=service,
        max_executors=3,
        max_concurrent_runs=1,
    )


def test_slow_arrivals_wait_for_the_window_and_a_stopped_application():
    service = capacity.Service()
    slow = stack_defaults(2, service)
    # One photo per batch, a batch every 30 minutes: the application has stopped each time.
    assert slow.photos_per_run == 1
    run = capacity.run_cost(1, sizing.size_run(1, runtime="onnx", max_executors=3), service)
    assert slow.p50_s == pytest.approx(60 + service.application_start_s + run.seconds)


def test_runs_that_cannot_keep_up_are_flagged():
    flooded = stack_defaults(30_000, capacity.Service(run_fixed_s=600))  # 10 min every 2
    assert flooded.saturated


def test_the_command_prints_every_scenario_and_prices_when_given(capsys):
    assert capacity.main(["--vcpu-hour", "0.05", "--gb-hour", "0.005"]) == 0
    out = capsys.readouterr().out
    for name in ("100 photos/hour", "10,000 photos/hour", "1,000,000/day", "backfill of 10,000"):
        assert out.count(name) == 2  # the fixed request and the sized one
    assert "$" in out and "formula" not in out
    capacity.main([])
    assert "price per vCPU-hour" in capsys.readouterr().out
