"""The offline demo's choice of weights: real where available, random with a banner otherwise."""

from __future__ import annotations

from fruits_demo import run as demo


def test_falls_back_to_random_weights_loudly(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "SHARED_WEIGHTS", tmp_path / "absent.h5")
    monkeypatch.delenv("FRUITS_WEIGHTS", raising=False)
    assert demo.pick_weights(None) == "random:0"
    assert "features mean nothing" in capsys.readouterr().err


def test_prefers_a_weights_file_when_one_exists(monkeypatch, tmp_path, capsys):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"stand-in: only its existence is checked here")
    monkeypatch.setattr(demo, "SHARED_WEIGHTS", tmp_path / "absent.h5")
    monkeypatch.setenv("FRUITS_WEIGHTS", str(weights))
    assert demo.pick_weights(None) == str(weights)
    assert demo.pick_weights("random:3") == "random:3"
    assert capsys.readouterr().err == ""
