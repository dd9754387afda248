from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_ORIGIN: _ClassVar[Source]
    SOURCE_EDGE_CACHE: _ClassVar[Source]
    SOURCE_EDGE_SCORER: _ClassVar[Source]
SOURCE_UNSPECIFIED: Source
SOURCE_ORIGIN: Source
SOURCE_EDGE_CACHE: Source
SOURCE_EDGE_SCORER: Source

class Context(_message.Message):
    __slots__ = ("surface", "device", "locale", "segment", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    surface: str
    device: str
    locale: str
    segment: str
    extra: _containers.ScalarMap[str, str]
    def __init__(self, surface: _Optional[str] = ..., device: _Optional[str] = ..., locale: _Optional[str] = ..., segment: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PriceRange(_message.Message):
    __slots__ = ("min_price", "max_price")
    MIN_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    min_price: float
    max_price: float
    def __init__(self, min_price: _Optional[float] = ..., max_price: _Optional[float] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("exclude_item_ids", "include_categories", "exclude_categories", "price_range", "new_items_only", "new_within_days")
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_RANGE_FIELD_NUMBER: _ClassVar[int]
    NEW_ITEMS_ONLY_FIELD_NUMBER: _ClassVar[int]
    NEW_WITHIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    price_range: PriceRange
    new_items_only: bool
    new_within_days: int
    def __init__(self, exclude_item_ids: _Optional[_Iterable[str]] = ..., include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., price_range: _Optional[_Union[PriceRange, _Mapping]] = ..., new_items_only: bool = ..., new_within_days: _Optional[int] = ...) -> None: ...

class PersonalizeRequest(_message.Message):
    __slots__ = ("user_id", "context", "n", "filters", "explain", "candidate_item_ids", "disable_exploration", "include_pool")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_POOL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    context: Context
    n: int
    filters: Filters
    explain: bool
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    disable_exploration: bool
    include_pool: bool
    def __init__(self, user_id: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., n: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., explain: bool = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., disable_exploration: bool = ..., include_pool: bool = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "text", "weight")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    code: str
    text: str
    weight: float
    def __init__(self, code: _Optional[str] = ..., text: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "position", "propensity", "explored", "reasons", "explanation")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    position: int
    propensity: float
    explored: bool
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    explanation: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ..., explored: bool = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., explanation: _Optional[str] = ...) -> None: ...

class PersonalizeResponse(_message.Message):
    __slots__ = ("request_id", "items", "model_version", "variant", "degraded", "source", "pool")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: str
    variant: str
    degraded: bool
    source: Source
    pool: _containers.RepeatedCompositeFieldContainer[PoolItem]
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., variant: _Optional[str] = ..., degraded: bool = ..., source: _Optional[_Union[Source, str]] = ..., pool: _Optional[_Iterable[_Union[PoolItem, _Mapping]]] = ...) -> None: ...

class PoolItem(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ItemAttributes(_message.Message):
    __slots__ = ("title", "description", "categories", "price", "created_at_ms", "created_at_rfc3339", "vectors", "extra")
    class VectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_RFC3339_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    title: str
    description: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    price: float
    created_at_ms: int
    created_at_rfc3339: str
    vectors: _containers.MessageMap[str, Vector]
    extra: _containers.ScalarMap[str, str]
    def __init__(self, title: _Optional[str] = ..., description: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., price: _Optional[float] = ..., created_at_ms: _Optional[int] = ..., created_at_rfc3339: _Optional[str] = ..., vectors: _Optional[_Mapping[str, Vector]] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "ts_ms", "ts_rfc3339", "user_id", "type", "item_id", "value", "text", "context", "request_id", "position", "propensity", "variant", "attributes")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    TS_RFC3339_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    ts_ms: int
    ts_rfc3339: str
    user_id: str
    type: str
    item_id: str
    value: float
    text: str
    context: Context
    request_id: str
    position: int
    propensity: float
    variant: str
    attributes: ItemAttributes
    def __init__(self, event_id: _Optional[str] = ..., ts_ms: _Optional[int] = ..., ts_rfc3339: _Optional[str] = ..., user_id: _Optional[str] = ..., type: _Optional[str] = ..., item_id: _Optional[str] = ..., value: _Optional[float] = ..., text: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., request_id: _Optional[str] = ..., position: _Optional[int] = ..., propensity: _Optional[float] = ..., variant: _Optional[str] = ..., attributes: _Optional[_Union[ItemAttributes, _Mapping]] = ...) -> None: ...

class Slate(_message.Message):
    __slots__ = ("request_id", "user_id", "ts_ms", "variant", "context", "item_ids", "propensities")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    ts_ms: int
    variant: str
    context: Context
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    propensities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., ts_ms: _Optional[int] = ..., variant: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., item_ids: _Optional[_Iterable[str]] = ..., propensities: _Optional[_Iterable[float]] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events", "slates")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SLATES_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    slates: _containers.RepeatedCompositeFieldContainer[Slate]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., slates: _Optional[_Iterable[_Union[Slate, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "field", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("accepted", "rejections", "slate_rejections")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    SLATE_REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    slate_rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, accepted: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., slate_rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "context")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    context: Context
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., context: _Optional[_Union[Context, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("reasons", "explanation", "used_llm")
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    USED_LLM_FIELD_NUMBER: _ClassVar[int]
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    explanation: str
    used_llm: bool
    def __init__(self, reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., explanation: _Optional[str] = ..., used_llm: bool = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("edge_id",)
    EDGE_ID_FIELD_NUMBER: _ClassVar[int]
    edge_id: str
    def __init__(self, edge_id: _Optional[str] = ...) -> None: ...

class UserContextUpdate(_message.Message):
    __slots__ = ("user_id", "recent_item_ids", "session_key", "last_event_ms", "material", "as_of_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_MS_FIELD_NUMBER: _ClassVar[int]
    MATERIAL_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    session_key: str
    last_event_ms: int
    material: bool
    as_of_ms: int
    def __init__(self, user_id: _Optional[str] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., session_key: _Optional[str] = ..., last_event_ms: _Optional[int] = ..., material: bool = ..., as_of_ms: _Optional[int] = ...) -> None: ...

class BanditCounts(_message.Message):
    __slots__ = ("item_id", "clicks", "non_clicks")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    NON_CLICKS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    clicks: float
    non_clicks: float
    def __init__(self, item_id: _Optional[str] = ..., clicks: _Optional[float] = ..., non_clicks: _Optional[float] = ...) -> None: ...

class BanditSegment(_message.Message):
    __slots__ = ("segment", "items")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    items: _containers.RepeatedCompositeFieldContainer[BanditCounts]
    def __init__(self, segment: _Optional[str] = ..., items: _Optional[_Iterable[_Union[BanditCounts, _Mapping]]] = ...) -> None: ...

class SyncMessage(_message.Message):
    __slots__ = ("seq", "full", "as_of_ms", "users", "bandits", "model_version")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    BANDITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    full: bool
    as_of_ms: int
    users: _containers.RepeatedCompositeFieldContainer[UserContextUpdate]
    bandits: _containers.RepeatedCompositeFieldContainer[BanditSegment]
    model_version: str
    def __init__(self, seq: _Optional[int] = ..., full: bool = ..., as_of_ms: _Optional[int] = ..., users: _Optional[_Iterable[_Union[UserContextUpdate, _Mapping]]] = ..., bandits: _Optional[_Iterable[_Union[BanditSegment, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
