"""Job throughput against the model's own speed, and peak memory against input size.

One run on one machine measures, at each image size and for each runtime (ONNX Runtime
on the model fruits_build/ exports, TensorFlow/Keras on the weights file):
  raw  the featurizer in a tight in-process loop on already-preprocessed batches
       (same model, weights, image size and batch size; all cores to the runtime);
  function  the job's featurizing function itself (decode, model, hashes, Arrow result)
       outside Spark, on the job's photos, one single-threaded process per core as
       Spark's Python workers run it: what the featurize stage would do with no Spark;
  job  the job end to end on local[N] over the same number of images, as a user runs
       it (`python -m emr_serverless_job`), from its run report;
  seed the seed pattern (benchmarks/seed.py: Keras model.predict in a pandas UDF over a
       repartition of 2 tasks per core, as its users run it; --seed-per-task adds the variant
       without it as a labelled row; Spark ML
       StandardScaler + PCA) on the same photos, each whole process timed from outside;
and the peak resident memory of the job's whole process tree (driver JVM and Python
workers). Seed and job alternate, seed then job, for --rounds rounds (2 by default); every
round is kept and the headline ratios compare each one's fastest. Ratios, not single
timings, are the result.

    ./dev bench                       # 5,000 images at 224 and 128, both runtimes
    ./dev bench --images 1000 --sizes 128 --runtimes onnx --memory-images 500 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
REAL_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
REAL_SAMPLE = SHARED / "data" / "fruits-sample"
WORK = ROOT / "build" / "bench"
RAW_SECONDS = 30.0
SAMPLE_EVERY_S = 0.25
PHONE_SIZE = (4032, 3024)  # a 12 MP phone photo
PHONE_QUALITY = 90
DEPLOYED_PRECISION = "int8"  # fruits_build/build.py's default
PRECISION = DEPLOYED_PRECISION  # of the job's and raw's model: --precision


def sample_photos() -> list[Path]:
    return sorted(REAL_SAMPLE.rglob("*.jpg")) if REAL_SAMPLE.exists() else []


def cached_folder(name: str, fill: Callable[[Path], None]) -> Path:
    """A generated photo folder under build/bench, rebuilt only if no build of it finished."""
    folder = WORK / name
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        fill(folder)
        marker.touch()
    return folder


def image_folder(count: int) -> Path:
    """``count`` photos in label folders: copies of the real sample where present."""

    def fill(folder: Path) -> None:
        sources = sample_photos()
        if not sources:
            from emr_serverless_job.fruit_blobs import CLASSES
            from fruits_demo.image_sets import write_image_set

            write_image_set(folder, -(-count // len(CLASSES)))
        for index in range(count if sources else 0):
            source = sources[index % len(sources)]
            target = folder / source.parent.name / f"{index:06d}_{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)

    return cached_folder(f"images-{count}", fill)


def phone_folder(count: int) -> Path:
    """``count`` phone-size JPEGs (4032x3024): the sample photos scaled up with sensor-like
    noise, so that they compress like photos (2-4 MB), not like flat colour."""
    import numpy as np
    from PIL import Image

    def fill(folder: Path) -> None:
        sources = sample_photos()
        rng = np.random.default_rng(0)
        for index in range(count):
            if sources:
                source = sources[index % len(sources)]
                label, image = source.parent.name, Image.open(source).convert("RGB")
            else:
                from emr_serverless_job.fruit_blobs import CLASSES, fruit_image

                label = CLASSES[index % len(CLASSES)]
                image = fruit_image(label, index)
            large = np.asarray(image.resize(PHONE_SIZE, Image.Resampling.BICUBIC), np.int16)
            noisy = np.clip(large + rng.normal(0, 6, large.shape), 0, 255).astype(np.uint8)
            target = folder / label / f"{index:06d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy).save(target, quality=PHONE_QUALITY)

    return cached_folder(f"phone-{count}", fill)


def weights() -> str:
    return str(REAL_WEIGHTS) if REAL_WEIGHTS.exists() else "random:0"


def onnx_model(size: int, precision: str = DEPLOYED_PRECISION) -> Path:
    """The model fruits_build/ would ship at this size and precision, checked as the build
    checks it (int8 needs the real photos to calibrate), cached between runs; the export's
    figures are kept next to it (``.json``)."""
    path = WORK / "models" / f"mobilenet_v2_{size}_{precision}.onnx"
    if path.exists():
        return path
    from emr_serverless_job.model import Weights
    from fruits_build import export_onnx

    source = Weights.parse(weights())
    if REAL_SAMPLE.exists():
        exported = export_onnx.export(source, size, path, REAL_SAMPLE, precision=precision)
        figures = {
            "parity_max_abs_diff": exported.parity_max_abs_diff,
            "int8_min_cosine": exported.int8_min_cosine,
            "int8_mean_cosine": exported.int8_mean_cosine,
            "int8_seven_bit_convs": exported.int8_seven_bit_convs,
        }
        path.with_suffix(".json").write_text(json.dumps(figures))
    elif precision == "fp32":
        export_onnx.convert(source, size, path)
    else:
        raise SystemExit(f"an int8 model is calibrated on real photos: {REAL_SAMPLE} is absent")
    return path


def export_figures(size: int, precision: str) -> dict:
    figures = onnx_model(size, precision).with_suffix(".json")
    return json.loads(figures.read_text()) if figures.exists() else {}


def featurizer_flags(runtime: str, size: int) -> list[str]:
    if runtime == "onnx":
        return ["--model", str(onnx_model(size, PRECISION))]
    return ["--runtime", "tensorflow", "--weights", weights(), "--image-size", str(size)]


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1]) * 1024
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak tree RSS and stdout of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            time.sleep(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed with {process.returncode}:\n{stdout}")
    return time.perf_counter() - start, peak, stdout


def raw(runtime: str, size: int, batch_size: int, threads: int, precision: str) -> dict:
    """Runs in its own process: a runtime's thread pools are fixed once per process."""
    import numpy as np

    from emr_serverless_job.model import Weights, onnx_featurizer, tensorflow_featurizer

    if runtime == "onnx":
        featurize = onnx_featurizer(onnx_model(size, precision), threads=threads)
    else:
        featurize = tensorflow_featurizer(size, Weights.parse(weights()), threads=threads)
    batch = np.random.default_rng(0).uniform(-1, 1, (batch_size, size, size, 3))
    batch = batch.astype(np.float32)
    featurize(batch)  # build and warm up
    featurize(batch)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < RAW_SECONDS:
        featurize(batch)
        images += batch_size
    return {"images_per_second": images / (time.perf_counter() - start), "threads": threads}


def function(size: int, batch_size: int, processes: int, folder: Path) -> dict:
    """Runs in its own process: the featurizing function on photo batches in ``processes``
    forked workers (model threads 1, as each Spark task gets one core), for RAW_SECONDS."""
    import multiprocessing

    from fruits_contract import is_image_name

    paths = sorted(p for p in folder.rglob("*") if is_image_name(p.name))
    chunks = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        counts = pool.starmap(
            _function_worker,
            [
                (onnx_model(size, PRECISION), size, batch_size, chunks[worker::processes])
                for worker in range(processes)
            ],
        )
    return {
        "images_per_second": sum(images / seconds for images, seconds in counts),
        "processes": processes,
    }


def _function_worker(
    model: Path, size: int, batch_size: int, chunks: list[list[Path]]
) -> tuple[int, float]:
    """(images, seconds) of one worker looping over its share of the photos."""
    import pyarrow as pa

    from emr_serverless_job.featurize import featurize_batch, result_batch
    from emr_serverless_job.model import images_per_call, onnx_featurizer

    featurizer = onnx_featurizer(model, threads=1)
    per_call = images_per_call("onnx", size, batch_size)  # as the job calls the model
    batches = []
    for chunk in chunks:
        contents = [path.read_bytes() for path in chunk]
        names = pa.array([str(path) for path in chunk])
        batches.append((names, pa.array([len(data) for data in contents], pa.int64()), contents))
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < RAW_SECONDS:
        for names, sizes, contents in batches:
            out = featurize_batch(contents, featurizer, size, per_call)
            result_batch(names, sizes, contents, out)
            images += len(contents)
    return images, time.perf_counter() - start


def measure_function(size: int, batch_size: int, processes: int, count: int) -> dict:
    """``function`` in a child process of its own, on the photos the job reads."""
    onnx_model(size, PRECISION)  # export (and check) outside the measured process
    _, _, out = run_measured(
        [
            sys.executable,
            __file__,
            "--function-only",
            str(size),
            str(count),
            "--batch-size",
            str(batch_size),
            "--precision",
            PRECISION,
        ]
    )
    return json.loads(out.strip().splitlines()[-1])


def measure_raw(runtime: str, size: int, batch_size: int, precision: str) -> tuple[dict, int]:
    """``raw`` in a child process of its own; (figures, peak RSS in bytes)."""
    if runtime == "onnx":
        onnx_model(size, precision)  # export (and check) outside the measured process
    _, peak, out = run_measured(
        [
            sys.executable,
            __file__,
            "--raw-only",
            runtime,
            str(size),
            "--batch-size",
            str(batch_size),
            "--precision",
            precision,
        ]
    )
    return json.loads(out.strip().splitlines()[-1]), peak


def job(
    runtime: str,
    size: int,
    count: int,
    batch_size: int,
    cores: int,
    folder: Path | None = None,
    manifest: Path | None = None,
    output: Path | None = None,
) -> dict:
    """The job over a folder (a backfill) or, given one, a manifest of its photos."""
    folder = folder or image_folder(count)
    if output is None:
        output = WORK / f"out-{runtime}-{size}-{folder.name}"
        shutil.rmtree(output, ignore_errors=True)
    source = ["--manifest", str(manifest)] if manifest else ["--input", str(folder)]
    env_master = f"local[{cores}]"
    command = [
        sys.executable,
        "-m",
        "emr_serverless_job",
        *source,
        "--output",
        str(output),
        *featurizer_flags(runtime, size),
        "--batch-size",
        str(batch_size),
        "--pca-k",
        "64",
    ]
    os.environ["SPARK_MASTER"] = env_master
    started = time.time()
    seconds, peak, _ = run_measured(command)
    (report_path,) = (
        p for p in output.glob("reports/run_id=*/report.json") if p.stat().st_mtime >= started
    )
    report = json.loads(report_path.read_text())
    assert report["features"] == count, report
    return {
        "images": count,
        "featurize_images_per_second": report["images_per_second"],
        "run_images_per_second": count / report["timings_s"]["total"],
        "vcpu_seconds_per_1000": round(cores * report["timings_s"]["total"] * 1000 / count, 1),
        "timings_s": report["timings_s"],
        "process_seconds": round(seconds, 1),
        "peak_rss_mib": round(peak / 2**20),
    }


def manifest_vs_backfill(size: int, count: int, batch_size: int, cores: int) -> dict:
    """A backfill of ``count`` photos, then a manifest run of the same photos (sizes given,
    as the trigger writes them) into the backfill's PCA space, each a whole process."""
    folder = image_folder(count)
    output = WORK / f"out-manifest-{size}-{folder.name}"
    shutil.rmtree(output, ignore_errors=True)
    backfill = job("onnx", size, count, batch_size, cores, folder, output=output)
    manifest = WORK / f"manifest-{folder.name}.jsonl"
    photos = sorted(p for p in folder.rglob("*.jpg"))
    manifest.write_text(
        "".join(json.dumps({"uri": str(p), "size": p.stat().st_size}) + "\n" for p in photos)
    )
    run = job("onnx", size, count, batch_size, cores, folder, manifest=manifest, output=output)
    return {
        "backfill": backfill,
        "manifest": run,
        "manifest_vs_backfill": round(run["process_seconds"] / backfill["process_seconds"], 2),
    }


def seed(
    size: int, count: int, cores: int, folder: Path | None = None, model_per: str = "worker"
) -> dict:
    """The seed pattern on the same photos, as a whole process (needs the real weights file,
    or a random one saved once: the recipe loads a file). ``model_per="task"`` is the
    strawman variant without the repartition, reported as its own row."""
    folder = folder or image_folder(count)
    output = WORK / f"out-seed-{model_per}-{size}-{folder.name}"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "seed.py"),
        "--input",
        str(folder),
        "--output",
        str(output),
        "--weights",
        seed_weights(),
        "--image-size",
        str(size),
        "--k",
        "64",
        "--master",
        f"local[{cores}]",
        "--model-per",
        model_per,
    ]
    seconds, peak, stdout = run_measured(command)
    assert int(stdout.strip().splitlines()[-1]) == count, stdout
    return {
        "images": count,
        "model_per": model_per,
        "process_seconds": round(seconds, 1),
        "peak_rss_mib": round(peak / 2**20),
    }


def seed_weights() -> str:
    if REAL_WEIGHTS.exists():
        return str(REAL_WEIGHTS)
    path = WORK / "models" / "random0.weights.h5"
    if not path.exists():
        from emr_serverless_job.model import Weights, build_keras_model

        path.parent.mkdir(parents=True, exist_ok=True)
        build_keras_model(224, Weights(kind="random")).save_weights(path)
    return str(path)


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 2**20
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "weights": Path(weights()).name,
    }


def against_native_seed(results: dict) -> None:
    """Each size's job against the seed pattern at 224 px, the size its users run MobileNetV2
    at: the question a user asks is what the job costs against what they run today, whatever
    image size the job was given. ``vs_seed`` stays the same-size comparison. Round by round,
    each job round is paired with the seed's round of the same number."""
    native = results["sizes"].get(224, {}).get("seed")
    if not native:
        return
    native_rounds = results["sizes"][224]["seed_rounds"]
    for size, measured in results["sizes"].items():
        for runtime in ("onnx", "tensorflow"):
            if runtime in measured:
                seconds = measured[runtime]["job"]["process_seconds"]
                ratio = round(native["process_seconds"] / seconds, 2)
                measured[runtime]["vs_seed_at_224"] = ratio
                by_round = [
                    round(baseline["process_seconds"] / each["process_seconds"], 2)
                    for baseline, each in zip(
                        native_rounds, measured[runtime]["job_rounds"], strict=True
                    )
                ]
                measured[runtime]["vs_seed_at_224_rounds"] = by_round
                print(
                    f"{size}px {runtime}: {ratio}x the seed pattern at 224 px "
                    f"(fastest rounds; round by round {by_round})",
                    flush=True,
                )


def fastest(measured: list[dict]) -> dict:
    """The round with the shortest whole process: a round slowed by this VM's neighbours is
    noise, not the program, and seed and job are each given their best round alike."""
    return min(measured, key=lambda each: each["process_seconds"])


def alternating_rounds(size: int, args: argparse.Namespace, cores: int) -> list[dict]:
    """Seed, then the job in each runtime, then again, ``--rounds`` times: a slow minute on a
    shared VM falls on one round of both rather than on all of one (the review's method)."""
    rounds = []
    for number in range(1, args.rounds + 1):
        measured: dict = {}
        if not args.no_seed:
            measured["seed"] = seed(size, args.images, cores)
            print(
                f"{size}px round {number} seed pattern: "
                f"{measured['seed']['process_seconds']} s whole process",
                flush=True,
            )
        for runtime in args.runtimes:
            measured[runtime] = job(runtime, size, args.images, args.batch_size, cores)
            print(
                f"{size}px round {number} job {runtime}: "
                f"{measured[runtime]['process_seconds']} s whole process, featurize "
                f"{measured[runtime]['featurize_images_per_second']:.1f} img/s",
                flush=True,
            )
        rounds.append(measured)
    return rounds


def against_raw(
    size: int, runtime: str, job_rounds: list[dict], args: argparse.Namespace, cores: int
) -> dict:
    """One runtime's job rounds against the raw model and the featurizing function, each
    measured once here (30 s loops, steadier than a whole run)."""
    measured_raw, raw_peak = measure_raw(runtime, size, args.batch_size, PRECISION)
    raw_speed = measured_raw["images_per_second"]
    measured_job = fastest(job_rounds)
    ratio = measured_job["featurize_images_per_second"] / raw_speed
    result = {
        "raw": measured_raw,
        "raw_peak_rss_mib": round(raw_peak / 2**20),
        "precision": PRECISION if runtime == "onnx" else "fp32",
        "job": measured_job,
        "job_rounds": job_rounds,
        "ratio": round(ratio, 3),
        "ratio_rounds": [
            round(each["featurize_images_per_second"] / raw_speed, 3) for each in job_rounds
        ],
        "whole_run_ratio": round(measured_job["run_images_per_second"] / raw_speed, 3),
    }
    if runtime == "onnx":
        measured_function = measure_function(size, args.batch_size, cores, args.images)
        function_speed = measured_function["images_per_second"]
        result.update(
            function=measured_function,
            function_vs_raw=round(function_speed / raw_speed, 3),
            featurize_vs_function=round(
                measured_job["featurize_images_per_second"] / function_speed, 3
            ),
        )
        print(
            f"{size}px featurizing function outside Spark ({cores} processes): "
            f"{function_speed:.1f} img/s, {function_speed / raw_speed:.2f} of raw; "
            f"the job's featurize stage is "
            f"{measured_job['featurize_images_per_second'] / function_speed:.2f} of it",
            flush=True,
        )
    if runtime == "onnx" and PRECISION != "fp32":
        fp32_raw, _ = measure_raw(runtime, size, args.batch_size, "fp32")
        figures = export_figures(size, PRECISION)
        result.update(raw_fp32=fp32_raw, export=figures)
        print(
            f"{size}px {PRECISION} vs fp32 raw: {raw_speed:.1f} vs "
            f"{fp32_raw['images_per_second']:.1f} img/s; export {figures}",
            flush=True,
        )
    print(
        f"{size}px {runtime}: raw {raw_speed:.1f} img/s (peak RSS "
        f"{round(raw_peak / 2**20)} MiB), job featurize "
        f"{measured_job['featurize_images_per_second']:.1f} img/s (ratio {ratio:.2f}; rounds "
        f"{result['ratio_rounds']}), whole run {measured_job['run_images_per_second']:.1f} img/s, "
        f"{measured_job['vcpu_seconds_per_1000']} vCPU-s per 1,000 images, "
        f"peak RSS {measured_job['peak_rss_mib']} MiB, fastest whole process "
        f"{measured_job['process_seconds']} s of "
        f"{[each['process_seconds'] for each in job_rounds]}",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    parser.add_argument("--runtimes", nargs="+", default=["onnx", "tensorflow"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory-images", type=int, nargs=2, default=[2500, 5000])
    parser.add_argument("--memory-size", type=int, default=128)
    parser.add_argument(
        "--phone-images",
        type=int,
        default=100,
        help="phone-size photos (4032x3024 JPEG) for the seed-vs-job comparison where decoding "
        "dominates (0: skip)",
    )
    parser.add_argument(
        "--manifest-images",
        type=int,
        default=2000,
        help="photos for the manifest-run-vs-backfill comparison at 128 px (0: skip)",
    )
    parser.add_argument(
        "--no-seed", action="store_true", help="skip the seed-pattern baseline (minutes per size)"
    )
    parser.add_argument(
        "--seed-per-task",
        action="store_true",
        help="also time the seed pattern without its repartition (a model per ~30 photos), "
        "as a labelled extra row; the comparison is always against the repartitioned one",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternating rounds of the seed and the job at each size (each round's figures "
        "are kept; the headline ratios compare each one's fastest round)",
    )
    parser.add_argument("--out", type=Path, default=WORK / "results.json")
    parser.add_argument(
        "--precision",
        choices=("int8", "fp32"),
        default=DEPLOYED_PRECISION,
        help=f"of the onnx model the job and raw run (default {DEPLOYED_PRECISION}, as deployed)",
    )
    parser.add_argument("--raw-only", nargs=2, help=argparse.SUPPRESS)  # child: RUNTIME SIZE
    parser.add_argument("--function-only", nargs=2, type=int, help=argparse.SUPPRESS)  # SIZE N
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least one round of each")
    global PRECISION
    PRECISION = args.precision
    cores = os.cpu_count() or 1
    if args.raw_only:
        runtime, size = args.raw_only[0], int(args.raw_only[1])
        print(json.dumps(raw(runtime, size, args.batch_size, cores, args.precision)))
        return 0
    if args.function_only:
        size, count = args.function_only
        print(json.dumps(function(size, args.batch_size, cores, image_folder(count))))
        return 0

    results: dict = {
        "machine": machine(),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "sizes": {},
    }
    for size in args.sizes:
        measured_size = results["sizes"].setdefault(size, {})
        rounds = alternating_rounds(size, args, cores)
        if not args.no_seed:
            measured_size["seed_rounds"] = [each["seed"] for each in rounds]
            measured_size["seed"] = fastest(measured_size["seed_rounds"])
        if args.seed_per_task and not args.no_seed:
            strawman = seed(size, args.images, cores, model_per="task")
            measured_size["seed_model_per_task"] = strawman
            print(
                f"{size}px seed pattern without its repartition (a model per task): "
                f"{strawman['process_seconds']} s whole process",
                flush=True,
            )
        for runtime in args.runtimes:
            measured_size[runtime] = against_raw(
                size, runtime, [each[runtime] for each in rounds], args, cores
            )
            if not args.no_seed:
                seeds = measured_size["seed_rounds"]
                measured_size[runtime]["vs_seed_rounds"] = [
                    round(baseline["process_seconds"] / each[runtime]["process_seconds"], 2)
                    for baseline, each in zip(seeds, rounds, strict=True)
                ]
                measured_size[runtime]["vs_seed"] = round(
                    measured_size["seed"]["process_seconds"]
                    / measured_size[runtime]["job"]["process_seconds"],
                    2,
                )
    if args.phone_images and not args.no_seed:
        phones = phone_folder(args.phone_images)
        for size in args.sizes:
            baseline = seed(size, args.phone_images, cores, phones)
            measured = job("onnx", size, args.phone_images, args.batch_size, cores, phones)
            ratio = round(baseline["process_seconds"] / measured["process_seconds"], 2)
            results.setdefault("phone", {})[size] = {
                "seed": baseline,
                "onnx": measured,
                "vs_seed": ratio,
            }
            print(
                f"{size}px phone photos ({args.phone_images} x {PHONE_SIZE[0]}x{PHONE_SIZE[1]}): "
                f"seed {baseline['process_seconds']} s, job onnx {measured['process_seconds']} s "
                f"whole process ({ratio}x)",
                flush=True,
            )
    if args.manifest_images:
        compared = manifest_vs_backfill(128, args.manifest_images, args.batch_size, cores)
        results["manifest"] = compared
        backfill = compared["backfill"]
        print(
            f"128px {args.manifest_images} photos: backfill {backfill['process_seconds']} s "
            f"(list {backfill['timings_s']['list']} s), manifest run "
            f"{compared['manifest']['process_seconds']} s (list "
            f"{compared['manifest']['timings_s']['list']} s): "
            f"{compared['manifest_vs_backfill']}x the backfill",
            flush=True,
        )
    memory: dict = {}
    for runtime in args.runtimes:
        for count in args.memory_images:
            # A size the rounds measured already: its highest peak, not the fastest round's.
            known = results["sizes"].get(args.memory_size, {}).get(runtime, {}).get("job_rounds")
            measured = (
                max(known, key=lambda each: each["peak_rss_mib"])
                if known and known[0]["images"] == count
                else job(runtime, args.memory_size, count, args.batch_size, cores)
            )
            memory.setdefault(runtime, {})[count] = measured["peak_rss_mib"]
            print(
                f"memory {runtime} at {args.memory_size}px, {count} images: "
                f"peak RSS {measured['peak_rss_mib']} MiB, featurize "
                f"{measured['featurize_images_per_second']:.1f} img/s",
                flush=True,
            )
    results["memory"] = {"image_size": args.memory_size, "peak_rss_mib_by_images": memory}
    against_native_seed(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
