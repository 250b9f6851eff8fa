"""Schemathesis against the gateway's and a head's OpenAPI documents, on the real stack.

Every check (`--checks all`): no server errors, status codes / content types / bodies as
documented, schema-valid requests accepted and schema-invalid ones rejected. Bounded and
deterministic: a fixed seed, a fixed number of examples per operation, no shrinking.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from polyhead.validation import NON_BLANK_PATTERN
from tests.e2e.gateway.test_gateway import stack  # noqa: F401 - the shared module-scoped stack fixture

pytestmark = pytest.mark.timeout(420)

MAX_EXAMPLES = 30
SEED = 20261202
# Admin operations change what is served (pin a version, re-read routes, promote or roll back a
# challenger): not fuzzed here (tests/unit/gateway/test_challengers.py covers their 401/403/404/409/422).
EXCLUDED_PATHS = "^/admin/|^/v1/models/[^/]+/(promote|rollback|evaluate)$"


def schemathesis_run(base_url: str, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    # 413 is documented but not expressible in JSON Schema (it is about bytes): a schema-valid body
    # may exceed the gateway's max_body_bytes, and then 413 is the right answer.
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "401", "403", "404", "413", '
                      '"429", "503"]\n')
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
           "run", f"{base_url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
           "--seed", str(SEED), "--no-shrink", "--generation-deterministic",
           "--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "30",
           "--exclude-path-regex", EXCLUDED_PATHS, "--max-failures", "20", *extra]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)


def assert_clean(result: subprocess.CompletedProcess) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-12000:]
    assert "No issues found" in out or "passed" in out, out[-4000:]
    # schemathesis's summary (operations, test cases, checks): `pytest -s` shows what the run covered
    lines = [line for line in out.splitlines() if line.strip()]
    start = max((i for i, line in enumerate(lines) if "API Operations" in line), default=len(lines) - 20)
    print("\n" + "\n".join(lines[start:start + 30]))


def test_gateway_openapi_fuzz(stack, tmp_path):  # noqa: F811
    url = stack["url"]
    # One embedding first: the gateway then knows (and documents) the model name and dimension.
    assert httpx.post(f"{url}/v1/embeddings", json={"model": "default", "input": "warm"}).status_code == 200
    spec = httpx.get(f"{url}/openapi.json").json()
    request = spec["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert request["model"]["enum"] == ["all-MiniLM-L6-v2", "default"]
    assert_clean(schemathesis_run(url, tmp_path))


def test_head_openapi_fuzz(stack, tmp_path):  # noqa: F811
    _, head_url = stack["heads"]["tickets"]
    spec = httpx.get(f"{head_url}/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"404", "415", "422", "429", "503", "504"} <= set(predict["responses"])
    assert_clean(schemathesis_run(head_url, tmp_path))


def test_documented_constraints(stack):  # noqa: F811
    """What generated clients read: exactly one of text/texts, non-blank strings, the head's limits."""
    _, head_url = stack["heads"]["tickets"]
    spec = httpx.get(f"{head_url}/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]] if "$ref" in body else body
    assert schema["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
    text = schema["properties"]["text"]
    assert (text["minLength"], text["pattern"], text["maxLength"]) == (1, NON_BLANK_PATTERN, 10_000)
    assert schema["properties"]["texts"]["maxItems"] == 64
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    gateway = httpx.get(stack["url"] + "/openapi.json").json()
    gw_body = gateway["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert gw_body["schema"]["oneOf"] == schema["oneOf"]


@pytest.mark.parametrize("raw, field", [
    (b'{"texts": ["fine", "also fine", "x", "lone \\ud800 surrogate"]}', "texts[3]"),
    (b'{"texts": ["fine", "bad \xff\xfe bytes"]}', "texts[1]"),
    (b'{"text": "\\udfff"}', "text"),
])
def test_hostile_text_is_a_422_through_the_gateway_and_at_the_head(stack, raw, field):  # noqa: F811
    _, head_url = stack["heads"]["tickets"]
    for url in (f"{stack['url']}/v1/models/tickets/predict", f"{head_url}/predict"):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["field"] == field and field in r.json()["error"]["message"]


def test_hostile_embeddings_input_names_the_index(stack):  # noqa: F811
    raw = b'{"model": "default", "input": ["ok", "fine", "\\ud83d"]}'
    r = httpx.post(stack["url"] + "/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input[2]", r.text


def test_framework_errors_have_polyhead_s_shape(stack):  # noqa: F811
    url = stack["url"]
    for r, status in ((httpx.get(f"{url}/no/such/path"), 404), (httpx.delete(f"{url}/v1/embeddings"), 405),
                      (httpx.post(f"{url}/v1/embeddings", content=b"input=x", headers={"content-type": "text/plain"}), 415)):
        assert r.status_code == status and set(r.json()["error"]) >= {"type", "message"}, r.text


def test_embedder_grpc_rejects_non_utf8_text_naming_it(stack):  # noqa: F811
    import grpc

    from embedder.v1 import embedder_pb2

    raw = embedder_pb2.EmbedRequest(texts=["ok"]).SerializeToString() + b"\x0a\x03\xed\xa0\x80"
    with grpc.insecure_channel(stack["target"]) as channel:
        embed = channel.unary_unary("/polyhead.embedder.v1.Embedder/Embed")  # raw bytes in and out
        with pytest.raises(grpc.RpcError) as err:
            embed(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "texts[1]" in err.value.details()
