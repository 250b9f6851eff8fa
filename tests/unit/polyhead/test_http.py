"""One error shape for every failure, and hostile text rejected at the edge (no server needed)."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from heads.api import PredictRequestBase, predict_request_model
from polyhead.errors import ValidationError
from polyhead.http import install_error_handlers
from polyhead.validation import BLANK_CHARS, NON_BLANK_PATTERN, check_texts, encoding_problem, first_unencodable


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    model = predict_request_model(4, 20)

    async def predict(body: PredictRequestBase):
        return {"texts": body.all_texts()}

    predict.__annotations__["body"] = model
    app.post("/predict")(predict)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("bug")

    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]), body
    return body["error"]


@pytest.mark.parametrize("raw, field, fragment", [
    (b'{"text": "\\ud800"}', "text", "unpaired surrogate (U+D800)"),
    (b'{"texts": ["ok", "fine", "a\\udfffb"]}', "texts[2]", "at character 1"),
    (b'{"texts": ["ok", "bad \xff byte"]}', "texts[1]", "invalid UTF-8"),  # raw invalid UTF-8 in a string
    (b'{"text": "\xed\xa0\x80"}', "text", "invalid UTF-8"),  # a surrogate encoded as bytes (CESU-8)
    (b'{"te\xffxt": "a"}', "body", "unicode"),  # a bad key: pydantic refuses the object itself
    (b'\xff\xfe{', "body", "not valid UTF-8 at byte 0"),
    (b'{"text": "a", "texts": ["b"]}', "body", "exactly one"),
    (b'{"text": null, "texts": ["b"]}', "text", "valid string"),
    (b'{"texts": ["a", "b", "c", "d", "e"]}', "texts", "max_texts_per_request=4"),
    (b'{"texts": ["a", "\\u3000\\t"]}', "texts[1]", "whitespace"),
    (b'{"text": "' + b"y" * 21 + b'"}', "text", "max_text_chars=20"),
])
def test_hostile_bodies_are_422_naming_the_field(client, raw, field, fragment):
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["type"] == "validation" and error["field"] == field, error
    assert fragment in error["message"], error
    assert r.content.isascii()  # the answer itself is valid (ASCII) JSON, whatever the input


def test_valid_non_ascii_text_passes(client):
    r = client.post("/predict", json={"texts": ["naïve café ☕", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]})
    assert r.status_code == 200 and r.json()["texts"][1] == "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/predict", content=b'{"text": "a"}', headers=headers)
    assert r.status_code == 415, r.text
    assert error_of(r)["field"] == "content-type" and "application/json" in error_of(r)["message"]


def test_json_suffix_media_types_are_json(client):
    r = client.post("/predict", content=b'{"text": "a"}', headers={"content-type": "application/vnd.x+json; charset=utf-8"})
    assert r.status_code == 200


def test_framework_errors_use_the_same_shape(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and error_of(missing)["type"] == "not_found"
    assert "/nowhere" in error_of(missing)["message"]
    wrong = client.delete("/predict")
    assert wrong.status_code == 405 and error_of(wrong)["type"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST" and "POST" in error_of(wrong)["message"]
    boom = client.get("/boom")
    assert boom.status_code == 500 and error_of(boom) == {"type": "internal", "message": "internal error"}
    assert "x-request-id" in boom.headers


def test_request_ids_are_echoed_only_when_harmless(client):
    assert client.get("/nowhere", headers={"x-request-id": "trace-1.2:3"}).headers["x-request-id"] == "trace-1.2:3"
    replaced = client.get("/nowhere", headers={"x-request-id": "x" * 500}).headers["x-request-id"]
    assert replaced != "x" * 500 and len(replaced) == 32


def test_schema_states_the_limits_and_exactly_one_of():
    schema = predict_request_model(4, 20).model_json_schema()
    assert schema["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
    assert schema["additionalProperties"] is False
    text, texts = schema["properties"]["text"], schema["properties"]["texts"]
    assert (text["minLength"], text["maxLength"], text["pattern"]) == (1, 20, NON_BLANK_PATTERN) and "default" not in text
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 4, 20)
    json.dumps(schema)


def test_shared_validator():
    assert encoding_problem("plain") is None and encoding_problem("naïve") is None
    assert "U+DC80" in encoding_problem("ab\udc80")
    assert first_unencodable(["ok", "fine", "\ud800"]) == (2, encoding_problem("\ud800"))
    with pytest.raises(ValidationError) as err:
        check_texts(["ok", " \n"], max_chars=10)
    assert err.value.field == "texts[1]"
    with pytest.raises(ValidationError) as err:
        check_texts(["x" * 11], field="text", indexed=False, max_chars=10)
    assert err.value.field == "text" and "max_text_chars=10" in err.value.message


def test_the_embedder_client_names_an_unsendable_text():
    from embedder.client import embed_request

    assert list(embed_request(["a", "b"]).texts) == ["a", "b"]
    with pytest.raises(ValidationError) as err:
        embed_request(["a", "b", "c\ud800"])
    assert err.value.field == "texts[2]" and "unpaired surrogate" in err.value.message


def test_the_embedder_names_a_text_that_is_not_utf8_on_the_wire():
    from embedder.grpc_server import UndecodableRequest, decode_embed_request
    from embedder.v1 import embedder_pb2

    good = embedder_pb2.EmbedRequest(texts=["ok", "fine"], bypass_cache=True).SerializeToString()
    assert list(decode_embed_request(good).texts) == ["ok", "fine"]
    # texts[1] holds CESU-8 for U+D800 (what a lenient encoder sends for a lone surrogate).
    bad = embedder_pb2.EmbedRequest(texts=["ok"]).SerializeToString() + b"\x0a\x03\xed\xa0\x80" + b"\x10\x01"
    decoded = decode_embed_request(bad)
    assert isinstance(decoded, UndecodableRequest) and decoded.error.field == "texts[1]"
    assert isinstance(decode_embed_request(b"\x0a\xff"), UndecodableRequest)  # truncated: still a clear error


def test_blank_means_the_same_to_the_schema_pattern_and_the_server():
    """ECMA-262 (JSON Schema) and Python disagree on a few whitespace characters: both count as blank;
    so do the characters that show nothing (NUL and other controls, zero-width and other format characters)."""
    import re
    import sys
    import unicodedata

    pattern = re.compile(NON_BLANK_PATTERN)
    python_ws = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    invisible = {chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) in ("Cc", "Cf")}
    assert python_ws | {"\ufeff"} | invisible == set(BLANK_CHARS)
    for ch in BLANK_CHARS:
        assert not pattern.search(ch) and check_texts_fails(ch), hex(ord(ch))
    for blank in ("\x00" * 5, "\u200b\u200c\u200d", "\x00 \u2060\t\u00ad", "\x1b[0m"[:1]):
        assert not pattern.search(blank) and check_texts_fails(blank), ascii(blank)
    for ok in ("a", "é", "a\x00", "\u200bhi\u200b", "\x1b[0m"):
        assert pattern.search(ok) and not check_texts_fails(ok), ascii(ok)


def check_texts_fails(text: str) -> bool:
    try:
        check_texts([text])
    except ValidationError:
        return True
    return False
