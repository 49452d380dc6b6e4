"""Wire formats and payload encoders.

Two layers:

* The **wire format** encodes a whole :class:`Envelope` to bytes: JSON (default) or
  MessagePack. A body is recognised by its first byte (``{`` for JSON), so workers
  read both without a header.
* **Payload encoders** transform task arguments and results before the wire format
  sees them (encryption, compression, custom types). Each has an ``id`` that travels
  in the envelope (``args_encoder``) and in the stored status (``result_encoder``), so
  a value is always decoded by the encoder that wrote it.

Arguments and results must travel exactly, so what JSON cannot carry is refused
rather than changed on the way: NaN and infinity (JSON would turn them into ``null``)
and data nested more than :data:`MAX_NESTING` levels deep (a reader with the default
recursion limit could not decode it). Integers of any size are carried: JSON has no
limit (a MessagePack body refuses those beyond 64 bits at enqueue).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from ._errors import ConfigurationError, DecodeError, SerializationError
from ._messages import Envelope

__all__ = [
    "MAX_NESTING",
    "EncoderRegistry",
    "JsonPayloadEncoder",
    "PayloadEncoder",
    "WireFormat",
    "decode_envelope",
    "enc_hook",
    "encode_envelope",
    "encode_problem",
    "plain_problem",
    "unstorable",
]

WireFormat = Literal["json", "msgpack"]

#: How many levels lists and maps may nest in an argument or a result.
MAX_NESTING = 100


def enc_hook(value: Any) -> Any:
    """Encode what msgspec does not by itself: subclasses of str (such as TaskRef) as str."""
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")


_json_encoder = msgspec.json.Encoder(enc_hook=enc_hook)
_msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
_json_envelope = msgspec.json.Decoder(Envelope)
_msgpack_envelope = msgspec.msgpack.Decoder(Envelope)


@runtime_checkable
class PayloadEncoder(Protocol):
    """Turns a value into something the wire format can carry, and back.

    ``encode`` must return plain data (dicts, lists, str, int, float, bool, None,
    bytes); ``decode`` receives exactly that back.
    """

    id: str

    def encode(self, value: Any) -> Any: ...

    def decode(self, stored: Any) -> Any: ...


class JsonPayloadEncoder:
    """The default: values pass through unchanged and must be msgspec-serializable."""

    id = "json"

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, stored: Any) -> Any:
        return stored


class EncoderRegistry:
    """Payload encoders by id; the ``json`` identity encoder is always present."""

    def __init__(self, encoders: Iterable[PayloadEncoder] = ()) -> None:
        self._by_id: dict[str, PayloadEncoder] = {"json": JsonPayloadEncoder()}
        #: Whether ``json`` is still the identity (not replaced by a registered encoder):
        #: the worker then skips the encoder for values under that id.
        self.json_is_identity = True
        for encoder in encoders:
            self.register(encoder)

    def register(self, encoder: PayloadEncoder) -> None:
        if not isinstance(encoder, PayloadEncoder) or not isinstance(encoder.id, str):
            raise ConfigurationError(
                f"{encoder!r} is not a payload encoder: it needs an `id` string and "
                "`encode(value)` / `decode(stored)` methods"
            )
        existing = self._by_id.get(encoder.id)
        if existing is not None and existing is not encoder and encoder.id != "json":
            raise ConfigurationError(
                f"a payload encoder with id {encoder.id!r} is already registered"
            )
        self._by_id[encoder.id] = encoder
        self.json_is_identity = type(self._by_id["json"]) is JsonPayloadEncoder

    def get(self, encoder_id: str) -> PayloadEncoder:
        try:
            return self._by_id[encoder_id]
        except KeyError:
            raise DecodeError(
                f"no payload encoder with id {encoder_id!r} is registered; register it "
                "with Stem(encoders=[...]) in the process that reads this value"
            ) from None

    def __contains__(self, encoder_id: object) -> bool:
        return encoder_id in self._by_id


def encode_envelope(envelope: Envelope, wire_format: WireFormat = "json") -> bytes:
    """Encode an envelope; raise :class:`SerializationError` naming the bad argument.

    Refuses what would not arrive exactly: NaN, infinity, nesting deeper than
    :data:`MAX_NESTING`, and (MessagePack) integers beyond 64 bits.
    """
    encoder = _json_encoder if wire_format == "json" else _msgpack_encoder
    try:
        body = encoder.encode(envelope)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _explain(envelope, encoder, exc) from exc
    # NaN and infinity become ``null`` in JSON, and nesting needs brackets: a body
    # with neither (the common case) needs no closer look. Fields left at None are
    # omitted from an envelope, so a ``null`` comes from the payload.
    if wire_format != "json" or b"null" in body or _brackets(body) > MAX_NESTING:
        for label, value in _payload(envelope):
            problem = unstorable(value)
            if problem is not None:
                raise SerializationError(
                    f"{label} of task {envelope.task!r} cannot be sent: {problem}"
                )
    return body


def decode_envelope(body: bytes) -> Envelope:
    """Decode a body written by :func:`encode_envelope` in either wire format.

    Any failure (not UTF-8, nesting too deep for this process, wrong field types,
    not bytes at all) is a :class:`DecodeError`: such a body can never be run.
    """
    try:
        if body.startswith(b"{"):
            return _json_envelope.decode(body)
        return _msgpack_envelope.decode(body)
    except Exception as exc:
        raise DecodeError(f"message body is not a Stem envelope: {encode_problem(exc)}") from exc


def unstorable(value: Any) -> str | None:
    """Why ``value`` cannot be carried exactly as an argument or a result, or None if it can."""
    try:
        plain = msgspec.to_builtins(value, enc_hook=enc_hook)
    except Exception as exc:
        return encode_problem(exc)
    return plain_problem(plain)


def plain_problem(plain: Any) -> str | None:
    """:func:`unstorable` for a value already made of builtins (``msgspec.to_builtins``)."""
    try:
        body = _json_encoder.encode(plain)
    except Exception as exc:
        return encode_problem(exc)
    if b"null" not in body and _brackets(body) <= MAX_NESTING:
        return None
    return _plain_problem(plain)


def encode_problem(exc: BaseException) -> str:
    """What an encoder's error means, in words a user can act on."""
    if isinstance(exc, RecursionError):
        return f"it nests more than {MAX_NESTING} levels deep or contains itself"
    if isinstance(exc, UnicodeError):
        return f"it holds text that is not valid Unicode ({_safe_str(exc)})"
    return _safe_str(exc) or type(exc).__name__


def _plain_problem(plain: Any) -> str | None:
    """Walk builtins (without recursion, so any depth is safe) for NaN, infinity and depth."""
    stack: list[tuple[Any, int]] = [(plain, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return (
                    f"it holds {item!r}, which JSON cannot carry (it would arrive as null); "
                    "send None or a string instead"
                )
        elif kind is list or kind is dict:
            if depth >= MAX_NESTING:
                return f"it nests more than {MAX_NESTING} levels deep"
            children = item.values() if kind is dict else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _brackets(body: bytes) -> int:
    """An upper bound of the nesting depth of a JSON document (brackets in strings count too)."""
    return body.count(b"[") + body.count(b"{")


def _payload(envelope: Envelope) -> list[tuple[str, Any]]:
    named: list[tuple[str, Any]] = [
        (f"positional argument {i}", v) for i, v in enumerate(envelope.args)
    ]
    named += [(f"argument {k!r}", v) for k, v in envelope.kwargs.items()]
    named += [(f"header {k!r}", v) for k, v in envelope.headers.items()]
    named += [(f"meta {k!r}", v) for k, v in envelope.meta.items()]
    return named


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def _explain(
    envelope: Envelope, encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder, exc: Exception
) -> SerializationError:
    for label, value in _payload(envelope):
        try:
            encoder.encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as inner:
            return SerializationError(
                f"{label} of task {envelope.task!r} cannot be serialized "
                f"({type(value).__name__}: {encode_problem(inner)}); pass plain data (str, int, "
                "float, bool, None, list, dict, datetime, UUID, dataclass, msgspec.Struct) or "
                "register a payload encoder"
            )
    return SerializationError(f"task {envelope.task!r} cannot be serialized: {encode_problem(exc)}")
