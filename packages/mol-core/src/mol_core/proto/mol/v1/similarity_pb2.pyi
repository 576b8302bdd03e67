from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SimilarityConfig(_message.Message):
    __slots__ = ("dot_product", "mixture_of_logits")
    DOT_PRODUCT_FIELD_NUMBER: _ClassVar[int]
    MIXTURE_OF_LOGITS_FIELD_NUMBER: _ClassVar[int]
    dot_product: DotProductConfig
    mixture_of_logits: MixtureOfLogitsConfig
    def __init__(self, dot_product: _Optional[_Union[DotProductConfig, _Mapping]] = ..., mixture_of_logits: _Optional[_Union[MixtureOfLogitsConfig, _Mapping]] = ...) -> None: ...

class DotProductConfig(_message.Message):
    __slots__ = ("embedding_dim", "l2_normalize", "temperature")
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    L2_NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    embedding_dim: int
    l2_normalize: bool
    temperature: float
    def __init__(self, embedding_dim: _Optional[int] = ..., l2_normalize: bool = ..., temperature: _Optional[float] = ...) -> None: ...

class MixtureOfLogitsConfig(_message.Message):
    __slots__ = ("query_components", "item_components", "component_dim", "user_components", "temperature", "gating_hidden_dim", "gating_dropout", "query_input_dim", "item_input_dim", "user_input_dim", "user_dropout", "query_layer_norm", "query_hidden_dim", "item_dropout", "user_direct")
    QUERY_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ITEM_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_DIM_FIELD_NUMBER: _ClassVar[int]
    USER_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    GATING_HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    GATING_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    QUERY_INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    ITEM_INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    USER_INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    USER_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    QUERY_LAYER_NORM_FIELD_NUMBER: _ClassVar[int]
    QUERY_HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    ITEM_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    USER_DIRECT_FIELD_NUMBER: _ClassVar[int]
    query_components: int
    item_components: int
    component_dim: int
    user_components: int
    temperature: float
    gating_hidden_dim: int
    gating_dropout: float
    query_input_dim: int
    item_input_dim: int
    user_input_dim: int
    user_dropout: float
    query_layer_norm: bool
    query_hidden_dim: int
    item_dropout: float
    user_direct: bool
    def __init__(self, query_components: _Optional[int] = ..., item_components: _Optional[int] = ..., component_dim: _Optional[int] = ..., user_components: _Optional[int] = ..., temperature: _Optional[float] = ..., gating_hidden_dim: _Optional[int] = ..., gating_dropout: _Optional[float] = ..., query_input_dim: _Optional[int] = ..., item_input_dim: _Optional[int] = ..., user_input_dim: _Optional[int] = ..., user_dropout: _Optional[float] = ..., query_layer_norm: bool = ..., query_hidden_dim: _Optional[int] = ..., item_dropout: _Optional[float] = ..., user_direct: bool = ...) -> None: ...
