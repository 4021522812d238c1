"""Task specs: validation names the field; any input gives a spec or a ConfigError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.stagein import validate_inputs
from stager.digest import Digest, digest_bytes
from stager.errors import ConfigError, StagerError, UnsafePathError
from stager.locations import S3Url
from stager.objectinfo import Listed
from worker_hooks.task.parse import inline_spec, parse_spec
from worker_hooks.task.result import FileRecord, Persist, ResultManifest
from worker_hooks.task.spec import InputSpec, OutputKind, TaskRef
from worker_hooks.task.workflow import workflow_tasks
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
        ({"inputs": [{"source": "s3://bkt/dir/", "path": "a", "size": 3}]}, "inputs[0].digest"),
        ({"inputs": [{"source": "s3://bkt/dir/", "path": "a", "max_count": 0}]}, "max_count"),
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


def test_collections_of_a_producers_outputs_resolve_to_every_file_they_hold() -> None:
    spec = parse_spec(
        {
            **VALID,
            "inputs": [
                {"source": "task://map-1/stats/", "path": "all"},
                {"source": "task://map-1/*.txt", "path": "texts", "max_count": 2},
            ],
        }
    )
    records = tuple(
        FileRecord(path, S3Url("bkt", f"o/{path}"), digest_bytes(path.encode()), 1)
        for path in ("stats/a.csv", "stats/deep/b.csv", "x.txt", "y.txt", "z.bin")
    )
    done = ResultManifest("map-1", "k", ("true",), 0, "h", "t", outputs=records)
    resolved = spec.resolved("map-1", done)
    assert [(i.path, i.source.key) for i in resolved.inputs] == [  # type: ignore[union-attr]
        ("all/a.csv", "o/stats/a.csv"),
        ("all/deep/b.csv", "o/stats/deep/b.csv"),
        ("texts/x.txt", "o/x.txt"),
        ("texts/y.txt", "o/y.txt"),
    ]
    assert all(i.digest is not None for i in resolved.inputs)
    three = ResultManifest(
        "map-1",
        "k",
        ("true",),
        0,
        "h",
        "t",
        outputs=(*records, FileRecord("w.txt", S3Url("bkt", "o/w.txt"), digest_bytes(b"w"), 1)),
    )
    with pytest.raises(ConfigError, match="more than its max_count 2"):
        spec.resolved("map-1", three)


def test_a_glob_over_task_ids_is_one_input_per_matching_task() -> None:
    _, specs = workflow_tasks(
        {
            "tasks": [
                *(
                    {
                        "id": f"map-{n}",
                        "command": ["true"],
                        "results": "s3://bkt/r/",
                        "outputs": [{"path": "part.txt", "to": f"s3://bkt/o/{n}.txt"}],
                    }
                    for n in range(3)
                ),
                {
                    "id": "reduce",
                    "command": ["true"],
                    "results": "s3://bkt/r/",
                    "inputs": [{"source": "task://map-*/part.txt", "path": "parts/"}],
                },
            ]
        },
        "flow.yaml",
    )
    reduce = specs[-1]
    assert [(str(i.source), i.path) for i in reduce.inputs] == [
        (f"task://map-{n}/part.txt", f"parts/map-{n}/part.txt") for n in range(3)
    ]
    with pytest.raises(ConfigError, match="matches no task"):
        workflow_tasks(
            {
                "tasks": [
                    {
                        "id": "r",
                        "command": ["true"],
                        "results": "s3://bkt/r/",
                        "inputs": [{"source": "task://nope-*/x", "path": "p"}],
                    }
                ]
            },
            "flow.yaml",
        )


def test_a_task_naming_its_own_output_is_refused() -> None:
    with pytest.raises(ConfigError, match="its own output"):
        parse_spec({**VALID, "inputs": [{"source": "task://align-7/out.txt", "path": "x"}]})


def test_the_wrapper_refuses_an_unresolved_reference_before_any_io() -> None:
    spec = parse_spec({**VALID, "inputs": [{"source": "task://map-1/out.txt", "path": "p"}]})
    with pytest.raises(ConfigError, match="only the dispatcher can resolve"):
        stage_inputs(spec, store=None)  # type: ignore[arg-type]  # no I/O comes first


class _Listing:
    """What ObjectStore.list answers for one prefix (keys another tool chose)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def list(self, prefix: S3Url) -> list[Listed]:
        return [Listed(S3Url(prefix.bucket, k), 1) for k in self.keys if k.startswith(prefix.key)]


def test_an_s3_collection_cannot_stage_outside_its_folder() -> None:
    spec = parse_spec({**VALID, "inputs": [{"source": "s3://bkt/ref/", "path": "in"}]})
    listing = _Listing(["ref/ok.txt", "ref/", "ref/../../etc/passwd"])
    staged = stage_inputs(spec, listing)  # type: ignore[arg-type]
    assert [item.path for item in staged] == ["in/ok.txt", "in/../../etc/passwd"]
    with pytest.raises(UnsafePathError):  # refused before any I/O, naming the input
        validate_inputs(staged)
