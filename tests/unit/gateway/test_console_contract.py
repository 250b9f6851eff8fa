"""The console reads only what the gateway's OpenAPI document declares: every field app.js reads from a
model listing, a report, a predict or an explain answer is checked against the schemas of those answers."""

from __future__ import annotations

import re

import pytest

from gateway.console import STATIC_DIR

# function in app.js -> {variable: (path, method, where in the answer)}; a where of () is the answer itself
READS = {
    "renderModels": {"m": ("/v1/models", "get", ("data", "[]"))},
    "renderModelChoices": {"m": ("/v1/models", "get", ("data", "[]"))},
    "renderPrediction": {"reply": ("/v1/models/{name}/predict", "post", ()),
                         "p": ("/v1/models/{name}/predict", "post", ("predictions", "[]")),
                         "t": ("/v1/models/{name}/predict", "post", ("predictions", "[]", "top_k", "[]"))},
    "explain": {"reply": ("/v1/models/{name}/explain", "post", ()),
                "w": ("/v1/models/{name}/explain", "post", ("words", "[]"))},
    "loadReport": {"report": ("/v1/models/{name}/report", "get", ())},
    "renderReport": {"report": ("/v1/models/{name}/report", "get", ()),
                     "s": ("/v1/models/{name}/report", "get", ("summary",)),
                     "hist": ("/v1/models/{name}/report", "get", ("summary", "confidence_histogram")),
                     "v": ("/v1/models/{name}/report", "get", ("versions", "[]")),
                     "model": ("/v1/models", "get", ("data", "[]"))},
    "renderDrift": {"drift": ("/v1/models/{name}/report", "get", ("drift",))},
    "timeSlots": {"report": ("/v1/models/{name}/report", "get", ()),
                  "entry": ("/v1/models/{name}/report", "get", ("timeline", "[]"))},
    "liveTile": {"review": ("/v1/models/{name}/report", "get", ("review",)),
                 "live": ("/v1/models/{name}/report", "get", ("review", "live_accuracy"))},
    "loadQueue": {"queue": ("/v1/models/{name}/review", "get", ())},
    "renderReviewItem": {"item": ("/v1/models/{name}/review", "get", ("items", "[]")),
                         "t": ("/v1/models/{name}/review", "get", ("items", "[]", "top_k", "[]"))},
    "explainReviewItem": {"item": ("/v1/models/{name}/review", "get", ("items", "[]")),
                          "reply": ("/v1/models/{name}/explain", "post", ())},
    "answer": {"item": ("/v1/models/{name}/review", "get", ("items", "[]"))},
}
JS_VALUE_MEMBERS = {"length", "map", "join", "filter", "find", "slice", "some", "every", "forEach", "toFixed"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from gateway.http_server import create_app
    from gateway.settings import GatewaySettings

    folder = tmp_path_factory.mktemp("console-contract")
    (folder / "heads").mkdir()
    (folder / "routes.yaml").write_text("{}\n")
    app = create_app(GatewaySettings(heads_dir=folder / "heads", routes_file=folder / "routes.yaml",
                                     reload_interval_s=0, port=0))
    return app.openapi()


def function_body(source: str, name: str) -> str:
    start = re.search(rf"(?:async )?function {name}\(", source)
    assert start, f"app.js has no function {name}"
    i = source.index("{", source.index(")", start.end()))
    depth = 0
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[i:j + 1]
    raise AssertionError(f"unbalanced braces in {name}")


def resolve(spec: dict, schema: dict) -> dict:
    while True:
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in schema:  # `X | None`: the non-null member
            schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        else:
            return schema


def step(spec: dict, schema: dict, key: str) -> dict | None:
    """The schema of `key` inside `schema`; None when it is a value (JS member, free-form map entry)."""
    schema = resolve(spec, schema)
    if key == "[]":
        assert schema.get("type") == "array", schema
        return schema["items"]
    if schema.get("type") == "array" or key in JS_VALUE_MEMBERS and "properties" not in schema:
        return None
    if "properties" not in schema:  # a map (label -> count, metric -> value): any key
        assert schema.get("type") == "object" and schema.get("additionalProperties", True) is not False, schema
        return None
    assert key in schema["properties"], f"{key!r} is not one of {sorted(schema['properties'])}"
    return schema["properties"][key]


def answer_schema(spec: dict, path: str, method: str) -> dict:
    return spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]


def test_every_field_the_console_reads_is_declared_by_the_openapi_document(spec):
    source = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    checked = 0
    for function, variables in READS.items():
        body = function_body(source, function)
        for var, (path, method, where) in variables.items():
            chains = re.findall(rf"(?<![\w.$]){var}((?:\??\.\w+)+)", body)
            assert chains, f"{function} reads nothing from {var}: update READS"
            for chain in chains:
                if re.match(r"\??\.(\w+)", chain).group(1) in JS_VALUE_MEMBERS:
                    continue  # a local number or array of the same name (`(v) => v.toFixed(1)`)
                schema = answer_schema(spec, path, method)
                for key in where:
                    schema = step(spec, schema, key)
                for key in re.findall(r"\w+", chain):
                    try:
                        schema = step(spec, schema, key)
                    except AssertionError as exc:
                        raise AssertionError(f"app.js {function}: {var}{chain}: {exc} ({method.upper()} {path})") from None
                    checked += 1
                    if schema is None:
                        break
    assert checked > 50  # the reads above were found


def test_the_check_catches_a_field_the_schema_lacks(spec):
    schema = answer_schema(spec, "/v1/models/{name}/report", "get")
    assert step(spec, step(spec, schema, "summary"), "texts") is not None
    with pytest.raises(AssertionError, match="'text' is not one of"):
        step(spec, step(spec, schema, "summary"), "text")
