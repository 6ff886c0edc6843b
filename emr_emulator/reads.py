"""What a run reads from S3, decided from its request alone: the emulator copies that, no more.

A plain function of the request (``reads``), and of the two small files that name further
reads: the ``--manifest`` (the photos it lists) and the PCA model's pointer (the version a
batch run loads). By the job's flags (emr_serverless_job/config.py):

- every artifact the request names: the entry point, ``--py-files``/``--archives``/
  ``--files``/``--jars`` and every ``s3://`` conf value (``spark.archives``), and each
  ``s3://`` argument that is not a location below (``--model``, ``--weights``,
  ``--preflight-artifacts``, ``--preflight-reference``), one object each;
- ``--input PREFIX`` (a backfill): everything under the prefix; it reads nothing of
  ``--output`` (it writes its own partitions and a new PCA version);
- ``--manifest FILE`` (a batch): the file, the objects its lines name, and the PCA model
  (``--pca-model``, default ``OUTPUT/pca_model``): its pointer and the files beside it (a
  model from before versions), not ``versions/`` except the one the pointer names;
- ``--erase FILE``: the file and the tables an erase run rewrites or consults under
  ``--output`` (features, errors, erasures, and reports for the runs' start times), not the
  photos it names (they are gone) nor the PCA model;
- ``--compact DAYS``: the tables a compaction merges and the reports it checks under
  ``--output`` (features, errors, reports); its merged files are not pushed (they are
  outside the run's own partition) and its deletes are not emulated;
- ``--preflight PREFIX_OR_KEY``: the object, or the first photo under the prefix in S3's
  order (which is the order EMRFS lists it in).

A flag unknown here that names a prefix is copied as one object (so, usually, not at all):
the run then fails or reads nothing, where on EMR it would read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from emr_emulator.submit import Launch
from fruits_contract import (
    ERASURES_TABLE,
    ERRORS_TABLE,
    FEATURES_TABLE,
    PCA_MODEL_FOLDER,
    PCA_POINTER_FILE,
    PCA_VERSIONS_FOLDER,
    REPORTS_FOLDER,
    SOURCE_FLAGS,
    is_image_name,
)

# The job's layout under --output is the contract's (the emulator does not import the job):
# what an erase run and a compaction read there.
ERASE_READS = (FEATURES_TABLE, ERRORS_TABLE, ERASURES_TABLE, REPORTS_FOLDER)
COMPACT_READS = (FEATURES_TABLE, ERRORS_TABLE, REPORTS_FOLDER)
# Flags whose value is a location the run reads as described above, or only writes.
LOCATION_FLAGS = (*SOURCE_FLAGS, "--output", "--pca-model")
ARTIFACT_OPTIONS = ("--py-files", "--archives", "--files", "--jars")
SCHEMES = ("s3://", "s3a://")


def split_uri(uri: str) -> tuple[str, str] | None:
    """``(bucket, key)`` of an ``s3://`` URI, the key exactly as written (a ``#`` or ``?`` in
    it is part of the key, which urlsplit would cut); None for another scheme."""
    for scheme in SCHEMES:
        if uri.startswith(scheme):
            bucket, _, key = uri[len(scheme) :].partition("/")
            return (bucket, key) if bucket else None
    return None


def _folder(key: str) -> str:
    return key if not key or key.endswith("/") else f"{key}/"


def _is_photo(key: str, under: str) -> bool:
    below = key[len(under) :].split("/")
    return not any(part.startswith(("_", ".")) for part in below) and is_image_name(key)


@dataclass(frozen=True)
class Reads:
    """What to copy: objects, everything under prefixes (but not under ``excluded`` ones unless
    a longer prefix takes them back), and the first photo under each of ``first_photo``."""

    keys: frozenset[tuple[str, str]] = frozenset()
    prefixes: frozenset[tuple[str, str]] = frozenset()
    excluded: frozenset[tuple[str, str]] = frozenset()
    first_photo: frozenset[tuple[str, str]] = frozenset()
    manifest: tuple[str, str] | None = None  # its lines name more objects
    pointer: tuple[str, str] | None = None  # names the PCA version a batch loads
    notes: tuple[str, ...] = field(default=())

    @property
    def buckets(self) -> list[str]:
        named = [*self.keys, *self.prefixes, *self.first_photo]
        return sorted({bucket for bucket, _ in named})

    def wants(self, bucket: str, key: str) -> bool:
        """Whether ``key`` is copied: named, or under a prefix the longest match includes."""
        if (bucket, key) in self.keys:
            return True
        best, include = -1, False
        for prefixes, verdict in ((self.prefixes, True), (self.excluded, False)):
            for b, prefix in prefixes:
                if b == bucket and key.startswith(prefix) and len(prefix) > best:
                    best, include = len(prefix), verdict
        return include

    def to_json(self) -> dict[str, list[str]]:
        uri = lambda pair: f"s3://{pair[0]}/{pair[1]}"  # noqa: E731
        return {
            "objects": sorted(map(uri, self.keys)),
            "prefixes": sorted(map(uri, self.prefixes)),
            "excluded": sorted(map(uri, self.excluded)),
            "firstPhotoUnder": sorted(map(uri, self.first_photo)),
        }


def manifest_uris(text: str) -> list[str]:
    """The ``uri`` of each JSON line that has one (the job makes an error row of the rest)."""
    uris = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("uri"), str):
            uris.append(entry["uri"])
    return uris


def _artifact_uris(run: Launch) -> list[str]:
    """What the request ships or names outright, one object each: the entry point, the artifact
    options' lists, ``s3://`` conf values and arguments, but not a location flag's value
    (``reads`` treats those); an ``#alias`` is dropped."""
    uris = [run.entry_point]
    options = run.options
    for index, token in enumerate(options[:-1]):
        if token in ARTIFACT_OPTIONS:
            uris += options[index + 1].split(",")
    for value in run.conf.values():
        uris += [part for part in value.split(",") if part.strip().startswith(SCHEMES)]
    arguments = run.arguments
    for index, token in enumerate(arguments):
        previous = arguments[index - 1] if index else None
        if token.startswith(SCHEMES) and previous not in LOCATION_FLAGS:
            uris.append(token)
    return [uri.strip().partition("#")[0] for uri in uris]


Location = tuple[str, str]  # (bucket, key or prefix)


@dataclass
class _Found:
    """What ``reads`` has found so far, flag by flag, before it is frozen into ``Reads``."""

    keys: set[Location] = field(default_factory=set)
    prefixes: set[Location] = field(default_factory=set)
    excluded: set[Location] = field(default_factory=set)
    first: set[Location] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    manifest_at: Location | None = None
    pointer_at: Location | None = None


def _pca_model_reads(found: _Found, model: Location, pointer: str | None) -> None:
    """A batch's PCA model: its pointer and the files beside it, and only the version the
    pointer names under ``versions/``."""
    folder = (model[0], _folder(model[1]))
    found.pointer_at = (folder[0], folder[1] + PCA_POINTER_FILE)
    found.prefixes.add(folder)
    found.excluded.add((folder[0], folder[1] + f"{PCA_VERSIONS_FOLDER}/"))
    version = _pointed_version(pointer)
    if version:
        found.prefixes.add((folder[0], folder[1] + f"{PCA_VERSIONS_FOLDER}/{version}/"))
    elif pointer is not None:
        at = found.pointer_at
        found.notes.append(f"s3://{at[0]}/{at[1]} names no version")


def _manifest_reads(
    found: _Found,
    run: Launch,
    source: Location,
    manifest: str | None,
    pointer: str | None,
    output: Location | None,
) -> None:
    """``--manifest``: the file, the objects its lines name, and the PCA model the batch loads
    (``--pca-model``, default ``OUTPUT/pca_model``)."""
    found.keys.add(source)
    found.manifest_at = source
    for uri in manifest_uris(manifest or ""):
        if (named := split_uri(uri)) is not None:
            found.keys.add(named)
    model = split_uri(run.argument("--pca-model") or "") or (
        (output[0], f"{_folder(output[1])}{PCA_MODEL_FOLDER}") if output else None
    )
    if model is not None:
        _pca_model_reads(found, model, pointer)


def _output_tables(found: _Found, output: Location | None, tables: tuple[str, ...]) -> None:
    """The tables an erase run or a compaction reads under ``--output``, when there is one."""
    if output is not None:
        for table in tables:
            found.prefixes.add((output[0], f"{_folder(output[1])}{table}/"))


def _preflight_reads(found: _Found, source: Location) -> None:
    """``--preflight``: the object named, or the first photo under the prefix."""
    if source[1] and not source[1].endswith("/"):
        found.keys.add(source)
    found.first.add((source[0], _folder(source[1])))


def reads(run: Launch, manifest: str | None = None, pointer: str | None = None) -> Reads:
    """What ``run`` reads, given its manifest's text and the PCA pointer's when they are known
    (copy those two first: ``Reads.manifest``, ``Reads.pointer``, then ask again)."""
    found = _Found()
    for uri in _artifact_uris(run):
        if (named := split_uri(uri)) is not None:
            found.keys.add(named)
    output = split_uri(run.argument("--output") or "")
    if (source := split_uri(run.argument("--input") or "")) is not None:
        found.prefixes.add((source[0], _folder(source[1])))
    if (source := split_uri(run.argument("--manifest") or "")) is not None:
        _manifest_reads(found, run, source, manifest, pointer, output)
    if (source := split_uri(run.argument("--erase") or "")) is not None:
        found.keys.add(source)
        _output_tables(found, output, ERASE_READS)
    if "--compact" in run.arguments:
        _output_tables(found, output, COMPACT_READS)
    if (source := split_uri(run.argument("--preflight") or "")) is not None:
        _preflight_reads(found, source)
    return Reads(
        keys=frozenset(found.keys),
        prefixes=frozenset(found.prefixes),
        excluded=frozenset(found.excluded),
        first_photo=frozenset(found.first),
        manifest=found.manifest_at,
        pointer=found.pointer_at,
        notes=tuple(found.notes),
    )


def _pointed_version(pointer: str | None) -> str | None:
    """The version the pointer's JSON names, or None; one with a slash or only dots is refused:
    it becomes a prefix to copy, which must stay under ``versions/``."""
    if not pointer:
        return None
    try:
        version = json.loads(pointer).get("version")
    except (ValueError, AttributeError):
        return None
    if isinstance(version, str) and version and "/" not in version and version not in ("..", "."):
        return version
    return None


def first_photo(keys: list[str], under: str) -> str | None:
    """The first key under ``under`` (in the listing's order) the preflight would read."""
    return next((key for key in keys if key.startswith(under) and _is_photo(key, under)), None)
