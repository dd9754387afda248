"""What the Weaviate backend would send, checked without a server.

The helpers build the weaviate-client's own config, filter and data objects; these tests read
their fields and the client's serialisations of them (the REST schema body, the REST/gRPC filter
forms). The behaviour against a live server is the shared contract suite, run when
``WEAVIATE_URL`` is set.
"""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest
from weaviate.classes.config import DataType, Tokenization, VectorDistances
from weaviate.collections.classes.config import _CollectionConfigCreate
from weaviate.collections.filters import _FilterToGRPC, _FilterToREST
from weaviate.exceptions import WeaviateConnectionError
from weaviate.proto.v1 import base_pb2
from weaviate.util import generate_uuid5

from stores.vector_store import Filter, open_vector_store
from stores.vector_weaviate import (
    EXT_ID,
    batch_objects,
    collection_config,
    connection_params,
    object_uuid,
    our_name,
    parse_description,
    property_config,
    score_from_distance,
    to_weaviate_filter,
    weaviate_name,
)

SCHEMA = {"segment": "text", "categories": "text[]", "price": "number", "year": "int", "fresh": "boolean"}


def rest(flt: Filter, schema=SCHEMA):
    return _FilterToREST.convert(to_weaviate_filter(flt, schema))


# -- schema


@pytest.mark.parametrize(
    ("metric", "distance"),
    [("cos", VectorDistances.COSINE), ("ip", VectorDistances.DOT), ("l2sq", VectorDistances.L2_SQUARED)],
)
def test_collection_config(metric: str, distance: VectorDistances) -> None:
    cfg = collection_config("items_v3", 64, metric, ef_construction=200, max_connections=32)
    assert cfg["name"] == "Items_v3"
    assert parse_description(cfg["description"]) == (64, metric)
    (ext_id,) = cfg["properties"]
    assert (ext_id.name, ext_id.dataType, ext_id.tokenization) == (EXT_ID, DataType.TEXT, Tokenization.FIELD)

    vc = cfg["vector_config"]
    assert vc.vectorizer.vectorizer.value == "none"  # our vectors, no vectorizer module
    assert vc.vectorIndexType.value == "hnsw"
    assert vc.vectorIndexConfig.distance == distance
    assert (vc.vectorIndexConfig.efConstruction, vc.vectorIndexConfig.maxConnections) == (200, 32)

    # The body `client.collections.create(**cfg)` POSTs to /v1/schema.
    body = _CollectionConfigCreate(**cfg)._to_dict(emit_default_vector_index_type=True)
    assert body["class"] == "Items_v3"
    assert body["vectorConfig"]["default"]["vectorizer"] == {"none": {}}
    assert body["vectorConfig"]["default"]["vectorIndexType"] == "hnsw"
    assert body["vectorConfig"]["default"]["vectorIndexConfig"]["distance"] == distance.value
    assert body["properties"][0]["name"] == EXT_ID and body["properties"][0]["tokenization"] == "field"
    assert "vectorizer" not in body  # no module-level vectorizer either


def test_collection_names_round_trip_and_are_validated() -> None:
    assert weaviate_name("users_collab_hash_v0") == "Users_collab_hash_v0"
    assert our_name("Users_collab_hash_v0") == "users_collab_hash_v0"
    for bad in ("Items_v3", "items-v3", "", "3items"):
        with pytest.raises(ValueError):
            collection_config(bad, 8)
    with pytest.raises(ValueError):
        collection_config("items_v3", 8, "hamming")
    assert parse_description("someone else's collection") is None


@pytest.mark.parametrize(
    ("ptype", "data_type", "tokenization"),
    [
        ("text", DataType.TEXT, Tokenization.FIELD),
        ("text[]", DataType.TEXT_ARRAY, Tokenization.FIELD),
        ("int", DataType.INT, None),
        ("number", DataType.NUMBER, None),
        ("boolean", DataType.BOOL, None),
    ],
)
def test_property_config(ptype: str, data_type: DataType, tokenization: Tokenization | None) -> None:
    p = property_config("segment", ptype)
    assert (p.name, p.dataType, p.tokenization, p.indexFilterable) == ("segment", data_type, tokenization, True)
    d = p._to_dict()
    assert d["dataType"] == [ptype]


# -- filters


def test_eq_translates_with_the_property_type() -> None:
    assert rest(Filter.eq("segment", "seg-1")) == {"operator": "Equal", "path": ["segment"], "valueText": "seg-1"}
    assert rest(Filter.eq("year", 1995)) == {"operator": "Equal", "path": ["year"], "valueInt": 1995}
    assert rest(Filter.eq("price", 3)) == {"operator": "Equal", "path": ["price"], "valueNumber": 3.0}
    assert rest(Filter.eq("fresh", True)) == {"operator": "Equal", "path": ["fresh"], "valueBoolean": True}
    # an element of a list property: ContainsAny of one value, not Equal on the whole array
    assert rest(Filter.eq("categories", "Comedy")) == {
        "operator": "ContainsAny",
        "path": ["categories"],
        "valueTextArray": ["Comedy"],
    }


def test_any_of() -> None:
    assert rest(Filter.any_of("categories", ["Comedy", "Drama"])) == {
        "operator": "ContainsAny",
        "path": ["categories"],
        "valueTextArray": ["Comedy", "Drama"],
    }


def test_not_ids_excludes_the_deterministic_uuids() -> None:
    single = rest(Filter.not_ids(["m1"]))
    assert single == {"operator": "NotEqual", "path": ["_id"], "valueText": generate_uuid5("m1")}
    both = rest(Filter.not_ids(["m1", "m2", "m1"]))
    assert both["operator"] == "And"
    assert [o["valueText"] for o in both["operands"]] == [object_uuid("m1"), object_uuid("m2")]
    assert all(o["operator"] == "NotEqual" and o["path"] == ["_id"] for o in both["operands"])
    assert to_weaviate_filter(Filter.not_ids([])) is None


def test_range_is_inclusive_and_typed() -> None:
    assert rest(Filter.range("price", 10, 20)) == {
        "operator": "And",
        "operands": [
            {"operator": "GreaterThanEqual", "path": ["price"], "valueNumber": 10.0},
            {"operator": "LessThanEqual", "path": ["price"], "valueNumber": 20.0},
        ],
    }
    # int property, float bounds: rounded inward so Weaviate compares ints with ints
    assert rest(Filter.range("year", 1994.5, 1997.9)) == {
        "operator": "And",
        "operands": [
            {"operator": "GreaterThanEqual", "path": ["year"], "valueInt": 1995},
            {"operator": "LessThanEqual", "path": ["year"], "valueInt": 1997},
        ],
    }
    assert rest(Filter.range("price", hi=5)) == {"operator": "LessThanEqual", "path": ["price"], "valueNumber": 5.0}
    with pytest.raises(ValueError):
        Filter.range("price")


def test_all_of_nests_and_flattens() -> None:
    flt = Filter.all_of(
        Filter.eq("segment", "seg-0"),
        Filter.all_of(Filter.any_of("categories", ["Drama"]), Filter.not_ids([])),
        Filter.range("year", lo=1990),
    )
    assert rest(flt) == {
        "operator": "And",
        "operands": [
            {"operator": "Equal", "path": ["segment"], "valueText": "seg-0"},
            {"operator": "ContainsAny", "path": ["categories"], "valueTextArray": ["Drama"]},
            {"operator": "GreaterThanEqual", "path": ["year"], "valueInt": 1990},
        ],
    }
    assert to_weaviate_filter(Filter.all_of()) is None
    assert to_weaviate_filter(None) is None


def test_filters_encode_to_grpc() -> None:
    """Queries send filters over gRPC: the translated filter must encode, with typed values."""
    flt = Filter.all_of(Filter.eq("year", 1995), Filter.range("price", 1))
    g = _FilterToGRPC.convert(to_weaviate_filter(flt, SCHEMA))
    assert g.operator == base_pb2.Filters.OPERATOR_AND
    year, price = g.filters
    assert (year.operator, year.target.property, year.value_int) == (base_pb2.Filters.OPERATOR_EQUAL, "year", 1995)
    assert price.operator == base_pb2.Filters.OPERATOR_GREATER_THAN_EQUAL and price.HasField("value_number")


# -- batch objects


def test_batch_objects() -> None:
    vecs = np.array([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    objs = batch_objects(["item-1", "item-2"], vecs, [{"segment": "s1", "categories": ["A"]}, {}])
    first, second = objs
    assert first.properties == {EXT_ID: "item-1", "segment": "s1", "categories": ["A"]}
    assert second.properties == {EXT_ID: "item-2"}
    assert first.uuid == generate_uuid5("item-1") == object_uuid("item-1")
    assert uuid.UUID(first.uuid).version == 5
    assert first.uuid != second.uuid
    assert batch_objects(["item-1"], vecs[:1], [{}])[0].uuid == first.uuid  # an upsert hits the same object
    assert isinstance(first.vector, list) and all(isinstance(x, float) for x in first.vector)
    np.testing.assert_allclose(first.vector, [0.6, 0.8, 0.0], rtol=1e-6)


def test_scores_from_weaviate_distances() -> None:
    assert score_from_distance("cos", 0.25) == 0.75  # distance = 1 - cosine
    assert score_from_distance("ip", -3.0) == 3.0  # distance = -dot
    assert score_from_distance("l2sq", 2.0) == -2.0


# -- connecting


def test_connection_params() -> None:
    p = connection_params("http://weaviate:8080", env={})
    assert p == {
        "http_host": "weaviate",
        "http_port": 8080,
        "http_secure": False,
        "grpc_host": "weaviate",
        "grpc_port": 50051,
        "grpc_secure": False,
    }
    p = connection_params("https://cluster.example.com", env={"WEAVIATE_API_KEY": "k-123"})
    assert (p["http_port"], p["http_secure"], p["grpc_port"], p["grpc_secure"]) == (443, True, 443, True)
    assert p["auth_credentials"].api_key == "k-123"
    p = connection_params("http://localhost:8081?grpc_port=50052&grpc_host=grpc.local", env={"WEAVIATE_GRPC_PORT": "1"})
    assert (p["http_port"], p["grpc_host"], p["grpc_port"]) == (8081, "grpc.local", 50052)
    assert connection_params("http://h", env={"WEAVIATE_GRPC_PORT": "50100"})["grpc_port"] == 50100
    for bad in ("weaviate:8080", "ftp://h", "http://"):
        with pytest.raises(ValueError):
            connection_params(bad, env={})


def test_http_url_opens_the_real_client(monkeypatch) -> None:
    """``open_vector_store("http://...")`` goes to the weaviate client, which fails fast on a closed port."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    monkeypatch.delenv("WEAVIATE_API_KEY", raising=False)
    with pytest.raises(WeaviateConnectionError):
        open_vector_store(f"http://127.0.0.1:{ports[0]}?grpc_port={ports[1]}")
