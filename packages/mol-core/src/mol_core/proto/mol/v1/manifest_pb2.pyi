from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mol_core.proto.mol.v1 import similarity_pb2 as _similarity_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FileEntry(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256", "role", "description")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    role: str
    description: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., role: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ModelBundleManifest(_message.Message):
    __slots__ = ("format_version", "created_at", "mol_version", "model_name", "architecture", "similarity", "num_items", "item_vocabulary_file", "query_encoder_file", "item_tensors_file", "parameters", "files", "query_input", "tokenizer_file")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    ITEM_VOCABULARY_FILE_FIELD_NUMBER: _ClassVar[int]
    QUERY_ENCODER_FILE_FIELD_NUMBER: _ClassVar[int]
    ITEM_TENSORS_FILE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    QUERY_INPUT_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FILE_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    created_at: _timestamp_pb2.Timestamp
    mol_version: str
    model_name: str
    architecture: str
    similarity: _similarity_pb2.SimilarityConfig
    num_items: int
    item_vocabulary_file: str
    query_encoder_file: str
    item_tensors_file: str
    parameters: _containers.ScalarMap[str, str]
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    query_input: str
    tokenizer_file: str
    def __init__(self, format_version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mol_version: _Optional[str] = ..., model_name: _Optional[str] = ..., architecture: _Optional[str] = ..., similarity: _Optional[_Union[_similarity_pb2.SimilarityConfig, _Mapping]] = ..., num_items: _Optional[int] = ..., item_vocabulary_file: _Optional[str] = ..., query_encoder_file: _Optional[str] = ..., item_tensors_file: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., query_input: _Optional[str] = ..., tokenizer_file: _Optional[str] = ...) -> None: ...

class IndexManifest(_message.Message):
    __slots__ = ("format_version", "created_at", "mol_version", "kind", "index_version", "source_bundle_sha256", "similarity", "num_items", "parameters", "files")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    created_at: _timestamp_pb2.Timestamp
    mol_version: str
    kind: str
    index_version: str
    source_bundle_sha256: str
    similarity: _similarity_pb2.SimilarityConfig
    num_items: int
    parameters: _containers.ScalarMap[str, str]
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    def __init__(self, format_version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mol_version: _Optional[str] = ..., kind: _Optional[str] = ..., index_version: _Optional[str] = ..., source_bundle_sha256: _Optional[str] = ..., similarity: _Optional[_Union[_similarity_pb2.SimilarityConfig, _Mapping]] = ..., num_items: _Optional[int] = ..., parameters: _Optional[_Mapping[str, str]] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ...) -> None: ...
