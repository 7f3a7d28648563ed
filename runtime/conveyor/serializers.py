"""Serializers for job arguments and results.

JSON is the default: readable in Redis, safe to decode. Types JSON lacks
(datetime, date, time, timedelta, bytes, UUID, Decimal, set) are written as
``{"$conveyor": tag, "v": value}`` and come back as the same type. Tuples come back
as lists (as with plain JSON), except inside a set, where they stay tuples. msgpack uses the
same tagging. Pickle exists only as an explicit opt-in: decoding pickle runs code,
so it trusts whoever can write to Redis, and workers refuse it unless started
with ``--allow-pickle``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import pickle
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from .errors import PickleRefused, SerializationError

TAG = "$conveyor"


class Serializer(Protocol):
    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _encode_extra(obj: Any) -> Any:
    # Order matters: datetime is a subclass of date.
    if isinstance(obj, dt.datetime):
        return {TAG: "datetime", "v": obj.isoformat()}
    if isinstance(obj, dt.date):
        return {TAG: "date", "v": obj.isoformat()}
    if isinstance(obj, dt.time):
        return {TAG: "time", "v": obj.isoformat()}
    if isinstance(obj, dt.timedelta):
        return {TAG: "timedelta", "v": [obj.days, obj.seconds, obj.microseconds]}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "v": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, uuid.UUID):
        return {TAG: "uuid", "v": str(obj)}
    if isinstance(obj, decimal.Decimal):
        return {TAG: "decimal", "v": str(obj)}
    if isinstance(obj, (set, frozenset)):
        return {TAG: "set", "v": list(obj)}
    raise SerializationError(
        f"object of type {type(obj).__module__}.{type(obj).__qualname__} is not serializable "
        "(supported: JSON types, datetime, date, time, timedelta, bytes, UUID, Decimal, set)"
    )


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "bytes": base64.b64decode,
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "set": lambda v: {_frozen(x) for x in v},
}


def _frozen(value: Any) -> Any:
    """A set's elements were hashable: lists among them were tuples."""
    return tuple(_frozen(x) for x in value) if isinstance(value, list) else value


def _decode_extra(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None or len(obj) != 2:
        return obj
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise SerializationError(f"unknown type tag {tag!r} in payload")
    return decoder(obj["v"])


class JSONSerializer:
    name = "json"
    _encode: Callable[[Any], str]

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder(object_hook=_decode_extra)
        self._new_encoder()

    def _new_encoder(self) -> None:
        # JSONEncoder.encode() builds its C encoder on every call; enqueue_many of
        # 10,000 jobs spends more on that than on encoding. Build it once.
        # typeshed does not declare the C accelerator (None when it is not built).
        c_make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
        if c_make is None:
            encoder = json.JSONEncoder(default=_encode_extra, separators=(",", ":"), ensure_ascii=False)
            self._encode = lambda obj: encoder.encode(obj)
        else:
            c = c_make({}, _encode_extra, json.encoder.encode_basestring, None, ":", ",", False, False, True)
            self._encode = lambda obj: "".join(c(obj, 0))

    def dumps(self, obj: Any) -> bytes:
        try:
            return self._encode(obj).encode()
        except (ValueError, RecursionError) as exc:  # e.g. a circular reference
            self._new_encoder()  # its circular-reference markers may hold leftovers
            raise SerializationError(f"cannot serialize to JSON: {exc}") from None
        except SerializationError:
            self._new_encoder()
            raise

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data.decode() if isinstance(data, (bytes, bytearray)) else data)


class MsgpackSerializer:
    name = "msgpack"

    def __init__(self) -> None:
        import msgpack  # optional dependency, imported when chosen

        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def dumps(self, obj: Any) -> bytes:
        try:
            packed: bytes = self._packb(obj, default=_encode_extra, use_bin_type=True, datetime=False)
            return packed
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot serialize to msgpack: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return self._unpackb(data, object_hook=_decode_extra, raw=False, strict_map_key=False)


class PickleSerializer:
    """Opt-in only. Loading pickle executes code: use it only when you trust Redis."""

    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(f"cannot pickle: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


_BUILTIN: dict[str, type] = {"json": JSONSerializer, "msgpack": MsgpackSerializer, "pickle": PickleSerializer}
_cache: dict[str, Serializer] = {}


CLIENT_PICKLE_HINT = "pass allow_pickle=True (conveyor job show: --allow-pickle)"


def reader(name: str, *, allow_pickle: bool, what: str = "job", hint: str = CLIENT_PICKLE_HINT) -> Serializer:
    """The serializer to decode a stored payload or result with. Workers and clients share
    this rule: the job hash names its serializer, and anyone who can write to Redis can
    name pickle, so pickle needs the reader's own permission."""
    if name == "pickle" and not allow_pickle:
        raise PickleRefused(f"{what} is pickled, and unpickling runs code from whoever can write to Redis; "
                            f"refused: {hint} if you trust them")
    return get_serializer(name)


def get_serializer(spec: str | Serializer | None) -> Serializer:
    """Return a serializer by name ("json", "msgpack", "pickle") or pass one through."""
    if spec is None:
        spec = "json"
    if not isinstance(spec, str):
        for attr in ("name", "dumps", "loads"):
            if not hasattr(spec, attr):
                raise SerializationError(f"serializer {spec!r} lacks {attr!r}")
        return spec
    if spec not in _cache:
        cls = _BUILTIN.get(spec)
        if cls is None:
            raise SerializationError(f"unknown serializer {spec!r}: expected one of {', '.join(_BUILTIN)}")
        _cache[spec] = cls()
    return _cache[spec]
