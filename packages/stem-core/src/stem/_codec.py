"""Wire formats and payload encoders.

Two layers:

* The **wire format** encodes a whole :class:`Envelope` to bytes: JSON (default) or
  MessagePack. A body is recognised by its first byte (``{`` for JSON), so workers
  read both without a header.
* **Payload encoders** transform task arguments and results before the wire format
  sees them (encryption, compression, custom types). Each has an ``id`` that travels
  in the envelope (``args_encoder``) and in the stored status (``result_encoder``), so
  a value is always decoded by the encoder that wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from ._errors import ConfigurationError, DecodeError, SerializationError
from ._messages import Envelope

__all__ = [
    "EncoderRegistry",
    "JsonPayloadEncoder",
    "PayloadEncoder",
    "WireFormat",
    "decode_envelope",
    "enc_hook",
    "encode_envelope",
]

WireFormat = Literal["json", "msgpack"]


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
    """Encode an envelope; raise :class:`SerializationError` naming the bad argument."""
    encoder = _json_encoder if wire_format == "json" else _msgpack_encoder
    try:
        return encoder.encode(envelope)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _explain(envelope, encoder, exc) from exc


def decode_envelope(body: bytes) -> Envelope:
    """Decode a body written by :func:`encode_envelope` in either wire format."""
    try:
        if body[:1] == b"{":
            return _json_envelope.decode(body)
        return _msgpack_envelope.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"message body is not a Stem envelope: {exc}") from exc


def _explain(
    envelope: Envelope, encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder, exc: Exception
) -> SerializationError:
    named: list[tuple[str, Any]] = [
        (f"positional argument {i}", v) for i, v in enumerate(envelope.args)
    ]
    named += [(f"argument {k!r}", v) for k, v in envelope.kwargs.items()]
    named += [(f"header {k!r}", v) for k, v in envelope.headers.items()]
    named += [(f"meta {k!r}", v) for k, v in envelope.meta.items()]
    for label, value in named:
        try:
            encoder.encode(value)
        except (TypeError, ValueError, OverflowError) as inner:
            return SerializationError(
                f"{label} of task {envelope.task!r} cannot be serialized "
                f"({type(value).__name__}: {inner}); pass plain data (str, int, float, bool, "
                "None, list, dict, datetime, UUID, dataclass, msgspec.Struct) or register a "
                "payload encoder"
            )
    return SerializationError(f"task {envelope.task!r} cannot be serialized: {exc}")
