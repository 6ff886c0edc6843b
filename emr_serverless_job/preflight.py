"""A preflight: prove in seconds, on the service itself, that the deployed job can run there.

``python -m fruits_ops.preflight --stack NAME`` submits the request of a real run (the same
entry point, venv archive, job package, model and Spark parameters: lambda_trigger/request.py)
with ``--preflight RAW_URI`` as its source. ``main.py`` hands that flag here before anything
imports numpy, so an interpreter or a library that cannot load is named in the report instead
of killing the driver with a traceback. In order, the first failure naming the exit:

- ``driver_python``: ``sys.executable`` is the archive's ``./environment/bin/python``, its
  realpath, version, and the archive's site-packages for that version;
- ``driver_imports``: numpy, pyarrow, pandas, PIL, onnxruntime (tensorflow for that runtime)
  and the job's modules, with versions and where each was loaded from;
- ``driver_cpu``: /proc/cpuinfo's model and int8 flags (AVX2, AVX-512 F/BW/DQ/VL, AVX-512
  VNNI, AVX-VNNI, AMX) and the int8 kernel ONNX Runtime picks for them (inferred: ONNX Runtime
  does not say which it took);
- ``model``: the model read as a run reads it (shipped with Spark, shape and metadata), and
  the fp32 reference, if one is given;
- ``artifacts``: what runs against ``artifacts.json`` (the build's record): sha256 of the job
  package, entry point and model, the interpreter the archive links to, package versions;
- ``raw_read``: one object under ``raw/`` (the first photo, or the key given) read and
  decoded; finding none is a warning;
- ``output_marker``: ``OUTPUT/_preflight/RUN_ID`` written, read back and deleted;
- ``executors``: a small RDD over a few partitions per executor: each executor's Python
  worker reports its interpreter, imports (onnxruntime included) and CPU;
- ``model_on_executors``: on each executor's CPU, the deployed model's features on a few
  generated images and the raw photo: an int8 model with the fused int8 kernels (the job's
  session) against the same model evaluated operator by operator (no int8 kernel), and
  against the fp32 reference when one is given.

The report is ``OUTPUT/reports/preflight/RUN_ID/report.json`` (also printed); its
``not_checked`` says what a preflight cannot prove.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fruits_contract import (
    INT8_MIN_COSINE,
    PREFLIGHT_MARKER_FOLDER,
    PREFLIGHT_REPORT,
    is_image_name,
    now_iso,
    preflight_run_id,
)

EXIT_FAILED = 1
EXIT_CONFIG_ERROR = 2

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
# What a Python worker of the job imports, per runtime (the archive's packages), and what the
# driver runs the job with (main.py imports these two; they import every other job module).
LIBRARIES = {
    "onnx": ("numpy", "pyarrow", "pandas", "PIL", "onnxruntime"),
    "tensorflow": ("numpy", "pyarrow", "pandas", "PIL", "tensorflow"),
}
JOB_MODULES = ("emr_serverless_job.job", "emr_serverless_job.erase")
SERVICE_LIBRARIES = ("pyspark", "py4j")  # EMR's, not the archive's
# Import name -> distribution name, where they differ (artifacts.json lists distributions).
DISTRIBUTIONS = {"PIL": "pillow"}
X86_INT8_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
)
ARM_INT8_FEATURES = ("asimd", "asimddp", "i8mm")
AVX512_CORE = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})
INT8_PATH_SOURCE = (
    "inferred from /proc/cpuinfo and ONNX Runtime's MLAS dispatch order "
    "(onnxruntime/core/mlas/lib/platform.cpp); ONNX Runtime does not report the kernel it chose"
)
GENERATED_IMAGES = 4
RAW_SCAN_LIMIT = 1000  # files listed under raw/ at most while looking for a photo
RAW_SHIP_BYTES = 8 << 20  # the raw photo goes to the executors' model check up to this size
# Fused int8 kernels against the same int8 model op by op: 0.9983-0.9993 per image when this
# threshold was set (AVX-512 VNNI, generated and real photos alike), the measurement it rests
# on; an int16 saturation of vpmaddubsw on 8-bit weights drops it far lower (int8 against
# fp32 fell to 0.71, the case export_onnx.py guards against).
INT8_KERNEL_MIN_COSINE = 0.99
DETAIL_CHARS = 600  # of a cause in a check's detail (a stage failure's message is pages long)
PROBE_ROUNDS = 3  # RDD rounds at most, while executors that registered were not probed
TASKS_PER_EXECUTOR = 2
NOT_CHECKED = (
    "IAM beyond the calls made here (one listing and read under raw/, a write, read and delete "
    "under output/_preflight/, the report, the artifacts): the tables' writes and their "
    "committer folders, pca_model/ and manifests/ are not exercised",
    "memory: no full-size photo nor a batch of 64 is featurized, so no container limit is met",
    "executors dynamic allocation had not started: only executors that ran a probe task are "
    "checked (all run the same image and archive; their CPUs may differ)",
    "the fp32 model, unless --reference-model was given: the build uploads only the deployed "
    "model, so an int8 model is compared with itself run operator by operator (its int8 "
    "arithmetic on this CPU), and artifacts.json's int8-to-fp32 cosine is the build machine's",
    "the trigger, queue and watcher: nothing is written under raw/, so no S3 event is sent",
    "throughput and cost",
)


class PreflightError(RuntimeError):
    """A check failed; printed on stderr so that the service's stateDetails can quote it."""


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Report:
    run_id: str
    output: str
    source: str
    started_at: str
    checks: list[Check] = field(default_factory=list)
    finished_at: str = ""
    report: str = ""

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if c.status == FAIL), None)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The report.json body: ``fruits_ops.preflight`` reads ``ok``, ``failed``, ``cause`` and
        ``checks`` from it, so those keys are a contract with the operator's command."""
        failed = self.failed
        return {
            "preflight": self.run_id,
            "ok": failed is None,
            "failed": failed.name if failed else None,
            "cause": failed.detail if failed else None,
            "source": self.source,
            "output": self.output,
            "report": self.report,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "checks": [asdict(c) for c in self.checks],
            "not_checked": list(NOT_CHECKED),
        }

    def summary(self) -> str:
        lines = [f"preflight {self.run_id}"]
        lines += [f"  {c.status:4}  {c.name}: {c.detail}" for c in self.checks]
        failed = self.failed
        lines.append(f"failed: {failed.name}: {failed.detail}" if failed else "passed")
        return "\n".join(lines)


def cause(error: BaseException) -> str:
    """One line: a Java exception's class and message (py4j), or the Python one's."""
    java = getattr(error, "java_exception", None)
    if java is not None:
        text = f"{java.getClass().getSimpleName()}: {java.getMessage()}"
    else:
        lines = str(error).strip().splitlines()
        text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_CHARS else f"{text[: DETAIL_CHARS - 3]}..."


def run_check(
    report: Report, name: str, function: Callable[[], tuple[str, str, dict[str, Any]]]
) -> Check:
    """Run one check; an exception fails it with its cause (and the traceback's tail)."""
    started = time.perf_counter()
    try:
        status, detail, data = function()
    except Exception as error:
        status, detail = FAIL, cause(error)
        data = {"traceback": traceback.format_exc().splitlines()[-6:]}
    check = Check(name, status, detail, data, round(time.perf_counter() - started, 3))
    report.checks.append(check)
    return check


# --- the interpreter, the imports and the CPU: the same code on the driver and executors ----


def interpreter_facts() -> dict[str, Any]:
    """This process's Python and venv as JSON-able values, gathered alike on the driver and in
    each executor's Python worker for ``judge_interpreter``; only the standard library."""
    executable = Path(sys.executable)
    environment = executable.parent.parent
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    site = environment / "lib" / f"python{version}" / "site-packages"
    return {
        "executable": str(executable),
        "realpath": os.path.realpath(executable),
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cwd": os.getcwd(),
        "prefix": sys.prefix,
        "environment": str(environment),
        "site_packages": str(site),
        "site_packages_on_path": site.is_dir()
        and any(Path(entry).resolve() == site.resolve() for entry in sys.path if entry),
        "archive_pythons": sorted(p.name for p in (environment / "lib").glob("python3*")),
        "glibc": "-".join(platform.libc_ver()),
        "machine": platform.machine(),
    }


def judge_interpreter(facts: dict[str, Any]) -> tuple[str, str]:
    """Whether this process runs the archive's Python, as the request's PYSPARK_PYTHON asks."""
    shown = f"{facts['executable']} -> {facts['realpath']} (Python {facts['version']})"
    parts = Path(facts["executable"]).parts
    if parts[-3:-1] != ("environment", "bin"):
        return FAIL, (
            f"{shown} is not the archive's ./environment/bin/python: PYSPARK_PYTHON was not "
            "applied or the archive was not unpacked as ./environment"
        )
    if not Path(facts["realpath"]).is_file():
        return FAIL, f"{shown}: the link resolves to nothing"
    if Path(facts["prefix"]).resolve() != Path(facts["environment"]).resolve():
        return FAIL, f"{shown}: sys.prefix is {facts['prefix']}, the venv is not active"
    if not facts["site_packages_on_path"]:
        packed = ", ".join(facts["archive_pythons"]) or "none"
        return FAIL, (
            f"{shown}: the archive has no site-packages for Python {facts['version']} on "
            f"sys.path (it was packed for: {packed}): the image's interpreter is not the one the "
            "archive was built against"
        )
    return PASS, shown


def import_modules(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each module imported here: its version and file, or the error that stopped it."""
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except BaseException as error:  # a broken extension can raise anything, even SystemExit
            found[name] = {"error": cause(error)}
            continue
        found[name] = {
            "version": getattr(module, "__version__", None),
            "file": getattr(module, "__file__", None),
        }
    return found


def judge_imports(imported: dict[str, dict[str, Any]], prefix: str) -> tuple[str, str]:
    """A failed import fails; a library loaded from outside ``prefix`` (the archive) only warns,
    except EMR's own (``SERVICE_LIBRARIES``) and the job's modules, never in the archive."""
    broken = [f"{name}: {entry['error']}" for name, entry in imported.items() if "error" in entry]
    if broken:
        return FAIL, "; ".join(broken)
    archive = str(Path(prefix).resolve())
    outside = [
        name
        for name, entry in imported.items()
        if name not in SERVICE_LIBRARIES
        and not name.startswith("emr_serverless_job")
        and entry.get("file")
        and not str(Path(entry["file"]).resolve()).startswith(archive)
    ]
    versions = ", ".join(
        f"{name} {entry['version']}" for name, entry in imported.items() if entry.get("version")
    )
    if outside:
        return WARN, f"{', '.join(outside)} loaded from outside the archive ({archive}); {versions}"
    return PASS, versions


def cpu_facts(cpuinfo: str | None = None) -> dict[str, Any]:
    """/proc/cpuinfo's first processor: model, int8 flags, and the int8 kernel they select."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError as error:
            return {"error": f"/proc/cpuinfo unreadable: {cause(error)}", "int8_path": None}
    first: dict[str, str] = {}
    processors = 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            processors += 1
        if processors <= 1 and key and key not in first:
            first[key] = value.strip()
    flags = set((first.get("flags") or first.get("Features") or "").split())
    machine = platform.machine()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    wanted = ARM_INT8_FEATURES if machine in ("aarch64", "arm64") else X86_INT8_FLAGS
    return {
        "model": first.get("model name") or first.get("CPU part") or "unknown",
        "machine": machine,
        "processors": processors,
        "usable_cpus": usable,
        "flags": {name: name in flags for name in wanted},
        "int8_path": int8_path(machine, flags),
        "int8_path_source": INT8_PATH_SOURCE,
    }


def int8_path(machine: str, flags: set[str]) -> str:
    """The u8s8 kernel MLAS dispatches to on a CPU with these flags (its order, platform.cpp)."""
    if machine in ("aarch64", "arm64"):
        extras = [f for f in ("asimddp", "i8mm") if f in flags]
        return f"arm64 NEON ({', '.join(extras) or 'no dot product'}): kernel not inferred here"
    if machine not in ("x86_64", "AMD64"):
        return f"{machine}: not inferred"
    if not {"avx2", "fma"} <= flags:
        return "SSE: no AVX2, the slowest int8 path"
    if flags >= AVX512_CORE and "avx512_vnni" in flags:
        path = "AVX-512 VNNI (vpdpbusd: exact int32 sums)"
    elif flags >= AVX512_CORE:
        path = "AVX-512 core without VNNI (vpmaddubsw: int16 pair sums saturate; 7-bit weights)"
    elif "avx_vnni" in flags:
        path = "AVX-VNNI (vpdpbusd on 256 bits: exact int32 sums)"
    else:
        path = "AVX2 without VNNI (vpmaddubsw: int16 pair sums saturate; 7-bit weights)"
    if {"amx_tile", "amx_int8"} <= flags:
        path = f"AMX int8 tiles if the kernel grants them, else {path}"
    return path


def describe_cpu(facts: dict[str, Any]) -> str:
    if "error" in facts:
        return str(facts["error"])
    return f"{facts['model']} ({facts['usable_cpus']} CPUs): int8 path {facts['int8_path']}"


# --- the model, on whichever CPU runs it --------------------------------------------------


def probe_batch(image_size: int, photo: bytes | None) -> tuple[Any, list[str]]:
    """A few generated fruit images (JPEG, decoded as the job decodes) and the raw photo."""
    import io

    import numpy as np

    from emr_serverless_job.fruit_blobs import CLASSES, fruit_image
    from emr_serverless_job.images import ImageError, decode_image, preprocess

    pixels, names = [], []
    for index in range(GENERATED_IMAGES):
        label = CLASSES[index % len(CLASSES)]
        encoded = io.BytesIO()
        fruit_image(label, index).save(encoded, "JPEG", quality=90)
        pixels.append(decode_image(encoded.getvalue(), image_size)[0])
        names.append(f"generated {label} #{index}")
    if photo:
        try:
            pixels.append(decode_image(photo, image_size)[0])
            names.append("the raw photo")
        except ImageError:
            pass
    return preprocess(np.stack(pixels)), names


def cosines(a: Any, b: Any) -> dict[str, float]:
    """Per-image cosine of two feature matrices: min and mean."""
    import numpy as np

    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    values = (a64 * b64).sum(axis=1) / np.where(norms == 0, 1.0, norms)
    return {"min": round(float(values.min()), 6), "mean": round(float(values.mean()), 6)}


def model_probe(
    model_path: str, reference_path: str | None, image_size: int, photo: bytes | None
) -> dict[str, Any]:
    """The deployed model on this CPU: as the job runs it, against the same model run operator
    by operator (int8: isolates the CPU's int8 kernels), and against the fp32 reference."""
    import numpy as np

    from emr_serverless_job.model import FEATURE_DIM, INT8, onnx_featurizer, read_onnx_model

    started = time.perf_counter()
    info = read_onnx_model(model_path)
    batch, names = probe_batch(image_size, photo)
    features = onnx_featurizer(model_path)(batch)
    result: dict[str, Any] = {"precision": info.precision, "images": names}
    if features.shape != (len(batch), FEATURE_DIM) or not np.isfinite(features).all():
        result["problem"] = (
            f"features of shape {features.shape}, finite: {np.isfinite(features).all()}"
        )
    if info.precision == INT8:
        plain = onnx_featurizer(model_path, optimized=False)(batch)
        result["int8_kernels_vs_op_by_op"] = cosines(features, plain)
    if reference_path:
        result["vs_fp32_reference"] = cosines(features, onnx_featurizer(reference_path)(batch))
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def judge_model(result: dict[str, Any]) -> tuple[str, str]:
    """Pass, or fail naming the comparison below its gate; a description of what was compared."""
    if "error" in result:
        return FAIL, str(result["error"])
    if "problem" in result:
        return FAIL, str(result["problem"])
    parts, status = [], PASS
    for key, gate, what in (
        ("int8_kernels_vs_op_by_op", INT8_KERNEL_MIN_COSINE, "int8 kernels vs op by op"),
        ("vs_fp32_reference", INT8_MIN_COSINE, "vs the fp32 reference"),
    ):
        if key in result:
            low = result[key]["min"]
            parts.append(f"{what}: cosine min {low:.4f} (gate {gate})")
            if low < gate:
                status = FAIL
    if not parts:
        parts.append(f"{result.get('precision')} model: features finite, no int8 comparison")
    return status, f"{'; '.join(parts)} on {len(result.get('images', []))} images"


# --- what one executor's Python worker reports --------------------------------------------


@dataclass(frozen=True)
class ProbeSpec:
    """What the executors' probe needs; plain data (it is pickled to every worker)."""

    modules: tuple[str, ...]
    model_file: str | None = None  # SparkFiles name of the deployed .onnx
    reference_file: str | None = None  # SparkFiles name of the fp32 reference
    image_size: int = 224
    photo: bytes | None = None


_WORKER_PROBE: dict[ProbeSpec, dict[str, Any]] = {}  # one probe per Python worker process


def worker_probe(spec: ProbeSpec) -> dict[str, Any]:
    """This worker's interpreter, imports, CPU and model results (computed once per process)."""
    probed = _WORKER_PROBE.get(spec)
    if probed is not None:
        return {**probed, "reused": True}
    facts = interpreter_facts()
    imported = import_modules(spec.modules)
    probed = {
        "executor": f"{socket.gethostname()}:{os.getcwd()}",
        "pid": os.getpid(),
        "python": facts,
        "python_check": judge_interpreter(facts),
        "imports": imported,
        "imports_check": judge_imports(imported, facts["prefix"]),
        "cpu": cpu_facts(),
    }
    if spec.model_file and not any("error" in entry for entry in imported.values()):
        try:
            from pyspark import SparkFiles

            reference = SparkFiles.get(spec.reference_file) if spec.reference_file else None
            probed["model"] = model_probe(
                SparkFiles.get(spec.model_file), reference, spec.image_size, spec.photo
            )
        except Exception as error:
            probed["model"] = {"error": cause(error)}
    _WORKER_PROBE[spec] = probed
    return {**probed, "reused": False}


def probe_partition(spec: ProbeSpec, _rows: Iterable[Any]) -> Iterator[str]:
    yield json.dumps(worker_probe(spec), default=str)


def registered_executors(spark: Any) -> int:
    """Executors registered with the driver now (the block managers, less the driver's)."""
    return max(0, int(spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()) - 1)


def probe_executors(spark: Any, spec: ProbeSpec) -> tuple[dict[str, list[dict]], int, int]:
    """Probes by executor, executors registered at the end, and the most the run may have.

    A few tasks per executor, so that each registered one runs at least one; again while some
    registered executor ran none (dynamic allocation adds them as they start)."""
    conf = spark.sparkContext.getConf()
    most = int(
        conf.get("spark.dynamicAllocation.maxExecutors", conf.get("spark.executor.instances", "1"))
    )
    by_executor: dict[str, list[dict]] = {}
    task = functools.partial(probe_partition, spec)
    for _ in range(PROBE_ROUNDS):
        wanted = max(1, registered_executors(spark), min(most, 16))
        partitions = TASKS_PER_EXECUTOR * wanted
        rdd = spark.sparkContext.parallelize(range(partitions), partitions)
        for line in rdd.mapPartitions(task).collect():
            probe = json.loads(line)
            by_executor.setdefault(probe["executor"], []).append(probe)
        if len(by_executor) >= registered_executors(spark):
            break
    return by_executor, registered_executors(spark), most


def judge_executors(
    by_executor: dict[str, list[dict]], registered: int, most: int
) -> tuple[str, str, dict[str, Any]]:
    """The first Python worker whose interpreter or imports fail fails the check; a registered
    executor that ran no probe, or an import from outside the archive, only warns. A worker's
    reused probes count as tasks but are judged once."""
    workers = [p for probes in by_executor.values() for p in probes if not p["reused"]]
    summary = {
        name: {
            "python": probes[0]["python"]["executable"],
            "python_resolved": probes[0]["python"]["realpath"],
            "python_version": probes[0]["python"]["version"],
            "onnxruntime": probes[0]["imports"].get("onnxruntime"),
            "cpu": probes[0]["cpu"],
            "python_workers": sorted({p["pid"] for p in probes}),
            "tasks": len(probes),
        }
        for name, probes in by_executor.items()
    }
    data = {
        "executors": summary,
        "registered": registered,
        "at_most": most,
        "workers": [{k: v for k, v in p.items() if k not in ("model",)} for p in workers],
    }
    for probe in workers:
        for key in ("python_check", "imports_check"):
            status, detail = probe[key]
            if status == FAIL:
                return FAIL, f"executor {probe['executor']} (pid {probe['pid']}): {detail}", data
    resolved = sorted({p["python"]["realpath"] for p in workers})
    detail = (
        f"{len(by_executor)} executor(s) probed ({registered} registered, at most {most}), "
        f"{len(workers)} Python worker(s): ./environment/bin/python -> {', '.join(resolved)}"
    )
    warnings = [d for p in workers for s, d in (p["imports_check"],) if s == WARN]
    if len(by_executor) < registered:
        return (
            WARN,
            f"{detail}; {registered - len(by_executor)} registered executor(s) ran no probe",
            data,
        )
    if warnings:
        return WARN, f"{detail}; {warnings[0]}", data
    return PASS, detail, data


def judge_models_on_executors(by_executor: dict[str, list[dict]]) -> tuple[str, str, dict]:
    """The model's results on each executor's CPU (its first Python worker's)."""
    results = {
        name: {"cpu": describe_cpu(probes[0]["cpu"]), **probes[0]["model"]}
        for name, probes in by_executor.items()
        if "model" in probes[0]
    }
    if not results:
        return SKIP, "no executor ran the model (their imports failed)", {}
    data = {"executors": results, "compared": compared_note(results)}
    judged = {name: judge_model(result) for name, result in results.items()}
    for name, (status, detail) in judged.items():
        if status == FAIL:
            return FAIL, f"executor {name} ({results[name]['cpu']}): {detail}", data
    details = sorted({f"{results[n]['cpu']}: {detail}" for n, (_, detail) in judged.items()})
    return PASS, f"{len(results)} executor(s): {' | '.join(details)}", data


def compared_note(results: dict[str, dict]) -> str:
    """What the model check's figures compare, for the report's reader: an int8 model's fused
    kernels against its own op-by-op run is no comparison with fp32. From the first result."""
    any_result = next(iter(results.values()))
    note = (
        "the deployed model's features as the job computes them (ONNX Runtime, all graph "
        "optimizations: fused int8 kernels for an int8 model)"
    )
    if "int8_kernels_vs_op_by_op" in any_result:
        note += (
            " against the same int8 model run operator by operator (graph optimizations off: "
            "QuantizeLinear/DequantizeLinear around fp32 convolutions, no int8 kernel), which "
            "isolates this CPU's int8 arithmetic; this is not a comparison with the fp32 model"
        )
    if "vs_fp32_reference" in any_result:
        note += "; and against the fp32 reference model given (--reference-model)"
    images = any_result.get("images", [])
    return f"{note}; on {len(images)} images: {', '.join(images)}"


# --- the driver's checks --------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def running_files() -> dict[str, Path]:
    """The job package (the --py-files zip) and the entry point this driver runs, by name."""
    files: dict[str, Path] = {}
    package = importlib.import_module("emr_serverless_job")
    zipped = Path(package.__file__).parent.parent
    if zipped.is_file():
        files[zipped.name] = zipped
    entry = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if entry is not None and entry.is_file() and entry.suffix == ".py":
        files[entry.name] = entry
    return files


def compare_with_build(
    built: dict[str, Any],
    running: dict[str, str],
    model_name: str | None,
    model_sha256: str | None,
    realpath: str,
    environment: str,
    versions: dict[str, str | None],
    runtime: str,
) -> tuple[str, str, dict[str, Any]]:
    """What runs against artifacts.json: sha256s, interpreter, package versions, runtime."""
    compared = dict(running)
    if model_name and model_sha256:
        compared[model_name] = model_sha256
    problems = _file_problems(built.get("files", {}), compared)
    archive = built.get("archive", {})
    interpreter = archive.get("interpreter")
    problems += _interpreter_problems(interpreter, realpath, environment)
    problems += _version_problems(archive, versions)
    problems += _build_problems(built, runtime)
    data = _build_data(built, compared, interpreter)
    if problems:
        return FAIL, "; ".join(problems), data
    return _build_verdict(built, compared, realpath, data)


def _file_problems(listed: dict[str, Any], compared: dict[str, str]) -> list[str]:
    """Each running file whose sha256 is not the one artifacts.json lists for it."""
    problems = []
    for name, sha256 in compared.items():
        # By name, else the one listed file of the same kind (Spark may rename a local copy).
        same_kind = [n for n in listed if Path(n).suffix == Path(name).suffix]
        match = name if name in listed else (same_kind[0] if len(same_kind) == 1 else None)
        if match is None:
            problems.append(f"{name} is not listed in artifacts.json")
        elif listed[match].get("sha256") != sha256:
            problems.append(f"{name} is not the {match} artifacts.json lists (sha256 differs)")
    return problems


def _interpreter_problems(interpreter: str | None, realpath: str, environment: str) -> list[str]:
    """The interpreter running, when it is not the one the archive was built for."""
    if not interpreter:
        return []
    expected_python = (
        interpreter
        if interpreter.startswith("/")
        else os.path.realpath(Path(environment) / interpreter)
    )
    if os.path.realpath(expected_python) != realpath:
        return [f"the interpreter is {realpath}; the archive was built for {interpreter}"]
    return []


def _version_problems(archive: dict[str, Any], versions: dict[str, str | None]) -> list[str]:
    """Each package whose running version is not the one the archive packed."""
    problems = []
    for import_name, version in versions.items():
        distribution = DISTRIBUTIONS.get(import_name, import_name)
        packed = archive.get("packages", {}).get(distribution)
        if packed and version and packed != version:
            problems.append(f"{distribution} {version} runs; the archive packed {packed}")
    return problems


def _build_problems(built: dict[str, Any], runtime: str) -> list[str]:
    """A build for another runtime, or from random weights, is not this deployment's."""
    problems = []
    if built.get("runtime") and built["runtime"] != runtime:
        problems.append(
            f"the run is --runtime {runtime}; the artifacts were built for {built['runtime']}"
        )
    if (built.get("weights") or {}).get("random"):
        problems.append("the model was built from random weights (tests only, never deployed)")
    return problems


def _build_data(
    built: dict[str, Any], compared: dict[str, str], interpreter: str | None
) -> dict[str, Any]:
    """What the report keeps of the build's record: its interpreter, parity and warnings."""
    model = built.get("model") or {}
    return {
        "compared": sorted(compared),
        "built_interpreter": interpreter,
        "build_int8_min_cosine": model.get("int8_min_cosine"),
        "build_parity_images": model.get("parity_images"),
        "build_parity_source": model.get("parity_source"),
        "build_calibration_images": model.get("calibration_images"),
        "build_calibration_source": model.get("calibration_source"),
        "build_warnings": built.get("warnings", []),
        "precision": model.get("precision"),
    }


def _build_verdict(
    built: dict[str, Any], compared: dict[str, str], realpath: str, data: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """A pass naming what matched and the build's own int8 measure; a warning if it warned."""
    model = built.get("model") or {}
    detail = f"{', '.join(sorted(compared))} as listed; interpreter {realpath} as built"
    if model.get("int8_min_cosine") is not None:
        detail += (
            f"; the build measured int8 vs fp32 cosine min {model['int8_min_cosine']:.4f} on "
            f"{model.get('parity_images')} parity photos, on the build machine's CPU"
        )
    if built.get("warnings"):
        return WARN, f"{detail}; the build warned: {'; '.join(built['warnings'])}", data
    return PASS, detail, data


def read_raw(
    spark: Any, location: str, max_bytes: int, image_size: int
) -> tuple[tuple, bytes | None]:
    """The first photo under ``location`` (or ``location`` itself), read and decoded."""
    from emr_serverless_job import hadoopfs

    uri, length, looked = hadoopfs.first_file(spark, location, is_image_name, RAW_SCAN_LIMIT)
    if uri is None:
        where = f"among the first {looked} files under" if looked else "under"
        return (
            WARN,
            f"no photo {where} {location}: reading raw/ is not proven (upload one photo and "
            "run the preflight again, or pass --key)",
            {"looked_at": looked},
        ), None
    data: dict[str, Any] = {"uri": uri, "bytes": length, "looked_at": looked}
    if length > max_bytes:
        failure = hadoopfs.read_failure(spark, uri)
        if failure:
            return (FAIL, f"{uri}: {failure}", data), None
        return (PASS, f"{uri} readable ({length} bytes: larger than the job reads)", data), None
    body = hadoopfs.read_bytes(spark, uri)
    try:
        from emr_serverless_job.images import ImageError, decode_image

        _pixels, width, height = decode_image(body, image_size)
    except ImageError as error:
        return (WARN, f"{uri} read ({length} bytes) but not decodable: {error}", data), body
    data.update(width=width, height=height)
    return (PASS, f"{uri} read and decoded ({width}x{height}, {length} bytes)", data), body


def write_marker(spark: Any, output: str, run_id: str) -> tuple[str, str, dict[str, Any]]:
    """``OUTPUT/_preflight/RUN_ID`` written, read back and deleted, as the job's writes do."""
    from emr_serverless_job import hadoopfs

    uri = f"{output}/{PREFLIGHT_MARKER_FOLDER}/{run_id}"
    body = json.dumps({"preflight": run_id, "written_at": now_iso()}).encode()
    steps = (
        ("write", lambda: hadoopfs.write_bytes(spark, uri, body)),
        ("read back", lambda: hadoopfs.read_bytes(spark, uri)),
        ("delete", lambda: hadoopfs.delete(spark, uri)),
    )
    for step, action in steps:
        try:
            result = action()
        except Exception as error:
            return FAIL, f"could not {step} {uri}: {cause(error)}", {"uri": uri}
        if step == "read back" and result != body:
            return FAIL, f"{uri} read back {len(result)} bytes, not the {len(body)} written", {}
    if hadoopfs.exists(spark, uri):
        return FAIL, f"{uri} still exists after its delete", {"uri": uri}
    return PASS, f"{uri} written, read back and deleted", {"uri": uri}


@dataclass
class Arguments:
    """What the preflight reads from the job's flags (config.JobConfig when it imports)."""

    output: str
    source: str
    run_id: str
    runtime: str = "onnx"
    model: str | None = None
    image_size: int | None = None
    artifacts: str | None = None
    reference: str | None = None
    max_file_bytes: int = 50 * 1024 * 1024
    config: Any = None


def parse(argv: list[str]) -> Arguments:
    """The job's own parser (every flag a real run would take is checked); if the job's modules
    cannot be imported here, just the flags the report needs, so that it can still be written."""
    try:
        from emr_serverless_job.config import parse_args
    except BaseException:
        import argparse

        parser = argparse.ArgumentParser(add_help=False)
        for flag in ("--preflight", "--output", "--run-id", "--runtime"):
            parser.add_argument(flag)
        known, _ = parser.parse_known_args(argv)
        return Arguments(
            output=(known.output or ".").rstrip("/"),
            source=known.preflight or "",
            run_id=known.run_id or default_run_id(),
            runtime=known.runtime or "onnx",
        )
    config = parse_args(argv)  # ConfigError: a flag a real run would refuse too
    return Arguments(
        output=config.output,
        source=config.preflight or "",
        run_id=config.run_id or default_run_id(),
        runtime=config.runtime,
        model=config.model,
        image_size=config.image_size,
        artifacts=config.preflight_artifacts,
        reference=config.preflight_reference,
        max_file_bytes=config.max_file_bytes,
        config=config,
    )


def default_run_id() -> str:
    """A new preflight's id, named as the preflight command names the ones it starts."""
    return preflight_run_id(datetime.now(UTC), uuid.uuid4().hex)


def run(args: Arguments, spark: Any) -> Report:
    """Every check, in order, on an existing session; the report is written last."""
    report = Report(args.run_id, args.output, args.source, now_iso())
    report.report = f"{args.output}/{PREFLIGHT_REPORT.format(run_id=args.run_id)}"
    modules = (*LIBRARIES[args.runtime], *SERVICE_LIBRARIES, *JOB_MODULES)
    facts, imported, importable = check_driver(report, modules)
    chosen: dict[str, Any] = {}  # what the model check shipped, for the later checks
    run_check(report, "model", lambda: check_model(args, spark, importable, chosen))
    run_check(report, "artifacts", lambda: check_artifacts(args, spark, facts, imported, chosen))
    photo: dict[str, bytes | None] = {"bytes": None}
    run_check(report, "raw_read", lambda: check_raw(args, spark, chosen, photo))
    run_check(report, "output_marker", lambda: write_marker(spark, args.output, args.run_id))
    spec = probe_spec(modules, chosen, photo["bytes"])
    probed: dict[str, Any] = {}
    run_check(report, "executors", lambda: check_executors(spark, spec, probed))
    run_check(report, "model_on_executors", lambda: check_models_on_executors(spec, probed))
    report.finished_at = now_iso()
    return report


def check_driver(
    report: Report, modules: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], bool]:
    """The driver's interpreter, imports and CPU first: the later checks need what they found.
    Returns the interpreter's facts, the imports and whether every import succeeded."""
    facts = interpreter_facts()
    run_check(report, "driver_python", lambda: (*judge_interpreter(facts), facts))
    imported = import_modules(modules)
    run_check(report, "driver_imports", lambda: (*judge_imports(imported, sys.prefix), imported))
    importable = report.check("driver_imports").status != FAIL
    cpu = cpu_facts()
    run_check(
        report, "driver_cpu", lambda: (WARN if "error" in cpu else PASS, describe_cpu(cpu), cpu)
    )
    return facts, imported, importable


def check_model(
    args: Arguments, spark: Any, importable: bool, chosen: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """The model read and shipped as a run does it; what it shipped goes into ``chosen``."""
    if not importable or args.config is None:
        return SKIP, "the driver's imports failed", {}
    if args.runtime != "onnx" or not args.model:
        return SKIP, f"--runtime {args.runtime}: the model is not run by the preflight", {}
    from emr_serverless_job import job

    featurizer = job.resolve_featurizer(args.config, spark)  # as a run ships and checks it
    chosen.update(
        model_file=featurizer.shipped_model,
        model_sha256=featurizer.model_sha256,
        image_size=featurizer.image_size,
    )
    data = {
        "model": args.model,
        "sha256": featurizer.model_sha256,
        "precision": featurizer.precision,
        "image_size": featurizer.image_size,
        "weights": featurizer.weights,
    }
    detail = (
        f"{args.model}: {featurizer.precision}, {featurizer.image_size} px, weights "
        f"{featurizer.weights}"
    )
    if not args.reference:
        return PASS, detail, data
    return check_reference(args.reference, spark, featurizer.image_size, chosen, detail, data)


def check_reference(
    reference: str,
    spark: Any,
    image_size: int,
    chosen: dict[str, Any],
    detail: str,
    data: dict[str, Any],
) -> tuple[str, str, dict[str, Any]]:
    """The fp32 reference shipped too, refused unless fp32 at the deployed model's size."""
    from pyspark import SparkFiles

    from emr_serverless_job.featurize import distribute
    from emr_serverless_job.model import FP32, read_onnx_model

    shipped = distribute(spark, reference)
    info = read_onnx_model(SparkFiles.get(shipped))
    if info.precision != FP32 or info.image_size != image_size:
        return (
            FAIL,
            (
                f"--reference-model {reference} is {info.precision} at "
                f"{info.image_size} px: it must be fp32 at {image_size} px"
            ),
            data,
        )
    chosen["reference_file"] = shipped
    return PASS, f"{detail}; fp32 reference {reference}", data


def check_artifacts(
    args: Arguments,
    spark: Any,
    facts: dict[str, Any],
    imported: dict[str, dict[str, Any]],
    chosen: dict[str, Any],
) -> tuple[str, str, dict[str, Any]]:
    """What runs against the uploaded artifacts.json, when --preflight-artifacts names it."""
    if not args.artifacts:
        return SKIP, "no --preflight-artifacts given: nothing compared with the build", {}
    from emr_serverless_job import hadoopfs

    if not hadoopfs.exists(spark, args.artifacts):
        return (
            WARN,
            (
                f"no {args.artifacts}: fruits_build/upload.py sends it last, so the upload did "
                "not finish; nothing compared with the build"
            ),
            {},
        )
    built = json.loads(hadoopfs.read_bytes(spark, args.artifacts))
    running = {name: file_sha256(path) for name, path in running_files().items()}
    versions = {
        name: importlib.metadata.version(DISTRIBUTIONS.get(name, name))
        for name in LIBRARIES[args.runtime]
        if "error" not in imported.get(name, {"error": ""}) and _has_metadata(name)
    }
    return compare_with_build(
        built,
        running,
        Path(args.model).name if args.model else None,
        chosen.get("model_sha256"),
        facts["realpath"],
        facts["environment"],
        versions,
        args.runtime,
    )


def check_raw(
    args: Arguments, spark: Any, chosen: dict[str, Any], photo: dict[str, bytes | None]
) -> tuple[str, str, dict[str, Any]]:
    """One photo read from --preflight; its bytes go into ``photo`` for the executors' check."""
    if not args.source:
        return SKIP, "no --preflight location", {}
    outcome, body = read_raw(
        spark, args.source, args.max_file_bytes, chosen.get("image_size") or 224
    )
    photo["bytes"] = body
    return outcome


def probe_spec(modules: tuple[str, ...], chosen: dict[str, Any], body: bytes | None) -> ProbeSpec:
    """What the executors import and run: the shipped models and the raw photo, if small."""
    return ProbeSpec(
        modules=modules,
        model_file=chosen.get("model_file"),
        reference_file=chosen.get("reference_file"),
        image_size=chosen.get("image_size") or 224,
        photo=body if body is not None and len(body) <= RAW_SHIP_BYTES else None,
    )


def check_executors(
    spark: Any, spec: ProbeSpec, probed: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """Every executor probed once; the probes go into ``probed`` for the model's check."""
    by_executor, registered, most = probe_executors(spark, spec)
    probed.update(by_executor)
    return judge_executors(by_executor, registered, most)


def check_models_on_executors(
    spec: ProbeSpec, probed: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """The model's results in the executors' probes, when a model was shipped to them."""
    if not spec.model_file:
        return SKIP, "no model shipped (see the model check)", {}
    return judge_models_on_executors(probed)


def _has_metadata(name: str) -> bool:
    try:
        importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def publish(spark: Any, report: Report) -> str | None:
    """Write the report; None, or why it could not be written."""
    from emr_serverless_job import hadoopfs

    try:
        hadoopfs.write_bytes(
            spark,
            report.report,
            (json.dumps(report.to_dict(), indent=2, default=str) + "\n").encode(),
        )
    except Exception as error:
        return cause(error)
    return None


def main(argv: list[str]) -> int:
    """``main.py --preflight ...``: exit 0 when every check passed (warnings allowed)."""
    try:
        args = parse(argv)
    except ValueError as error:  # config.ConfigError
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from emr_serverless_job.main import spark_session

    spark = spark_session("fruits-preflight")
    try:
        report = run(args, spark)
        problem = publish(spark, report)
    finally:
        spark.stop()
    print(json.dumps(report.to_dict(), indent=2, default=str))
    print(report.summary())
    if problem:
        print(
            f"PreflightError: report: could not write {report.report}: {problem}", file=sys.stderr
        )
    failed = report.failed
    if failed is not None:
        print(f"{PreflightError.__name__}: {failed.name}: {failed.detail}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if problem else 0
