from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VectorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOAT32: _ClassVar[VectorEncoding]
    FLOAT16: _ClassVar[VectorEncoding]
FLOAT32: VectorEncoding
FLOAT16: VectorEncoding

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "bypass_cache", "feature_set", "accept_encoding")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    bypass_cache: bool
    feature_set: str
    accept_encoding: VectorEncoding
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., bypass_cache: _Optional[bool] = ..., feature_set: _Optional[str] = ..., accept_encoding: _Optional[_Union[VectorEncoding, str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dim", "cached", "truncated", "fingerprint", "model", "token_counts", "encoding")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    embeddings: bytes
    dim: int
    cached: _containers.RepeatedScalarFieldContainer[bool]
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    fingerprint: str
    model: str
    token_counts: _containers.RepeatedScalarFieldContainer[int]
    encoding: VectorEncoding
    def __init__(self, embeddings: _Optional[bytes] = ..., dim: _Optional[int] = ..., cached: _Optional[_Iterable[bool]] = ..., truncated: _Optional[_Iterable[bool]] = ..., fingerprint: _Optional[str] = ..., model: _Optional[str] = ..., token_counts: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[VectorEncoding, str]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_texts_per_request", "max_text_chars", "max_batch_size", "max_queue_size")
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_texts_per_request: int
    max_text_chars: int
    max_batch_size: int
    max_queue_size: int
    def __init__(self, max_texts_per_request: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_queue_size: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model", "fingerprint", "dim", "max_seq_length", "limits", "cache_max_entries", "server_version", "feature_sets")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SETS_FIELD_NUMBER: _ClassVar[int]
    model: str
    fingerprint: str
    dim: int
    max_seq_length: int
    limits: Limits
    cache_max_entries: int
    server_version: str
    feature_sets: _containers.RepeatedCompositeFieldContainer[FeatureSet]
    def __init__(self, model: _Optional[str] = ..., fingerprint: _Optional[str] = ..., dim: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., cache_max_entries: _Optional[int] = ..., server_version: _Optional[str] = ..., feature_sets: _Optional[_Iterable[_Union[FeatureSet, _Mapping]]] = ...) -> None: ...

class FeatureSet(_message.Message):
    __slots__ = ("name", "dim", "fingerprint", "storage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    fingerprint: str
    storage: VectorEncoding
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., fingerprint: _Optional[str] = ..., storage: _Optional[_Union[VectorEncoding, str]] = ...) -> None: ...
