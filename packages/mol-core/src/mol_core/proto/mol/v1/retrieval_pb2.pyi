from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT16: DType

class History(_message.Message):
    __slots__ = ("item_ids", "timestamps", "user_id", "query_time")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_TIME_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    timestamps: _containers.RepeatedScalarFieldContainer[int]
    user_id: int
    query_time: int
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ..., timestamps: _Optional[_Iterable[int]] = ..., user_id: _Optional[int] = ..., query_time: _Optional[int] = ...) -> None: ...

class Embeddings(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("history", "embeddings", "text", "exclude_ids", "gating")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    GATING_FIELD_NUMBER: _ClassVar[int]
    history: History
    embeddings: Embeddings
    text: str
    exclude_ids: _containers.RepeatedScalarFieldContainer[int]
    gating: Embeddings
    def __init__(self, history: _Optional[_Union[History, _Mapping]] = ..., embeddings: _Optional[_Union[Embeddings, _Mapping]] = ..., text: _Optional[str] = ..., exclude_ids: _Optional[_Iterable[int]] = ..., gating: _Optional[_Union[Embeddings, _Mapping]] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("queries", "index_alias", "index_version", "top_k", "exclude_ids", "exclude_history", "algorithm", "algorithm_params")
    class AlgorithmParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    INDEX_ALIAS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    index_alias: str
    index_version: str
    top_k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[int]
    exclude_history: bool
    algorithm: str
    algorithm_params: _containers.ScalarMap[str, str]
    def __init__(self, queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., index_alias: _Optional[str] = ..., index_version: _Optional[str] = ..., top_k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[int]] = ..., exclude_history: bool = ..., algorithm: _Optional[str] = ..., algorithm_params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("ids", "scores")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("queue_us", "encode_us", "search_us", "total_us")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    ENCODE_US_FIELD_NUMBER: _ClassVar[int]
    SEARCH_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    encode_us: int
    search_us: int
    total_us: int
    def __init__(self, queue_us: _Optional[int] = ..., encode_us: _Optional[int] = ..., search_us: _Optional[int] = ..., total_us: _Optional[int] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("results", "index_version", "timings", "partial", "missing_shards")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    index_version: str
    timings: ServerTimings
    partial: bool
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ..., index_version: _Optional[str] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., partial: bool = ..., missing_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("index_version", "kind", "num_items", "aliases", "path", "default_algorithm")
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    index_version: str
    kind: str
    num_items: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    path: str
    default_algorithm: str
    def __init__(self, index_version: _Optional[str] = ..., kind: _Optional[str] = ..., num_items: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ..., default_algorithm: _Optional[str] = ...) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes", "default_alias")
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALIAS_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    default_alias: str
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ..., default_alias: _Optional[str] = ...) -> None: ...

class LoadIndexRequest(_message.Message):
    __slots__ = ("path", "alias")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    path: str
    alias: str
    def __init__(self, path: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class LoadIndexResponse(_message.Message):
    __slots__ = ("index_version", "previous_version", "load_us")
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_US_FIELD_NUMBER: _ClassVar[int]
    index_version: str
    previous_version: str
    load_us: int
    def __init__(self, index_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., load_us: _Optional[int] = ...) -> None: ...

class UnloadIndexRequest(_message.Message):
    __slots__ = ("alias", "index_version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    index_version: str
    def __init__(self, alias: _Optional[str] = ..., index_version: _Optional[str] = ...) -> None: ...

class UnloadIndexResponse(_message.Message):
    __slots__ = ("unloaded_versions", "removed_aliases")
    UNLOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ALIASES_FIELD_NUMBER: _ClassVar[int]
    unloaded_versions: _containers.RepeatedScalarFieldContainer[str]
    removed_aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unloaded_versions: _Optional[_Iterable[str]] = ..., removed_aliases: _Optional[_Iterable[str]] = ...) -> None: ...
