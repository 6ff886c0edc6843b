"""Every entry point follows the one CLI convention (docs/cli.md): ``--help`` exits 0 and shows
each flag's help and default, and the exit codes; a renamed flag still works under its old
name, with a warning; a refused value names the flag as typed and exits 2 before any side
effect (no AWS client, no Spark session, nothing written)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from emr_emulator import __main__ as emulator
from emr_serverless_job import main as job
from fruits_build import build, cpython, export_onnx, pack, upload
from fruits_contract import cli as convention
from fruits_demo import run as demo
from fruits_ops import backfill, capacity, compact, erase, preflight, reconcile, resolver
from fruits_readers import inventory, plots
from lambda_trigger import settings as config
from tests.conftest import ROOT

SETTINGS = {
    config.APPLICATION_ID: "00fabc123",
    config.JOB_ROLE_ARN: "arn:aws:iam::111122223333:role/fruits-job",
    config.RAW_URI: "s3://fruits-data/raw/",
    config.ARTIFACTS_URI: "s3://fruits-data/artifacts/",
    config.MANIFESTS_URI: "s3://fruits-data/manifests/",
    config.OUTPUT_URI: "s3://fruits-data/output/",
    config.LOGS_URI: "s3://fruits-data/logs/",
}

MAINS = {
    "emr_serverless_job": job.main,
    "fruits_ops.backfill": lambda argv: backfill.main(argv, env=SETTINGS),
    "fruits_ops.reconcile": lambda argv: reconcile.main(argv, env=SETTINGS),
    "fruits_ops.compact": lambda argv: compact.main(argv, env=SETTINGS),
    "fruits_ops.erase": lambda argv: erase.main(argv, env=SETTINGS),
    "fruits_ops.preflight": lambda argv: preflight.main(argv, env=SETTINGS),
    "fruits_ops.capacity": capacity.main,
    "fruits_readers.inventory": inventory.main,
    "fruits_readers.plots": plots.main,
    "fruits_build.build": build.main,
    "fruits_build.upload": upload.main,
    "fruits_build.export_onnx": export_onnx.main,
    "fruits_build.pack": pack.main,
    "fruits_build.cpython": cpython.main,
    "emr_emulator": emulator.main,
    "fruits_demo": demo.main,
}


@pytest.fixture
def no_side_effects(monkeypatch):
    """Fails the test on any AWS client or Spark session: a refusal comes before either."""
    import boto3

    def client(self, service, *args, **kwargs):
        raise AssertionError(f"an AWS client ({service}) was made before the refusal")

    def spark(*args, **kwargs):
        raise AssertionError("a Spark session was started before the refusal")

    monkeypatch.setattr(boto3.session.Session, "client", client)
    monkeypatch.setattr(job, "spark_session", spark)


@pytest.fixture
def parsers(monkeypatch):
    """Every parser the convention builds during a test, to read their flags back."""
    made: list[argparse.ArgumentParser] = []
    original = convention.parser

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(convention, "parser", recording)
    return made


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


@pytest.mark.parametrize("name", MAINS)
def test_help_exits_0_with_every_flag_explained_and_the_exit_codes(name, parsers, capsys):
    with pytest.raises(SystemExit) as exit_:
        MAINS[name](["--help"])
    assert exit_.value.code == convention.EXIT_OK
    out = capsys.readouterr().out
    assert "exit codes: 0 done; " in re.sub(r"\s+", " ", out)
    assert "2 bad usage or configuration, refused before any side effect" in " ".join(out.split())
    (parser,) = parsers
    unexplained = []
    for action in flag_actions(parser):
        if action.dest == "help":
            continue
        if not action.help:
            unexplained.append(f"{action.option_strings[0]}: no help")
        shown = action.default not in (None, [])
        says = "default" in action.help.lower() or "with --" in action.help.lower()
        if not (shown or says or action.required or action.container is not parser):
            unexplained.append(f"{action.option_strings[0]}: no default shown or said")
    assert not unexplained, unexplained
    if any(a.default not in (None, False, []) for a in flag_actions(parser) if a.dest != "help"):
        assert "(default: " in out


def test_settings_flags_say_which_variable_and_stack_output_they_stand_for(capsys):
    with pytest.raises(SystemExit):
        backfill.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--output URI the output location" in out
    assert "(default: $OUTPUT_URI, else stack output OutputUri)" in out
    assert "(default: $RUNTIME, else stack output Runtime, else onnx)" in out
    assert "(default: $JOB_TIMEOUT_MINUTES, else 120)" in out  # no such stack output
    assert "overrides" not in out
    assert out.count("else from the stack's output with --stack") == 1  # said once


def test_the_stack_outputs_the_help_names_are_the_templates():
    template = (ROOT / "template.yaml").read_text().split("\nOutputs:\n", 1)[1]
    outputs = set(re.findall(r"^  (\w+):\s*$", template, re.M))
    carried = {name for name in config.FIELDS if config.output_key(name) in outputs}
    assert set(config.STACK_OUTPUTS) == carried
    assert all(resolver.setting_name(config.output_key(n)) == n for n in config.FIELDS)


def test_reconciles_old_out_still_names_the_missing_manifest_with_a_warning(capsys):
    args = reconcile.build_parser().parse_args(["--out", "old.jsonl"])
    assert args.missing_manifest == Path("old.jsonl")
    assert capsys.readouterr().err.strip() == (
        "warning: --out is deprecated, use --missing-manifest (same value)"
    )
    fresh = reconcile.build_parser().parse_args([])
    assert fresh.missing_manifest == Path(reconcile.DEFAULT_OUT) and capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        reconcile.build_parser().parse_args(["--help"])
    assert "--out " not in capsys.readouterr().out  # hidden: one name to learn


def test_the_plots_old_to_still_names_the_plots_folder_with_a_warning(capsys):
    args = plots.build_parser().parse_args(["out/", "--to", "plots/"])
    assert args.plots == Path("plots/") and args.output == Path("out/")
    assert "warning: --to is deprecated, use --plots" in capsys.readouterr().err
    assert plots.build_parser().parse_args(["out/"]).plots is None


BAD = {
    "backfill --input": (
        "fruits_ops.backfill",
        ["--input", "raw/"],
        "--input raw/: not an s3://bucket/prefix URI",
    ),
    "backfill --output": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--output", "/local/out"],
        "--output /local/out: not an s3://bucket/prefix URI",
    ),
    "backfill --retries": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--retries", "12"],
        "--retries 12: 0 to 9",
    ),
    "reconcile --raw": (
        "fruits_ops.reconcile",
        ["--raw", "raw/"],
        "--raw raw/: not an s3://bucket/prefix URI",
    ),
    "compact --max-executors": (
        "fruits_ops.compact",
        ["--max-executors", "0"],
        "--max-executors 0: not between 1 and 1000",
    ),
    "compact --older-than-days": (
        "fruits_ops.compact",
        ["--older-than-days", "-1"],
        "--older-than-days -1.0: 0 or more",
    ),
    "preflight --raw": (
        "fruits_ops.preflight",
        ["--raw", "/photos"],
        "--raw /photos: not an s3://bucket/prefix URI",
    ),
    "preflight --reference-model": (
        "fruits_ops.preflight",
        ["--reference-model", "model.onnx"],
        "--reference-model model.onnx: not an s3://bucket/prefix URI",
    ),
    "backfill --pca-k": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--pca-k", "0"],
        "--pca-k 0: not between 1 and 1280",
    ),
    "backfill --pca-variance": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--pca-variance", "1.5"],
        "--pca-variance 1.5: not in (0, 1]",
    ),
    "backfill --poll-seconds": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--wait", "--poll-seconds", "-1"],
        "--poll-seconds -1.0: 0 or more seconds",
    ),
    "backfill --output empty": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--output", ""],
        "--output '': empty: leave the flag out to take $OUTPUT_URI or --stack",
    ),
    "backfill --stack empty": (
        "fruits_ops.backfill",
        ["--input", "s3://fruits-data/raw/", "--stack", ""],
        "--stack '': empty",
    ),
    "compact --poll-seconds": (
        "fruits_ops.compact",
        ["--wait", "--poll-seconds", "inf"],
        "--poll-seconds inf: 0 or more seconds",
    ),
    "reconcile --raw empty": (
        "fruits_ops.reconcile",
        ["--raw", ""],
        "--raw '': empty: leave the flag out to take $RAW_URI or --stack",
    ),
    "preflight --raw empty": (
        "fruits_ops.preflight",
        ["--raw", " "],
        "--raw ' ': empty",
    ),
    "capacity --max-executors": (
        "fruits_ops.capacity",
        ["--max-executors", "0"],
        "--max-executors 0: at least 1",
    ),
    "capacity --batch-size": (
        "fruits_ops.capacity",
        ["--batch-size", "-5"],
        "--batch-size -5: at least 1",
    ),
    "capacity --vcpu-hour": (
        "fruits_ops.capacity",
        ["--vcpu-hour", "0", "--gb-hour", "0.0071"],
        "--vcpu-hour 0.0: a price above 0",
    ),
    "capacity --worker-start": (
        "fruits_ops.capacity",
        ["--worker-start", "-20"],
        "--worker-start -20.0: 0 or more seconds",
    ),
    "export_onnx --weights": (
        "fruits_build.export_onnx",
        ["--weights", "foo.txt", "--model", "m.onnx", "--parity-images", "/nowhere"],
        "--weights foo.txt: 'foo.txt': a weights file must be a Keras .h5 file; "
        "--parity-images /nowhere: no such folder",
    ),
    "pack --requirements": (
        "fruits_build.pack",
        ["--requirements", "requirements/nope.txt", "--archive", "a.tar.gz"],
        "--requirements requirements/nope.txt: no such file",
    ),
    "emulator --endpoint-url": (
        "emr_emulator",
        ["--request", "r.json", "--endpoint-url", "https://s3.amazonaws.com"],
        "--endpoint-url https://s3.amazonaws.com: not a loopback endpoint",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_value_is_refused_naming_the_flag_typed(case, no_side_effects, capsys):
    name, argv, said = BAD[case]
    assert MAINS[name](argv) == convention.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(convention.USAGE_PREFIX) and said in err, err


def test_a_setting_from_the_environment_or_the_stack_is_named_as_such(no_side_effects, capsys):
    env = {**SETTINGS, config.OUTPUT_URI: "/local/out"}
    assert backfill.main(["--input", "s3://fruits-data/raw/"], env=env) == 2
    assert "OUTPUT_URI: '/local/out' is not an s3://bucket/prefix URI" in capsys.readouterr().err
    args = backfill.build_parser().parse_args(["--input", "s3://x/raw/", "--stack", "fruits"])
    sources = resolver.choose(
        args, {}, {config.OUTPUT_URI: "bad"}, resolver.DEPLOYMENT_FLAGS
    ).sources
    assert sources.given == {config.OUTPUT_URI: "stack fruits output OutputUri"}
    with pytest.raises(config.SettingsError, match=r"stack fruits output OutputUri \(OUTPUT_URI\)"):
        config.deployment_from_environment({**SETTINGS, config.OUTPUT_URI: "bad"}, sources)
    del env[config.APPLICATION_ID]
    assert backfill.main(["--input", "s3://fruits-data/raw/"], env=env) == 2
    assert "APPLICATION_ID is not set (pass --application-id" in capsys.readouterr().err


def test_the_erase_command_names_its_raw_flag(no_side_effects, tmp_path, capsys):
    keys = tmp_path / "keys.txt"
    keys.write_text("Kiwi/a.jpg\n")
    assert erase.main(["--keys", str(keys), "--raw", "raw/"], env=SETTINGS) == 2
    assert "--raw raw/: not an s3://bucket/prefix URI" in capsys.readouterr().err
    # An empty flag is refused, not read as "not given" (RAW_URI would quietly be used).
    assert erase.main(["--keys", str(keys), "--raw", ""], env=SETTINGS) == 2
    assert "configuration error: --raw '': empty" in capsys.readouterr().err


def test_the_upload_names_its_artifacts_flag_and_variable(no_side_effects, tmp_path, capsys):
    (tmp_path / "artifacts.json").write_text("{}")
    argv = ["--dist", str(tmp_path)]
    assert upload.main([*argv, "--artifacts", "artifacts/"], env={}) == 2
    assert "--artifacts artifacts/: not an s3://bucket/prefix URI" in capsys.readouterr().err
    assert upload.main(argv, env={"ARTIFACTS_URI": "artifacts/"}) == 2
    assert "ARTIFACTS_URI: 'artifacts/' is not an s3://" in capsys.readouterr().err
    assert upload.main(argv, env={}) == 2
    assert "ARTIFACTS_URI is not set (pass --artifacts, set ARTIFACTS_URI, or --stack NAME)" in (
        capsys.readouterr().err
    )
    assert upload.main(argv, env={"ARTIFACTS_URI": "a/", "ARCHITECTURE": "sparc"}) == 2
    err = capsys.readouterr().err  # both named at once
    assert "ARTIFACTS_URI: 'a/' is not" in err
    assert "ARCHITECTURE: 'sparc' is not one of ARM64, X86_64" in err


def test_each_setting_is_taken_flag_then_environment_then_stack_output():
    """The one precedence (fruits_ops.resolver), setting by setting: a flag beats the
    environment, which beats the stack's output; an empty variable counts as unset."""
    args = backfill.build_parser().parse_args(
        ["--input", "s3://x/raw/", "--stack", "fruits", "--output", "s3://flag/out"]
    )
    env = {config.OUTPUT_URI: "s3://env/out", config.LOGS_URI: "s3://env/logs", config.RUNTIME: ""}
    stack = {
        config.OUTPUT_URI: "s3://stack/out",
        config.LOGS_URI: "s3://env/logs",
        config.RUNTIME: "tensorflow",
        config.APPLICATION_ID: "00fstack",
    }
    resolved = resolver.choose(args, env, stack, resolver.DEPLOYMENT_FLAGS)
    assert resolved.values[config.OUTPUT_URI] == "s3://flag/out"
    assert resolved.values[config.LOGS_URI] == "s3://env/logs"
    assert resolved.values[config.RUNTIME] == "tensorflow"
    assert resolved.origins == {
        config.OUTPUT_URI: "--output",
        config.LOGS_URI: "$LOGS_URI",
        config.RUNTIME: "stack fruits output Runtime",
        config.APPLICATION_ID: "stack fruits output ApplicationId",
    }
    lines = resolver.origin_lines(resolved)
    assert lines[0] == "settings (flag > environment > stack output > default):"
    assert "  LOGS_URI=s3://env/logs  ($LOGS_URI)" in lines
    assert "  IMAGE_SIZE=224  (default)" in lines
    assert "  JOB_ROLE_ARN=  (not set)" in lines


def test_a_variable_that_contradicts_the_named_stack_is_refused_unless_a_flag_decides():
    """GIVEN a $RAW_URI left exported from another stage and --stack prod naming another
    bucket, WHEN erase resolves its settings, THEN it refuses naming both: taking the
    variable would delete photos in the bucket the operator did not name."""
    stale = {config.RAW_URI: "s3://staging/raw/"}
    stack = {config.RAW_URI: "s3://prod/raw/"}
    args = erase.build_parser().parse_args(["--stack", "prod", "--keys", "a.jpg"])
    with pytest.raises(config.SettingsError) as refused:
        resolver.choose(args, stale, stack, erase.ERASE_SETTINGS)
    assert str(refused.value) == (
        "$RAW_URI=s3://staging/raw/ but stack prod output RawUri is s3://prod/raw/ "
        "(pass --raw to choose, or unset $RAW_URI)"
    )
    typed = erase.build_parser().parse_args(
        ["--stack", "prod", "--keys", "a.jpg", "--raw", "s3://prod/raw/"]
    )
    chosen = resolver.choose(typed, stale, stack, erase.ERASE_SETTINGS)
    assert chosen.values[config.RAW_URI] == "s3://prod/raw/"
    agreeing = resolver.choose(args, stack, stack, erase.ERASE_SETTINGS)
    assert agreeing.origins[config.RAW_URI] == "$RAW_URI"
    spelled = resolver.choose(args, {config.RAW_URI: " s3://prod/raw"}, stack, erase.ERASE_SETTINGS)
    assert spelled.origins[config.RAW_URI] == "$RAW_URI"  # one prefix, however it is spelled


def test_a_model_uri_outside_the_named_stacks_artifacts_is_refused():
    """The stack outputs no model or weights URI, only the artifacts prefix they default under:
    a $MODEL_URI left from another stage is caught against that, and its flag still decides."""
    stack = {config.ARTIFACTS_URI: "s3://prod/artifacts"}
    args = backfill.build_parser().parse_args(["--input", "s3://prod/raw/", "--stack", "prod"])
    stale = {config.MODEL_URI: "s3://staging/artifacts/mobilenet_v2.onnx"}
    with pytest.raises(config.SettingsError) as refused:
        resolver.choose(args, stale, stack, resolver.DEPLOYMENT_FLAGS)
    assert str(refused.value) == (
        "$MODEL_URI=s3://staging/artifacts/mobilenet_v2.onnx is not under stack prod output "
        "ArtifactsUri s3://prod/artifacts/ (pass --model to choose, or unset $MODEL_URI)"
    )
    under = {config.MODEL_URI: "s3://prod/artifacts/v2/mobilenet_v2.onnx"}
    chosen = resolver.choose(args, under, stack, resolver.DEPLOYMENT_FLAGS)
    assert chosen.origins[config.MODEL_URI] == "$MODEL_URI"
    typed = backfill.build_parser().parse_args(
        ["--input", "s3://prod/raw/", "--stack", "prod", "--model", "s3://elsewhere/m.onnx"]
    )
    assert (
        resolver.choose(typed, stale, stack, resolver.DEPLOYMENT_FLAGS).values[config.MODEL_URI]
        == "s3://elsewhere/m.onnx"
    )


def test_a_bug_while_reading_the_settings_keeps_its_traceback():
    """A ValueError that is no SettingsError (here a bad unpacking inside the parser) is a bug:
    calling it a configuration error (exit 2) would send the operator looking for a bad flag."""

    def buggy(values, sources):
        raise ValueError("too many values to unpack (expected 2)")  # as a bad unpacking would

    args = argparse.Namespace(region="eu-west-1", stack=None)
    with pytest.raises(ValueError, match="too many values to unpack") as raised:
        resolver.open_settings(args, {}, buggy, {})
    assert not isinstance(raised.value, convention.Refusal)
    with pytest.raises(convention.Refusal, match="APPLICATION_ID is not set"):
        resolver.open_settings(args, {}, config.deployment_from_environment, {})


def test_every_settings_command_says_where_each_setting_came_from(capsys, tmp_path):
    """The same lines, from every command that reads settings, before it does anything."""
    flags = ["--output", "s3://fruits-data/flagged/", "--print-request"]
    keys = tmp_path / "keys.txt"
    keys.write_text("Kiwi/a.jpg\n")
    runs = {
        "backfill": lambda: backfill.main(["--input", "s3://fruits-data/raw/", *flags], SETTINGS),
        "compact": lambda: compact.main(flags, env=SETTINGS),
        "preflight": lambda: preflight.main(flags, env=SETTINGS),
        "erase": lambda: erase.main(["--keys", str(keys), "--dry-run"], env=SETTINGS),
    }
    for name, run in runs.items():
        assert run() == 0, name
        err = capsys.readouterr().err
        assert "settings (flag > environment > stack output > default):" in err, name
        assert "  APPLICATION_ID=00fabc123  ($APPLICATION_ID)" in err, name
        if name != "erase":
            assert "  OUTPUT_URI=s3://fruits-data/flagged/  (--output)" in err, name


def test_the_job_refuses_a_bad_flag_before_a_spark_session(no_side_effects, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["--input", str(tmp_path), "--output", str(output), "--weights", "random:0"]
    assert job.main([*argv, "--image-size", "300"]) == convention.EXIT_USAGE
    assert "--image-size: 300 is not one of" in capsys.readouterr().err
    assert not output.exists()


def test_the_build_refuses_bad_flags_before_dist_is_touched(no_side_effects, tmp_path, capsys):
    dist = tmp_path / "dist"
    argv = ["--dist", str(dist), "--weights", str(tmp_path / "none.h5"), "--image-size", "300"]
    assert build.main(argv) == convention.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--weights {tmp_path / 'none.h5'}: no such file" in err
    assert "--image-size 300: not one of 96, 128, 160, 192, 224" in err
    assert not dist.exists()


def test_the_upload_names_its_dist_flag(no_side_effects, tmp_path, capsys):
    assert upload.main(["--artifacts", "s3://b/a", "--dist", str(tmp_path)]) == 2
    assert f"--dist {tmp_path}: no artifacts.json" in capsys.readouterr().err


def test_argparse_refusals_name_the_flag_and_exit_2(capsys):
    for main, argv, flag in (
        (capacity.main, ["--batch-size", "many"], "--batch-size"),
        (reconcile.main, ["--since", "yesterday"], "--since"),
        (inventory.main, [], "OUTPUT"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == convention.EXIT_USAGE
        assert flag in capsys.readouterr().err


@pytest.mark.parametrize("script_name", ["fruits-featurize", "fruits-plots"])
def test_the_console_scripts_run_their_command(script_name, capsys):
    """pyproject.toml's console scripts point at a main that exists and follows the convention
    (docs/cli.md documents them)."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[script_name].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == convention.EXIT_OK
    assert "exit codes:" in capsys.readouterr().out
    assert f"`{script_name}`" in (ROOT / "docs" / "cli.md").read_text()
