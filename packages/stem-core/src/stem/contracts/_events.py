"""What every EventBus shares: topic patterns, and payloads encoded as JSON.

Each adapter matches topics against patterns with :class:`TopicPattern`, in the
subscriber's process, so a pattern means the same on every adapter (a server's own
matching, Redis's ``PSUBSCRIBE`` say, only narrows what reaches the subscriber).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .._codec import MAX_NESTING, enc_hook, encode_problem, unstorable
from .._errors import ConfigurationError, SerializationError

__all__ = ["TopicPattern", "check_topic", "decode_event", "encode_event"]

_encoder = msgspec.json.Encoder(enc_hook=enc_hook)
_decoder = msgspec.json.Decoder()


def check_topic(topic: object) -> str:
    """A topic: a non-empty string that UTF-8 can carry; else a ConfigurationError."""
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError(f"an event topic must be a non-empty string, not {topic!r}")
    try:
        topic.encode()
    except UnicodeError:
        raise ConfigurationError(
            f"the event topic {topic!r} holds text that is not valid Unicode"
        ) from None
    return str(topic)  # a subclass of str (a TaskRef, say) as the plain string it is


def encode_event(topic: str, payload: Any) -> bytes:
    """``payload`` as the JSON every bus carries; checks ``topic`` too.

    Raises:
        ConfigurationError: the topic is empty or not a string.
        SerializationError: the payload cannot be carried as JSON (an object msgspec does
            not know, NaN or infinity, nesting deeper than JSON decoders accept).
    """
    check_topic(topic)
    try:
        body = _encoder.encode(payload)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SerializationError(
            f"the payload of event {topic!r} cannot be published: {encode_problem(exc)}"
        ) from None
    # NaN and infinity become null, and nesting needs brackets: a body with neither (the
    # common case) needs no closer look.
    if b"null" in body or body.count(b"[") + body.count(b"{") > MAX_NESTING:
        problem = unstorable(payload)
        if problem is not None:
            raise SerializationError(
                f"the payload of event {topic!r} cannot be published: {problem}"
            )
    return body


def decode_event(body: bytes | str) -> Any:
    """A payload as a subscriber receives it: the JSON data, a fresh copy each time."""
    return _decoder.decode(body)


class TopicPattern:
    """A glob matched against whole topics, the same way on every adapter.

    ``*`` matches any run of characters (dots included, or none), ``?`` one character,
    ``[abc]`` one of a set, ``[a-z]`` one of a range, ``[^abc]`` one not in the set;
    ``\\`` makes the next character plain (``orders.\\*`` matches the topic
    ``orders.*`` only). Matching is case-sensitive, character by character.

    Attributes:
        pattern: the glob as given.
        literal_prefix: the plain text every matching topic starts with (up to the first
            wildcard or set), for a server to narrow what it sends.
        exact: True when the pattern has no wildcard and matches ``literal_prefix`` only.

    Raises:
        ConfigurationError: the pattern is empty, not a string, ends in a lone ``\\``, or
            has a set that is never closed or empty.
    """

    __slots__ = ("_regex", "exact", "literal_prefix", "pattern")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigurationError(
                f"an event pattern must be a non-empty string (a glob such as 'orders.*' "
                f"or '*'), not {pattern!r}"
            )
        self.pattern = pattern
        regex, self.literal_prefix, self.exact = _translate(pattern)
        self._regex = re.compile(regex, re.DOTALL)

    def matches(self, topic: str) -> bool:
        if self.exact:
            return topic == self.literal_prefix
        return self._regex.fullmatch(topic) is not None

    def __repr__(self) -> str:
        return f"TopicPattern({self.pattern!r})"


def _translate(pattern: str) -> tuple[str, str, bool]:
    """(regular expression, literal prefix, exact) for a glob."""
    parts: list[str] = []
    literal: list[str] = []
    plain = True  # still in the leading plain text
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise ConfigurationError(
                    f"the event pattern {pattern!r} ends in a lone backslash: write \\\\ "
                    "for a plain backslash"
                )
            parts.append(re.escape(pattern[i + 1]))
            if plain:
                literal.append(pattern[i + 1])
            i += 2
            continue
        if c == "*":
            if not parts or parts[-1] != ".*":  # a run of stars is one star
                parts.append(".*")
            plain = False
            i += 1
        elif c == "?":
            parts.append(".")
            plain = False
            i += 1
        elif c == "[":
            cls, i = _set(pattern, i)
            parts.append(cls)
            plain = False
        else:
            parts.append(re.escape(c))
            if plain:
                literal.append(c)
            i += 1
    return "".join(parts), "".join(literal), plain


def _set(pattern: str, start: int) -> tuple[str, int]:
    """The regular expression of the set opening at ``start``, and the index after it."""
    j, n = start + 1, len(pattern)
    negate = j < n and pattern[j] == "^"
    if negate:
        j += 1
    items: list[str] = []
    while True:
        if j >= n:
            raise ConfigurationError(
                f"the event pattern {pattern!r} opens a set with [ that is never closed: "
                "close it with ], or write \\[ for a plain ["
            )
        c = pattern[j]
        if c == "]":
            break
        if c == "\\":
            if j + 1 >= n:
                j += 1  # a lone backslash at the end: the set is never closed
                continue
            items.append(re.escape(pattern[j + 1]))
            j += 2
            continue
        if j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
            low, high = sorted((c, pattern[j + 2]))
            items.append(f"{re.escape(low)}-{re.escape(high)}")
            j += 3
            continue
        items.append(re.escape(c))
        j += 1
    if not items:
        raise ConfigurationError(
            f"the event pattern {pattern!r} has an empty set []: name at least one "
            "character in it, or write \\[\\] for plain brackets"
        )
    return f"[{'^' if negate else ''}{''.join(items)}]", j + 1
