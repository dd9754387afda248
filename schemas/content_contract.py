"""The content tower's ONNX input contract: what an `item` event becomes before the model sees it.

Training (issue 4) exports a content tower that follows this contract; the catalog path
(`transforms/content.py`) feeds every registered version through it. Plain Python and numpy, no
TensorFlow, so pipelines and serving can build inputs without the training stack.

The ONNX model (file `MODEL_FILE` in a registry version) takes, for a batch of N items:

- `hashed` float32[N, H]: `hashed_features(title, description, categories, H)`, signed feature
  hashing of the categories (weight 3) and the lower-cased title/description tokens,
  L2-normalised (zeros when there is no text);
- `price` float32[N, 1]: `log1p(price)`, 0 when absent;
- `vec_<m>` float32[N, d_m]: the item's precomputed vector of modality m
  (`attributes.vectors[m]`), zeros when missing;
- `mask_<m>` float32[N, 1]: 1 when modality m is present, 0 when missing;

for every m in `MODALITIES` (text, image, audio, video), and returns one output `content`
float32[N, D]. A vector whose length is not d_m counts as missing (mask 0): the model must mask
a missing modality out (its `vec_<m>` values must not change the output), never treat zeros as
data. The batch dimension is dynamic.

H, d_m and D come from the version's `metadata.json`, section `content_contract`:

    {"hashed_dim": H, "modality_dims": {"text": d, "image": d, "audio": d, "video": d}, "output_dim": D}

`hashed_features` is also the content vector used before any model is registered
(`transforms/observe.content_vector`, model `hash-v0`), so the fallback and the tower's text
input are the same hashing.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.events import Event

MODEL_FILE = "content_tower.onnx"
METADATA_SECTION = "content_contract"
MODALITIES = ("text", "image", "audio", "video")
HASHED = "hashed"
PRICE = "price"
OUTPUT = "content"
CATEGORY_WEIGHT = 3

_TOKEN = re.compile(r"[a-z0-9]+")


def vec_input(modality: str) -> str:
    return f"vec_{modality}"


def mask_input(modality: str) -> str:
    return f"mask_{modality}"


def input_names() -> tuple[str, ...]:
    """Every input of the contract, in a fixed order."""
    return (HASHED, PRICE, *(n for m in MODALITIES for n in (vec_input(m), mask_input(m))))


@dataclass(frozen=True)
class ContentContract:
    """The dimensions one content tower was trained with (from its registry metadata)."""

    hashed_dim: int
    modality_dims: Mapping[str, int]
    output_dim: int

    def __post_init__(self) -> None:
        if set(self.modality_dims) != set(MODALITIES):
            raise ValueError(f"modality_dims must name exactly {', '.join(MODALITIES)}, "
                             f"got {sorted(self.modality_dims)}")
        for name, dim in (("hashed_dim", self.hashed_dim), ("output_dim", self.output_dim),
                          *((f"modality_dims.{m}", d) for m, d in self.modality_dims.items())):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"{name} must be a positive integer, got {dim!r}")

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> ContentContract:
        """Reads the `content_contract` section of a version's metadata (ValueError if absent or bad)."""
        section = metadata.get(METADATA_SECTION)
        if not isinstance(section, Mapping):
            raise ValueError(f"metadata has no {METADATA_SECTION!r} section")
        try:
            return cls(section["hashed_dim"], dict(section["modality_dims"]), section["output_dim"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{METADATA_SECTION}: missing or malformed {exc}") from None

    def to_metadata(self) -> dict:
        return {"hashed_dim": self.hashed_dim, "modality_dims": dict(self.modality_dims), "output_dim": self.output_dim}

    def input_shapes(self) -> dict[str, int]:
        """Width of every input (the batch dimension aside)."""
        shapes = {HASHED: self.hashed_dim, PRICE: 1}
        for m in MODALITIES:
            shapes[vec_input(m)] = self.modality_dims[m]
            shapes[mask_input(m)] = 1
        return shapes


def hashed_features(title: str | None, description: str | None, categories: Sequence[str], dim: int) -> np.ndarray:
    """Signed feature hashing of categories and title/description tokens, L2-normalised (float64).

    Deterministic across processes (blake2b, not Python's salted hash): bucket `h % dim`, sign
    from bit 32 of `h`, categories weigh `CATEGORY_WEIGHT`, tokens their count.
    """
    vec = np.zeros(dim, dtype=np.float64)
    tokens: Counter[str] = Counter()
    for c in categories:
        tokens[f"cat:{c.lower()}"] += CATEGORY_WEIGHT
    for text in (title, description):
        for tok in _TOKEN.findall((text or "").lower()):
            tokens[f"tok:{tok}"] += 1
    for tok, n in tokens.items():
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "big")
        vec[h % dim] += n if (h >> 32) & 1 else -n
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


def modality_present(event: Event, modality: str, contract: ContentContract) -> bool:
    """Whether the item carries modality `modality` with the contract's dimension."""
    attrs = event.attributes
    vec = attrs.vectors.get(modality) if attrs is not None else None
    return vec is not None and len(vec) == contract.modality_dims[modality]


def content_inputs(items: Sequence[Event], contract: ContentContract) -> dict[str, np.ndarray]:
    """The model's feed for a batch of `item` events (one row per event, in order)."""
    n = len(items)
    feed = {name: np.zeros((n, width), dtype=np.float32) for name, width in contract.input_shapes().items()}
    for i, event in enumerate(items):
        attrs = event.attributes
        if attrs is None:
            continue
        feed[HASHED][i] = hashed_features(attrs.title, attrs.description, attrs.categories, contract.hashed_dim)
        if attrs.price is not None:
            feed[PRICE][i, 0] = math.log1p(attrs.price)
        for m in MODALITIES:
            if modality_present(event, m, contract):
                feed[vec_input(m)][i] = attrs.vectors[m]
                feed[mask_input(m)][i, 0] = 1.0
    return feed


def catalog_inputs(item_ids: Sequence[str], catalog: Mapping[str, Event], contract: ContentContract
                   ) -> dict[str, np.ndarray]:
    """The feed for `item_ids` in order, from their `item` events; an item with none gets the
    all-missing row (zeros, every mask 0)."""
    feed = {name: np.zeros((len(item_ids), width), dtype=np.float32) for name, width in contract.input_shapes().items()}
    known = [n for n, item in enumerate(item_ids) if item in catalog]
    if known:
        filled = content_inputs([catalog[item_ids[n]] for n in known], contract)
        for name in feed:
            feed[name][known] = filled[name]
    return feed


def check_model(session, contract: ContentContract) -> None:
    """Raises ValueError unless an onnxruntime session's inputs and output follow the contract.

    Duck-typed on `get_inputs()` / `get_outputs()` (name, type, shape), so this module needs no
    onnxruntime; symbolic dimensions (the batch, or a width exported as a name) are accepted.
    """
    shapes = contract.input_shapes()
    inputs = {i.name: i for i in session.get_inputs()}
    if missing := sorted(set(shapes) - set(inputs)):
        raise ValueError(f"model lacks inputs {missing}")
    if extra := sorted(set(inputs) - set(shapes)):
        raise ValueError(f"model wants inputs the contract does not feed: {extra}")
    outputs = {o.name: o for o in session.get_outputs()}
    if OUTPUT not in outputs:
        raise ValueError(f"model has no output {OUTPUT!r} (has {sorted(outputs)})")
    for name, width, arg in [(n, w, inputs[n]) for n, w in shapes.items()] + [(OUTPUT, contract.output_dim,
                                                                              outputs[OUTPUT])]:
        if arg.type != "tensor(float)":
            raise ValueError(f"{name}: expected tensor(float), got {arg.type}")
        shape = arg.shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != width):
            raise ValueError(f"{name}: expected shape [N, {width}], got {shape}")
