"""Each worker of an emulated run held to its container size, as EMR Serverless holds it.

On EMR Serverless the driver and each executor run in a worker of a fixed memory: the
request's ``spark.{driver,executor}.memory`` plus ``memoryOverhead`` (by default 10% of the
memory, at least 384 MB: EMR Serverless User Guide, "Understanding application behavior",
worker configurations), and a worker whose processes use more is killed: the JVM and its
Python workers together. A run whose driver is killed fails with stateDetails like
``Job failed. ExitCode: 137. Last few exceptions: Worker has been killed as memory usage
exceeded configured memory size, consider increasing memory size...`` (quoted from a public
report of an EMR Serverless run); a killed executor is replaced and its tasks retried, and the
run fails only when a task has failed ``spark.task.maxFailures`` times.

Spark's ``local-cluster`` gives its executors no such bound (a standalone worker only caps
the heap with -Xmx; ``memoryOverhead`` means nothing there). A cgroup per executor would be
exact, but cgroups belong to whatever runs the machine (a container's or a sandbox's
hierarchy, v1 or v2), need root or a delegated subtree, and exist on Linux only; an
RLIMIT_AS would kill JVMs for the address space they reserve, not use. So a watchdog: every
``interval`` seconds it reads ``/proc``, sums the resident memory (RSS) of each executor's
process tree (its CoarseGrainedExecutorBackend JVM, the pyspark daemon and its Python
workers) and of the driver's (spark-submit's JVM, where local-cluster's master and workers
also live, and the driver's Python), keeps the peaks, and kills with SIGKILL a tree over its
size, as the service's kernel would.

What it does not see: a spike shorter than ``interval``; pages a forked Python worker still
shares with the pyspark daemon count once per process (RSS over-counts them by tens of MiB,
so it errs towards killing); page cache, which a cgroup charges but can reclaim.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXECUTOR_MAIN = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
DRIVER = "driver"
INTERVAL_S = 0.2
MIN_OVERHEAD_MIB = 384  # Spark's and EMR Serverless' floor for memoryOverhead
OVERHEAD_FACTOR = 0.1  # spark.{driver,executor}.memoryOverheadFactor's default
DEFAULT_MEMORY = "1g"  # spark.{driver,executor}.memory's default
MEMORY_KILLED = (
    "Worker has been killed as memory usage exceeded configured memory size, "
    "consider increasing memory size"
)
KILLED_EXIT_CODE = 128 + signal.SIGKILL  # what a container's main process killed so exits with
_SIZE = re.compile(r"^(\d+)([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS_MIB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def _mib(value: str, plain_unit_mib: float) -> int:
    """A Spark size in whole MiB; a number without a unit is in ``plain_unit_mib``."""
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Spark memory size")
    unit = _UNITS_MIB[match[2].lower()] if match[2] else plain_unit_mib
    return max(1, int(int(match[1]) * unit))


def container_mib(conf: dict[str, str], side: str) -> int:
    """The worker size of the driver or an executor (``side``), in MiB, as Spark sizes a
    container: ``memory`` + ``memoryOverhead`` (default ``max(factor x memory, 384 MiB)``),
    plus ``spark.executor.pyspark.memory`` for executors when set. ``spark.*.memory`` without
    a unit is in bytes (Spark's memoryStringToMb); the others, in MiB (bytesConf(MiB))."""
    memory = _mib(conf.get(f"spark.{side}.memory", DEFAULT_MEMORY), 1 / (1024 * 1024))
    overhead_conf = conf.get(f"spark.{side}.memoryOverhead")
    if overhead_conf is not None:
        overhead = _mib(overhead_conf, 1)
    else:
        factor = float(conf.get(f"spark.{side}.memoryOverheadFactor", OVERHEAD_FACTOR))
        overhead = max(int(factor * memory), MIN_OVERHEAD_MIB)
    pyspark = conf.get("spark.executor.pyspark.memory") if side == "executor" else None
    return memory + overhead + (_mib(pyspark, 1) if pyspark else 0)


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: a pid is reused, (pid, start) is not
    rss_pages: int
    comm: str


def read_processes(proc: Path = Path("/proc")) -> dict[int, Process]:
    """Every process ``/proc`` shows now (one read of its ``stat`` each)."""
    found = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is stat's 3rd field (state): ppid is the 4th, starttime the 22nd, rss the 24th
        found[int(entry.name)] = Process(
            pid=int(entry.name),
            ppid=int(fields[1]),
            start=int(fields[19]),
            rss_pages=int(fields[21]),
            comm=comm,
        )
    return found


def _descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, ()))
    return tree


@dataclass
class Kill:
    """One worker the watchdog killed, and why."""

    worker: str  # "driver" or "executor <id>"
    pid: int
    rss_mib: int
    limit_mib: int
    after_s: float  # since the run started
    processes: int


@dataclass
class Watchdog:
    """Samples the process tree of a run (``root``: spark-submit's pid, which becomes the
    driver JVM) and kills any worker over its size. ``start``/``stop`` run it in a thread;
    ``sample`` is one look (tests call it directly)."""

    root: int
    driver_mib: int
    executor_mib: int
    interval: float = INTERVAL_S
    proc: Path = Path("/proc")
    peaks_mib: dict[str, int] = field(default_factory=dict)
    killed: list[Kill] = field(default_factory=list)
    samples: int = 0
    errors: int = 0  # samples that failed (shown in the report: a silent watchdog enforces nothing)
    last_error: str | None = None
    _started: float = field(default_factory=time.monotonic)
    _names: dict[tuple[int, int, str], str | None] = field(default_factory=dict)
    _dead: set[tuple[int, int]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def available(proc: Path = Path("/proc")) -> bool:
        return (proc / "self" / "stat").is_file()

    def _executor_name(self, process: Process) -> str | None:
        """``executor <id>`` for an executor JVM, else None (read once per process and program:
        the JVM's ProcessBuilder starts it as jspawnhelper, which execs the launcher, then java)."""
        key = (process.pid, process.start, process.comm)
        if key not in self._names:
            name = None
            if process.comm in ("java", "sh", "env"):
                try:
                    raw = (self.proc / str(process.pid) / "cmdline").read_bytes()
                except OSError:
                    raw = b""
                args = raw.decode(errors="replace").split("\0")
                if EXECUTOR_MAIN in args:
                    index = args.index("--executor-id") if "--executor-id" in args else -1
                    executor = args[index + 1] if 0 <= index < len(args) - 1 else "?"
                    name = f"executor {executor}"
            self._names[key] = name
        return self._names[key]

    def sample(self) -> None:
        """One look: each executor's tree against ``executor_mib``, the rest under ``root`` (the
        driver's container) against ``driver_mib``; a tree over its size is killed, once."""
        processes = read_processes(self.proc)
        if self.root not in processes:
            return
        page_mib = os.sysconf("SC_PAGE_SIZE") / (1 << 20)
        children: dict[int, list[int]] = {}
        for process in processes.values():
            children.setdefault(process.ppid, []).append(process.pid)
        tree = _descendants(self.root, children)
        executors = {
            pid: name for pid in tree if (name := self._executor_name(processes[pid])) is not None
        }
        inside_executors: set[int] = set()
        workers: dict[str, tuple[int, list[int], int]] = {}  # name -> (pid, tree, limit)
        for pid, name in executors.items():
            subtree = _descendants(pid, children)
            inside_executors.update(subtree)
            workers[name] = (pid, subtree, self.executor_mib)
        driver_tree = [pid for pid in tree if pid not in inside_executors]
        workers[DRIVER] = (self.root, driver_tree, self.driver_mib)
        self.samples += 1
        for name, (pid, subtree, limit) in workers.items():
            key = (pid, processes[pid].start)
            if key in self._dead:
                continue
            rss = int(sum(processes[p].rss_pages for p in subtree if p in processes) * page_mib)
            self.peaks_mib[name] = max(self.peaks_mib.get(name, 0), rss)
            if rss > limit:
                self._kill(name, pid, subtree, rss, limit)
                self._dead.add(key)

    def _kill(self, name: str, pid: int, tree: list[int], rss: int, limit: int) -> None:
        """Recorded, then SIGKILL as the service would: the driver's whole process group (the run
        ends), an executor's tree only (Spark replaces it and retries its tasks)."""
        self.killed.append(
            Kill(
                worker=name,
                pid=pid,
                rss_mib=rss,
                limit_mib=limit,
                after_s=round(time.monotonic() - self._started, 1),
                processes=len(tree),
            )
        )
        if name == DRIVER:  # the whole run: the driver's container held everything it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            return
        for member in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as error:  # a sample that raced a process' end; counted, not fatal
                self.errors += 1
                self.last_error = f"{type(error).__name__}: {error}"

    def start(self) -> Watchdog:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="emulator-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def report(self) -> dict[str, Any]:
        """For the run's result (``emulator.memory``)."""
        return {
            "limitsMiB": {DRIVER: self.driver_mib, "executor": self.executor_mib},
            "peakMiB": dict(sorted(self.peaks_mib.items())),
            "killed": [asdict(kill) for kill in self.killed],
            "sampledEverySeconds": self.interval,
            "samples": self.samples,
            "failedSamples": self.errors,
            "lastError": self.last_error,
            "measure": "RSS summed over each worker's process tree (/proc)",
        }


def killed_details(kills: list[Kill]) -> str:
    """The memory cause, as EMR Serverless words it, with what the emulator measured."""
    seen = "; ".join(
        f"{kill.worker} at {kill.rss_mib} MiB of its {kill.limit_mib} MiB after {kill.after_s} s"
        for kill in kills
    )
    return f"{MEMORY_KILLED} (emulator: {seen})"
