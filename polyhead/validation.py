"""What a valid text is, said once for every edge (head and gateway HTTP schemas, the embedder's
gRPC servicer and its clients), so they reject the same inputs with the same words.

A text must encode to UTF-8 (no unpaired surrogate such as JSON's "\\ud800", no invalid byte: a
body's invalid bytes reach us as lone surrogates, see polyhead.http.JsonBodyGuard), must not be
blank (empty, or only whitespace, NULs and other control characters, zero-width and other format
characters), and must fit the limit on characters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Tag, WithJsonSchema, model_validator

from polyhead.errors import ValidationError

# Whitespace by both definitions that meet here: Python's str.isspace and ECMA-262's \s, which is what
# JSON Schema's `pattern` means to generated clients and fuzzers (they differ on U+001C-U+001F, U+0085
# and U+FEFF); plus what shows nothing at all: control characters (Cc: NUL...) and format characters
# (Cf: zero-width space and joiners, soft hyphen, bidi marks...) of the BMP. A text made only of
# these is blank, for the schema and the server alike (both are built from this one set below).
_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
               + "\u2028\u2029\u202f\u205f\u3000\ufeff")
_INVISIBLE = "".join(c for c in map(chr, range(0x10000)) if unicodedata.category(c) in ("Cc", "Cf"))
BLANK_CHARS = "".join(sorted(set(_WHITESPACE + _INVISIBLE)))


def _char_class(chars: str) -> str:
    """A regex character class body for `chars`, as ranges of \\uXXXX escapes (JSON Schema reads them alike)."""
    codes, parts, i = sorted(map(ord, chars)), [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        parts.append(f"\\u{codes[i]:04x}" + (f"-\\u{codes[j]:04x}" if j > i else ""))
        i = j + 1
    return "".join(parts)


# Unanchored, as JSON Schema patterns are: "contains a character that is not blank".
NON_BLANK_PATTERN = f"[^{_char_class(BLANK_CHARS)}]"
BLANK = "empty or whitespace-only text (NUL and other control characters, zero-width and other format characters count as whitespace)"


def encoding_problem(text: str) -> str | None:
    """Why `text` cannot be sent as UTF-8 (protobuf strings, our JSON answers), or None."""
    if text.isascii():  # the common case, checked in C
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"invalid UTF-8 or an unpaired surrogate (U+{ord(text[exc.start]):04X}) "
                f"at character {exc.start}")
    return None


def text_problem(text: str, max_chars: int | None = None, limit_name: str = "max_text_chars") -> str | None:
    """Why `text` is not a valid input text, or None."""
    if problem := encoding_problem(text):
        return problem
    if not text.strip(BLANK_CHARS):
        return BLANK
    if max_chars is not None and len(text) > max_chars:
        return f"{len(text)} characters exceed the limit of {limit_name}={max_chars}"
    return None


def check_texts(texts: Sequence[str], *, field: str = "texts", indexed: bool = True, max_texts: int | None = None,
                max_chars: int | None = None) -> None:
    """Raise ValidationError naming the first bad text (`texts[3]`) and the limit it broke."""
    if not texts:
        raise ValidationError(f"{field}: must contain at least 1 text", field=field)
    if max_texts is not None and len(texts) > max_texts:
        raise ValidationError(f"{field}: {len(texts)} texts exceed the limit of max_texts_per_request={max_texts}",
                              field=field)
    for i, text in enumerate(texts):
        if problem := text_problem(text, max_chars):
            where = f"{field}[{i}]" if indexed else field
            raise ValidationError(f"{where}: {problem}", field=where)


def first_unencodable(texts: Sequence[str]) -> tuple[int, str] | None:
    """(index, reason) of the first text that cannot travel as a protobuf string."""
    for i, text in enumerate(texts):
        if problem := encoding_problem(text):
            return i, problem
    return None


# -- pydantic types: the same rules, enforced by the schema and stated in the OpenAPI document -------
def text_json_schema(max_chars: int | None, description: str = "A non-empty text") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": NON_BLANK_PATTERN,
                              "description": f"{description}: at least one non-whitespace character, valid "
                                             f"UTF-8 (no unpaired surrogates)"}
    if max_chars is not None:
        schema["maxLength"] = max_chars
    return schema


def _text_validator(max_chars: int | None):
    def check(text: str) -> str:
        if problem := text_problem(text, max_chars):
            raise ValueError(problem)
        return text

    return check


def _count_validator(max_texts: int | None):
    def check(texts: list[str]) -> list[str]:
        if not texts:
            raise ValueError("must contain at least 1 text")
        if max_texts is not None and len(texts) > max_texts:
            raise ValueError(f"{len(texts)} texts exceed the limit of max_texts_per_request={max_texts}")
        return texts

    return check


def text_type(max_chars: int | None, description: str = "A non-empty text"):
    """A str field that rejects blank, over-long and non-UTF-8 texts with our messages."""
    return Annotated[str, AfterValidator(_text_validator(max_chars)),
                     WithJsonSchema(text_json_schema(max_chars, description))]


def texts_type(max_texts: int | None, max_chars: int | None, description: str = "Several texts"):
    """A list[str] field: 1..max_texts valid texts; a bad item is reported as field[i]."""
    item = text_type(max_chars, "One text")
    schema: dict[str, Any] = {"type": "array", "items": text_json_schema(max_chars, "One text"), "minItems": 1,
                              "description": description}
    if max_texts is not None:
        schema["maxItems"] = max_texts
    return Annotated[list[item], AfterValidator(_count_validator(max_texts)), WithJsonSchema(schema)]


# Tags of the text-or-texts union: pydantic puts them in an error's location; the error handler drops them
# (polyhead.http._location), so a bad item reads `input[3]`, not `input.<union member>.3`.
UNION_TAGS = frozenset({"<one text>", "<texts>"})


def text_or_texts_type(max_texts: int | None, max_chars: int | None):
    """A field that takes one text or a list of texts (OpenAI's `input`)."""
    return Annotated[
        Annotated[text_type(max_chars, "One text"), Tag("<one text>")]
        | Annotated[texts_type(max_texts, max_chars, "Several texts, answered in order"), Tag("<texts>")],
        Discriminator(lambda v: "<texts>" if isinstance(v, list) else "<one text>"),
    ]


# -- "exactly one of text / texts": the request shape of predict and classify, said once --------------
ONE_TEXT_OR_TEXTS = "give exactly one of 'text' or 'texts'"


def absent_not_null(schema: dict) -> None:
    """JSON Schema of optional fields that may be absent but never null: pydantic writes `default: null`
    for a `Field(None)` whose type is not optional; drop it so the schema says what the server accepts."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


def one_text_or_texts_schema(schema: dict) -> None:
    """JSON Schema for "exactly one of text/texts, never null"."""
    absent_not_null(schema)
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [{"text": "my card was declined"}, {"texts": ["reset my password", "app crashes"]}]


class TextOrTexts(BaseModel):
    """A request with exactly one of `text` / `texts` (subclasses declare both fields, `Field(None)`, with
    their limits): an absent field is None, an explicit null is refused, as the schema says."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=one_text_or_texts_schema)

    @model_validator(mode="after")
    def _exactly_one_text_or_texts(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError(ONE_TEXT_OR_TEXTS)
        return self

    @property
    def batch(self) -> bool:
        return self.texts is not None

    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]
