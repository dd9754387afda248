"""The model version serving runs: the registry's alias, resolved and verified, and its collections.

`ActiveModel` answers "which version, which local ONNX files, which vector-store collections"
and `refresh()` follows the alias: a promotion or a rollback is a new alias record, so comparing
the newest record's name is enough to notice a move (one small read, no hashing). On a move the
named version is verified again (every file's sha256 against the alias) before it replaces the
current one; a version that fails verification, or that is not yet ready, is not switched to and
the last verified version keeps serving — requests never see a half-switched state, since one
immutable `ModelState` is swapped in a single assignment.

"Ready" is the deploy step's record (`stores.deployment.is_deployed`): promoting a version makes
it production at once, but its item collections and features exist only after
`pipelines/deploy` ran for it. With `ready` given, serving stays on the old version until then;
a rollback returns to a version that was deployed before, so it switches immediately.

Imports no TensorFlow (serving may import schemas, stores and `models.registry` only).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from models import registry
from models.registry import PRODUCTION
from schemas import keys

log = logging.getLogger(__name__)

COLLECTION_KINDS = (keys.ITEMS, keys.CONTENT, keys.USERS)


def collections_of(version: str) -> dict[str, str]:
    """kind → the vector-store collection of that kind for `version` (what pipelines/deploy writes)."""
    return {kind: keys.vector_collection(kind, version) for kind in COLLECTION_KINDS}


def local_files(version: registry.Version, cache: str | None = None) -> dict[str, str]:
    """name → a local path of every file of `version`, each checked against its sha256 (remote
    registries: downloaded once into the cache, named by checksum)."""
    return {name: registry._fetch(version, name, cache) for name in sorted(version.files)}


@dataclass(frozen=True)
class ModelState:
    """One verified version: what a request reads, all at once."""

    version: str
    files: dict[str, str]  # name → verified local path
    metadata: dict = field(compare=False)
    collections: dict[str, str] = field(compare=False)
    record: str | None = None  # the alias record it was resolved from

    @property
    def feature_spec(self) -> dict:
        return dict(self.metadata.get("feature_spec", {}))


class ActiveModel:
    """The alias's version for serving; `refresh()` switches when the alias moves."""

    def __init__(self, root: str, alias: str = PRODUCTION, *, ready: Callable[[str], bool] | None = None,
                 cache: str | None = None, poll_secs: float = 5.0) -> None:
        self.root = root
        self.alias = alias
        self.ready = ready
        self.cache = cache
        self.poll_secs = poll_secs
        self._state: ModelState | None = None
        self._seen: str | None = None  # newest alias record looked at (switched to or refused)
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self.refresh()

    @property
    def state(self) -> ModelState | None:
        """The current version (None while the alias was never promoted or nothing verified)."""
        return self._state

    @property
    def version(self) -> str | None:
        return self._state.version if self._state else None

    @property
    def files(self) -> dict[str, str]:
        return dict(self._state.files) if self._state else {}

    @property
    def collections(self) -> dict[str, str]:
        return dict(self._state.collections) if self._state else {}

    def current(self) -> ModelState | None:
        """The state, refreshed first when the last check is older than `poll_secs` (request path)."""
        if time.monotonic() - self._checked >= self.poll_secs:
            self.refresh()
        return self._state

    def refresh(self) -> bool:
        """Re-reads the alias; returns True when the version changed. Never raises for a bad or
        unready version: it logs and keeps the last verified state."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                alias = registry.read_alias(self.root, self.alias)
            except registry.RegistryError as exc:  # a store hiccup: keep serving what we have
                log.warning("active model: cannot read alias %r in %s: %s", self.alias, self.root, exc)
                return False
            if alias is None:
                return False
            if self._state is not None and alias.record == self._state.record:
                return False
            if self._state is not None and alias.version == self._state.version:
                self._state = ModelState(self._state.version, self._state.files, self._state.metadata,
                                         self._state.collections, alias.record)  # same version, newer record
                return False
            try:
                ready = self.ready is None or self.ready(alias.version)
            except Exception as exc:  # e.g. Redis unreachable: do not switch blind
                log.warning("active model: cannot tell whether %s is deployed: %s", alias.version, exc)
                return False
            if not ready:
                if self._seen != alias.record:
                    log.info("active model: %s is %s but not deployed yet; serving %s", alias.version, self.alias,
                             self.version)
                    self._seen = alias.record
                return False
            try:
                version = registry.load_version(self.root, alias.version)
                registry.verify(version, alias)
                files = local_files(version, self.cache)
            except registry.RegistryError as exc:
                if self._seen != alias.record:
                    log.warning("active model: refusing %s (%s); serving %s", alias.version, exc, self.version)
                    self._seen = alias.record
                return False
            previous = self.version
            self._state = ModelState(version.version, files, dict(version.metadata), collections_of(version.version),
                                     alias.record)
            self._seen = alias.record
            log.info("active model: %s → %s (%s)", previous, version.version, alias.action)
            return True
