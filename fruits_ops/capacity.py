"""What a photo costs on EMR Serverless, and how long it waits: a model of the service.

    python -m fruits_ops.capacity [--vcpu-hour PRICE --gb-hour PRICE]

A model, not a measurement: the work per photo and a run's fixed time come from this project's
benchmark runs (``sizing.py``, BENCHMARKS.md); the service's rules from AWS's documentation,
each with its source below, and what no page here states is a parameter with its assumption.
For each arrival rate (the trigger path) and backfill size it prints the vCPU-seconds and
GB-seconds billed per 1,000 photos, the cost per 1,000 photos when prices are given
(``--vcpu-hour``, ``--gb-hour``: your region's, from aws.amazon.com/emr/pricing), else the
formula, and the upload-to-features latency, for the fixed request runs had before sizing and
the sized one they have now (``request.run_size``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from fruits_contract import cli as convention
from lambda_trigger import request, sizing

# Billing: "from the time workers are ready to run your workload until the time they stop,
# rounded up to the nearest second with a 1-minute minimum" (aws.amazon.com/emr/pricing, EMR
# Serverless; that page could not be read from this build machine, so this is a parameter:
# --billing-minimum).
BILLING_MINIMUM_S = 60
# Not documented as figures anywhere found: assumptions, parameters of the CLI.
WORKER_START_S = 20  # a driver or executor from request to ready ("tens of seconds")
APPLICATION_START_S = 60  # a STOPPED application to STARTED ("about a minute")
# The template stops the application after 5 idle minutes (AutoStopConfiguration; the
# service's default is 15, app-behavior.html).
AUTO_STOP_S = 5 * 60
# Driver time of a run that is not featurizing, measured on 2 vCPU: a 1,000-photo manifest
# run's whole process 19.3-23.0 s, its featurize stage 8.4-10.1 s (a review's figures, issue
# 21): JVM and session start, listing, model load, writing, the report.
RUN_FIXED_S = 12.0
# A backfill's PCA fit and write, per photo (run K: pca 2.5 s + write 4.8 s on 2 vCPU for
# 5,000 photos); a batch's write is in RUN_FIXED_S.
BACKFILL_VCPU_S = 2 * (2.5 + 4.8) / 5000
# The request before runs were sized (until December 2026), for comparison: a 2-vCPU driver of
# 6 GB and three 4-vCPU executors of 10 GB, held for every run's life (12 pending tasks make
# dynamic allocation ask for all 3 within a second, Spark's schedulerBacklogTimeout).
FIXED = sizing.RunSize(
    driver=sizing.Worker(2, 4, 2),
    executor=sizing.Worker(4, 4, 6),
    min_executors=3,
    initial_executors=3,
    max_executors=3,
)
ARRIVALS_PER_HOUR = {
    "100 photos/hour": 100,
    "10,000 photos/hour": 10_000,
    "1,000,000/day": 1e6 / 24,
}
BACKFILLS = (10_000, 1_000_000)


@dataclass(frozen=True)
class Service:
    billing_minimum_s: float = BILLING_MINIMUM_S
    worker_start_s: float = WORKER_START_S
    application_start_s: float = APPLICATION_START_S
    auto_stop_s: float = AUTO_STOP_S
    run_fixed_s: float = RUN_FIXED_S


@dataclass(frozen=True)
class RunCost:
    photos: float
    seconds: float  # from StartJobRun to SUCCESS, the application already started
    vcpu_s: float
    gb_s: float


def run_cost(
    photos: float, size: sizing.RunSize, service: Service, backfill: bool = False
) -> RunCost:
    """One run of ``photos`` photos: the driver is billed from ready to the end, each
    executor from ready (a worker start after the driver's) to the end, each at least the
    billing minimum. A backfill also fits the PCA and writes every row (run K: 7.3 s of its
    stages on 2 vCPU for 5,000 photos, on the executors' cores)."""
    cores = size.initial_executors * size.executor.cores
    work = sizing.work_vcpu_s(math.ceil(photos)) + (BACKFILL_VCPU_S * photos if backfill else 0)
    work_s = work / cores
    driver_s = service.run_fixed_s + service.worker_start_s + work_s
    executor_s = driver_s - service.worker_start_s
    driver = max(driver_s, service.billing_minimum_s)
    executor = max(executor_s, service.billing_minimum_s)
    n = size.initial_executors
    return RunCost(
        photos=photos,
        seconds=service.worker_start_s + driver_s,
        vcpu_s=driver * size.driver.cores + n * executor * size.executor.cores,
        gb_s=driver * size.driver.billed_gb + n * executor * size.executor.billed_gb,
    )


@dataclass(frozen=True)
class Figures:
    name: str
    photos_per_run: float
    vcpu_s_per_1000: float
    gb_s_per_1000: float
    p50_s: float
    p95_s: float
    saturated: bool  # runs would arrive faster than MaxConcurrentRuns can finish them


def trigger(
    name: str,
    per_hour: float,
    *,
    batch_size: int,
    window_s: float,
    sized: bool,
    service: Service,
    max_executors: int,
    max_concurrent_runs: int,
) -> Figures:
    """Uploads at ``per_hour``, batched by SQS: a batch closes at ``batch_size`` messages or
    ``window_s`` seconds, whichever comes first; an upload waits for its batch to close
    (uniformly, for a steady rate), then for its run."""
    fill_s = batch_size / per_hour * 3600
    wait_s = min(window_s, fill_s)
    photos = max(1.0, min(batch_size, per_hour * window_s / 3600))
    size = (
        sizing.size_run(math.ceil(photos), runtime="onnx", max_executors=max_executors)
        if sized
        else FIXED
    )
    run = run_cost(photos, size, service)
    gap_s = 3600 * photos / per_hour
    stopped = gap_s > service.auto_stop_s + run.seconds
    start = service.application_start_s if stopped else 0.0
    runs_per_hour = per_hour / photos
    return Figures(
        name=name,
        photos_per_run=photos,
        vcpu_s_per_1000=run.vcpu_s / photos * 1000,
        gb_s_per_1000=run.gb_s / photos * 1000,
        p50_s=0.5 * wait_s + start + run.seconds,
        p95_s=0.95 * wait_s + start + run.seconds,
        saturated=runs_per_hour * run.seconds > 3600 * max_concurrent_runs,
    )


def backfill(photos: int, *, sized: bool, service: Service, max_executors: int) -> Figures:
    """A backfill by hand: the command counts the prefix's photos and sizes the run to them
    (``fruits_ops/listing.py``); the fixed request was as wide as allowed."""
    size = sizing.size_run(photos, runtime="onnx", max_executors=max_executors) if sized else FIXED
    run = run_cost(photos, size, service, backfill=True)
    latency = service.application_start_s + run.seconds
    return Figures(
        name=f"backfill of {photos:,}",
        photos_per_run=photos,
        vcpu_s_per_1000=run.vcpu_s / photos * 1000,
        gb_s_per_1000=run.gb_s / photos * 1000,
        p50_s=latency,
        p95_s=latency,
        saturated=False,
    )


def price(figures: Figures, vcpu_hour: float | None, gb_hour: float | None) -> str:
    if vcpu_hour is None or gb_hour is None:
        return "-"
    cost = figures.vcpu_s_per_1000 / 3600 * vcpu_hour + figures.gb_s_per_1000 / 3600 * gb_hour
    return f"${cost:.4f}"


def table(
    rows: list[tuple[str, Figures]], vcpu_hour: float | None, gb_hour: float | None
) -> list[str]:
    """The printed table, a line per case and request; ``$/1k`` is ``-`` unless both prices are
    given, and a case whose runs would queue is flagged: its latencies leave the queue out."""
    out = [
        f"{'':<22} {'request':<7} {'photos/run':>10} {'vCPU-s/1k':>10} {'GB-s/1k':>9} "
        f"{'$/1k':>8} {'p50 s':>7} {'p95 s':>7}"
    ]
    for label, f in rows:
        flag = "  runs queue: over MaxConcurrentRuns" if f.saturated else ""
        out.append(
            f"{f.name:<22} {label:<7} {f.photos_per_run:>10,.0f} {f.vcpu_s_per_1000:>10,.0f} "
            f"{f.gb_s_per_1000:>9,.0f} {price(f, vcpu_hour, gb_hour):>8} {f.p50_s:>7,.0f} "
            f"{f.p95_s:>7,.0f}{flag}"
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = convention.parser("python -m fruits_ops.capacity", __doc__.splitlines()[0], None)
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="the stack's BatchSize parameter"
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=120,
        help="the stack's BatchWindowSeconds parameter, seconds",
    )
    parser.add_argument(
        "--max-executors",
        type=int,
        default=request.DEFAULT_MAX_EXECUTORS,
        help="the stack's MaxExecutors parameter",
    )
    parser.add_argument(
        "--max-concurrent-runs", type=int, default=1, help="the stack's MaxConcurrentRuns"
    )
    parser.add_argument(
        "--vcpu-hour",
        type=float,
        help="price per vCPU-hour in your region (default: none, the formula is printed)",
    )
    parser.add_argument(
        "--gb-hour",
        type=float,
        help="price per GB-hour in your region (default: none, the formula is printed)",
    )
    parser.add_argument(
        "--billing-minimum",
        type=float,
        default=BILLING_MINIMUM_S,
        help="seconds billed at least per worker (the service's 1-minute minimum)",
    )
    parser.add_argument(
        "--worker-start",
        type=float,
        default=WORKER_START_S,
        help="seconds from a worker's request to ready (an assumption)",
    )
    parser.add_argument(
        "--application-start",
        type=float,
        default=APPLICATION_START_S,
        help="seconds for a stopped application to start (an assumption)",
    )
    parser.add_argument(
        "--run-fixed",
        type=float,
        default=RUN_FIXED_S,
        help="a run's driver seconds that do not featurize (measured, see the module)",
    )
    return parser


def flag_problems(args: argparse.Namespace) -> list[str]:
    """Values the model cannot take, all named at once: a count below 1, a negative or endless
    time, a price of zero or less. Unchecked, they print a table of nonsense (negative costs
    and latencies) or a traceback (no executor) rather than an error."""
    times = (
        ("--billing-minimum", args.billing_minimum),
        ("--worker-start", args.worker_start),
        ("--application-start", args.application_start),
        ("--run-fixed", args.run_fixed),
    )
    checks = [
        ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
        (
            "--batch-window",
            args.batch_window,
            math.isfinite(args.batch_window) and args.batch_window > 0,
            "more than 0 seconds",
        ),
        ("--max-executors", args.max_executors, args.max_executors >= 1, "at least 1"),
        (
            "--max-concurrent-runs",
            args.max_concurrent_runs,
            args.max_concurrent_runs >= 1,
            "at least 1",
        ),
        *(
            (flag, value, math.isfinite(value) and value >= 0, "0 or more seconds")
            for flag, value in times
        ),
        *(
            (flag, value, value is None or (math.isfinite(value) and value > 0), "a price above 0")
            for flag, value in (("--vcpu-hour", args.vcpu_hour), ("--gb-hour", args.gb_hour))
        ),
    ]
    return [convention.flag_error(flag, value, what) for flag, value, ok, what in checks if not ok]


@convention.refusing
def main(argv: list[str] | None = None) -> int:
    args = convention.checked_args(build_parser(), argv, flag_problems)
    service = Service(
        billing_minimum_s=args.billing_minimum,
        worker_start_s=args.worker_start,
        application_start_s=args.application_start,
        run_fixed_s=args.run_fixed,
    )
    rows: list[tuple[str, Figures]] = []
    for name, per_hour in ARRIVALS_PER_HOUR.items():
        for label, sized in (("fixed", False), ("sized", True)):
            rows.append(
                (
                    label,
                    trigger(
                        name,
                        per_hour,
                        batch_size=args.batch_size,
                        window_s=args.batch_window,
                        sized=sized,
                        service=service,
                        max_executors=args.max_executors,
                        max_concurrent_runs=args.max_concurrent_runs,
                    ),
                )
            )
    for photos in BACKFILLS:
        for label, sized in (("fixed", False), ("sized", True)):
            rows.append(
                (
                    label,
                    backfill(
                        photos, sized=sized, service=service, max_executors=args.max_executors
                    ),
                )
            )
    print("\n".join(table(rows, args.vcpu_hour, args.gb_hour)))
    if args.vcpu_hour is None or args.gb_hour is None:
        print("\n$ per 1,000 photos = vCPU-s/1k / 3600 x (price per vCPU-hour)")
        print("                   + GB-s/1k / 3600 x (price per GB-hour)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
