"""PCA model versions: saved whole and never rewritten, a pointer written last, and a projection
that does not belong to its metadata refused (reduce.save / reduce.read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emr_serverless_job import hadoopfs, reduce
from emr_serverless_job.projection import Projection
from emr_serverless_job.reduce import Reduction, ReductionInfo, ReductionMismatch

D = 1280


def reduction(k: int, version: str, seed: int = 0) -> Reduction:
    rng = np.random.default_rng(seed)
    components = np.linalg.qr(rng.normal(size=(D, k)))[0]
    info = ReductionInfo(
        k=k,
        explained_variance=0.9,
        component_variance=[0.1] * k,
        image_size=96,
        weights="random:0",
        fitted_by_run="backfill-0123456789abcdef",
        fitted_rows=10,
        scaling="none",
        precision="fp32",
        version=version,
    )
    return Reduction(Projection(rng.normal(size=D), np.ones(D), components), info)


def test_each_fit_gets_its_own_version_id():
    from datetime import UTC, datetime

    now = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)
    ids = {reduce.new_version(now) for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("v20261202T140000Z-") for i in ids)


def test_a_reader_during_a_save_sees_one_whole_version(spark, tmp_path, monkeypatch):
    """A run loading the model at every step of a refit's save: before the pointer moves it
    gets the old version whole, after it the new one, and never nothing or a mix (the old
    save deleted the folder first: a batch between delete and write got null features)."""
    uri = str(tmp_path / "pca_model")
    old, new = (
        reduction(3, "v20261201T000000Z-00000000"),
        reduction(5, "v20261202T000000Z-11111111", 1),
    )
    reduce.save(spark, old, uri)
    seen: list[tuple[str, int, int]] = []

    def look() -> None:
        loaded = reduce.read(spark, uri)
        assert loaded is not None, "a reader found no model while a version was being saved"
        seen.append((loaded.info.version, loaded.info.k, loaded.projection.k))

    for name in ("write_bytes", "publish"):
        real = getattr(hadoopfs, name)

        def step(spark_, target, data, real=real):
            look()
            real(spark_, target, data)
            look()

        monkeypatch.setattr(hadoopfs, name, step)
    reduce.save(spark, new, uri)
    assert all(k == projected for _, k, projected in seen)
    versions = [version for version, _, _ in seen]
    assert versions[-1] == new.info.version
    switched = versions.index(new.info.version)
    assert set(versions[:switched]) == {old.info.version}
    assert set(versions[switched:]) == {new.info.version}
    assert switched == len(versions) - 1, "the pointer is the last thing written"
    assert reduce.read(spark, uri, old.info.version).projection.k == 3  # kept whole


def test_a_version_is_never_overwritten(spark, tmp_path):
    uri = str(tmp_path / "pca_model")
    first = reduction(3, "v20261201T000000Z-00000000")
    reduce.save(spark, first, uri)
    with pytest.raises(FileExistsError, match="already saved"):
        reduce.save(spark, reduction(4, first.info.version), uri)
    assert reduce.read(spark, uri).projection.k == 3


def test_a_projection_from_another_fit_is_refused(spark, tmp_path):
    uri = str(tmp_path / "pca_model")
    three, five = (
        reduction(3, "v20261201T000000Z-00000000"),
        reduction(5, "v20261201T000000Z-22222222"),
    )
    reduce.save(spark, three, uri)
    reduce.save(spark, five, uri)
    versions = Path(uri) / "versions"
    target = versions / three.info.version / "projection.npz"
    target.write_bytes((versions / five.info.version / "projection.npz").read_bytes())
    target.with_name(".projection.npz.crc").unlink()  # as S3 or a copy tool has it: no checksum
    with pytest.raises(
        ReductionMismatch, match=r"is not the projection featurizer\.json describes"
    ):
        reduce.read(spark, uri, three.info.version)


def test_an_older_layout_with_a_projection_of_another_k_is_refused(spark, tmp_path):
    """Before versions: pca_model/{projection.npz,featurizer.json}. A k=5 projection beside the
    metadata of a k=3 fit gave 5-value vectors in a run that reported k=3."""
    legacy = tmp_path / "pca_model"
    legacy.mkdir()
    (legacy / "projection.npz").write_bytes(reduction(5, "").projection.to_bytes())
    metadata = {
        key: value
        for key, value in reduction(3, "").info.__dict__.items()
        if key not in ("version", "projection_sha256")
    }
    (legacy / "featurizer.json").write_text(json.dumps(metadata))
    assert reduce.current_version(spark, str(legacy)) == "backfill-0123456789abcdef"
    with pytest.raises(ReductionMismatch, match=r"has 5 components but featurizer\.json says k=3"):
        reduce.load(spark, str(legacy), image_size=96, weights="random:0", precision="fp32")
    (legacy / "projection.npz").write_bytes(reduction(3, "").projection.to_bytes())
    loaded = reduce.load(spark, str(legacy), image_size=96, weights="random:0", precision="fp32")
    assert loaded.info.version == "backfill-0123456789abcdef"  # as its rows' pca_model say
