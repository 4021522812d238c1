"""Task specs: validation names the field; any input gives a spec or a ConfigError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stager.digest import Digest
from stager.errors import ConfigError, StagerError, UnsafePathError
from stager.locations import S3Url
from worker_hooks.task.parse import inline_spec, parse_spec
from worker_hooks.task.result import FileRecord, Persist, ResultManifest
from worker_hooks.task.spec import InputSpec, OutputKind, TaskRef
from worker_hooks.wrap.wrapper import stage_inputs

DIGEST = "xxh3-128:" + "5a" * 16
VALID: dict[str, Any] = {
    "id": "align-7",
    "command": ["./align", "ref.fa"],
    "env": {"THREADS": "2"},
    "timeout_s": 60,
    "inputs": [{"source": "s3://bkt/ref.fa", "path": "ref.fa", "size": "1K"}],
    "outputs": [
        {"path": "out.txt", "to": "s3://bkt/out/out.txt"},
        {"path": "plots/", "to": "s3://bkt/out/plots/"},
        {"path": "logs/*.log", "to": "s3://bkt/out/logs/"},
    ],
    "bundle": {"source": "s3://bkt/apps/align.tar.gz"},
    "scratch_bytes": "2G",
}


def test_a_valid_spec_parses_with_kinds_and_defaults() -> None:
    spec = parse_spec(VALID)
    assert spec.command == ("./align", "ref.fa")
    assert [o.kind for o in spec.outputs] == [OutputKind.FILE, OutputKind.DIR, OutputKind.GLOB]
    assert spec.inputs[0].size == 1024 and spec.scratch_bytes == 2 * 1024**3
    assert spec.bundle is not None and spec.bundle.path == "app"
    assert spec.results_prefix == S3Url("bkt", ".stager/results/")


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"id": "../x"}, "id"),
        ({"command": []}, "command"),
        ({"command": ["a", 3]}, "command[1]"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"inputs": [{"source": "s3://bkt/k", "path": "a\x00b"}]}, "inputs[0].path"),
        ({"inputs": [{"source": "http://x/y", "path": "a"}]}, "inputs[0].source"),
        ({"inputs": [{"source": "s3://bkt/dir/", "path": "a"}]}, "inputs[0].source"),
        ({"inputs": [{"source": "task://x", "path": "a"}]}, "inputs[0].source"),
        ({"inputs": [{"source": "task://../x/y", "path": "a"}]}, "inputs[0].source"),
        ({"inputs": [{"source": "s3://bkt/k", "path": "a", "digest": "md5:0"}]}, "digest"),
        ({"outputs": [{"path": "d/", "to": "s3://bkt/file"}]}, "outputs[0].to"),
        ({"outputs": [{"path": "o", "to": "s3://bkt/p/../../etc/o.txt"}]}, "outputs[0].to"),
        ({"outputs": [{"path": "o", "to": "s3://bkt/./o.txt"}]}, "outputs[0].to"),
        ({"results": "s3://bkt/r/../"}, "results"),
        (
            {
                "inputs": [
                    {"source": "s3://bkt/k", "path": "a"},
                    {"source": "s3://bkt/j", "path": "a/b"},
                ]
            },
            r"inputs\[1\].path 'a/b' overlaps inputs\[0\].path 'a'",
        ),
        (
            {
                "inputs": [{"source": "s3://bkt/k", "path": "app/x"}],
                "bundle": {"source": "s3://bkt/a"},
            },
            "bundle.path 'app' overlaps inputs",
        ),
        ({"outputs": [{"path": "x", "to": "s3://bkt/x", "persist": "tape"}]}, "outputs[0].persist"),
        ({"outputs": [{"path": "x", "to": "s3://bkt/x", "mirrors": 2}]}, "outputs[0].mirrors"),
        (
            {"outputs": [{"path": "x", "to": "s3://bkt/x", "persist": "mirror", "mirrors": 0}]},
            "outputs[0].mirrors",
        ),
        (
            {"outputs": [{"path": "x", "to": "s3://bkt/x", "persist": "mirror", "mirrors": 9}]},
            "outputs[0].mirrors",
        ),
        (
            {"outputs": [{"path": "x", "to": "s3://bkt/x", "persist": "mirror", "mirrors": True}]},
            "outputs[0].mirrors",
        ),
        ({"scratch_bytes": "lots"}, "scratch_bytes"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_errors_name_the_field(change: dict[str, Any], names: str) -> None:
    pattern = names if "\\" in names else names.replace("[", r"\[")
    with pytest.raises(ConfigError, match=r"task spec: .*" + pattern):
        parse_spec({**VALID, **change})


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../b", "/abs", "a\\b"])
def test_traversal_is_an_unsafe_path(path: str) -> None:
    with pytest.raises(UnsafePathError):
        parse_spec({**VALID, "inputs": [{"source": "s3://bkt/k", "path": path}]})


def test_inline_form_matches_the_spec_form() -> None:
    spec = inline_spec(
        command=["./align", "ref.fa"],
        inputs=["s3://bkt/ref.fa=ref.fa"],
        outputs=["result.txt=s3://bkt/out/result.txt"],
    )
    assert spec.inputs[0].source == S3Url("bkt", "ref.fa") and spec.inputs[0].path == "ref.fa"
    assert spec.outputs[0].to == S3Url("bkt", "out/result.txt")
    with pytest.raises(ConfigError, match="LEFT=RIGHT"):
        inline_spec(command=["true"], inputs=["s3://bkt/no-equals"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
spec_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in ("id", "command", "shell", "env", "timeout_s", "inputs", "outputs", "bundle")
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, spec_like, st.builds(lambda extra: {**VALID, **extra}, spec_like)))
def test_any_input_gives_a_spec_or_a_config_error(body: Any) -> None:
    try:
        spec = parse_spec(body)
    except ConfigError:
        return
    assert isinstance(body, dict) and spec.id == body["id"] and spec.command
    assert parse_spec(spec.to_json()) == spec


def test_the_json_form_round_trips_every_field() -> None:
    spec = parse_spec(
        {
            **VALID,
            "shell": True,
            "command": "./align ref.fa > out.txt",
            "results": "s3://bkt/results/",
            "inputs": [
                {"source": "s3://bkt/ref.fa", "path": "ref.fa", "digest": DIGEST, "size": 3},
                {"source": "task://map-1/out.txt", "path": "parts/1.txt"},
            ],
        }
    )
    assert parse_spec(spec.to_json()) == spec
    assert spec.producers == frozenset({"map-1"})


def test_persistence_policies_parse_and_round_trip() -> None:
    spec = parse_spec(
        {
            **VALID,
            "outputs": [
                {"path": "a", "to": "s3://bkt/a"},
                {"path": "b", "to": "s3://bkt/b", "persist": "mirror", "mirrors": 2},
                {"path": "c", "to": "s3://bkt/c", "persist": "mirror"},
                {"path": "d", "to": "s3://bkt/d", "persist": "local"},
            ],
        }
    )
    kept = [(o.persist, o.mirrors) for o in spec.outputs]
    assert kept == [
        (Persist.S3, 1),
        (Persist.MIRROR, 2),
        (Persist.MIRROR, 1),
        (Persist.LOCAL, 1),
    ]
    assert parse_spec(spec.to_json()) == spec


def test_a_record_says_where_an_output_was_kept_and_old_records_read_as_s3() -> None:
    url = S3Url.parse("s3://bkt/o")
    kept = FileRecord("o", url, Digest.parse(DIGEST), 3, Persist.LOCAL)
    assert FileRecord.from_json(kept.to_json()) == kept
    plain = FileRecord("o", url, Digest.parse(DIGEST), 3)
    assert "kept" not in plain.to_json()  # a result of the s3 policy reads as before
    assert FileRecord.from_json(plain.to_json()).kept is Persist.S3
    with pytest.raises(ValueError):
        FileRecord.from_json({**kept.to_json(), "kept": "tape"})


def test_task_references_are_their_own_type_and_resolve_to_the_recorded_output() -> None:
    spec = parse_spec({**VALID, "inputs": [{"source": "task://map-1/out.txt", "path": "p"}]})
    assert spec.inputs[0].source == TaskRef("map-1", "out.txt")
    record = FileRecord("out.txt", S3Url("bkt", "o/map-1.txt"), Digest.parse(DIGEST), 7)
    result = ResultManifest("map-1", "k", ("true",), 0, "h", "t", outputs=(record,))
    resolved = spec.resolved("map-1", result)
    assert resolved.inputs == (InputSpec(record.url, "p", record.digest, 7),)
    assert resolved.producers == frozenset()
    empty = ResultManifest("map-1", "k", ("true",), 0, "h", "t")
    with pytest.raises(StagerError, match=r"recorded no output out\.txt"):
        spec.resolved("map-1", empty)


def test_a_task_naming_its_own_output_is_refused() -> None:
    with pytest.raises(ConfigError, match="its own output"):
        parse_spec({**VALID, "inputs": [{"source": "task://align-7/out.txt", "path": "x"}]})


def test_the_wrapper_refuses_an_unresolved_reference_before_any_io() -> None:
    spec = parse_spec({**VALID, "inputs": [{"source": "task://map-1/out.txt", "path": "p"}]})
    with pytest.raises(ConfigError, match="only the dispatcher can resolve"):
        stage_inputs(spec)
