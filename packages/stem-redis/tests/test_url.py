"""redis:// and rediss:// URLs: what they name, their options, and errors that keep secrets."""

from __future__ import annotations

import pytest

from stem import ConfigurationError, Stem
from stem._registry import get_adapter
from stem_redis import (
    RedisAdapter,
    RedisBroker,
    RedisLockStore,
    RedisResultBackend,
    RedisRevokeStore,
    mask_url,
    parse_url,
)

pytestmark = pytest.mark.redis


def test_defaults() -> None:
    o = parse_url("redis://")
    assert (o.tls, o.host, o.port, o.db, o.username, o.password) == (
        False,
        "localhost",
        6379,
        0,
        None,
        None,
    )
    assert (o.prefix, o.poll_interval, o.pool_size) == ("stem", 1.0, 32)


def test_credentials_database_and_options() -> None:
    o = parse_url(
        "redis://app%40x:p%3Ass%2Fw@cache.internal:6390/7"
        "?prefix=billing&poll_interval=0.25&socket_timeout=2&connect_timeout=1.5&pool_size=8"
    )
    assert (o.host, o.port, o.db) == ("cache.internal", 6390, 7)
    assert (o.username, o.password) == ("app@x", "p:ss/w")
    assert (o.prefix, o.poll_interval, o.socket_timeout, o.connect_timeout, o.pool_size) == (
        "billing",
        0.25,
        2.0,
        1.5,
        8,
    )


def test_password_only_and_ipv6() -> None:
    o = parse_url("redis://:secret@[::1]:7000")
    assert (o.username, o.password, o.host, o.port) == (None, "secret", "::1", 7000)


def test_tls_options_from_the_url() -> None:
    o = parse_url(
        "rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
        "&ssl_cert_reqs=OPTIONAL&ssl_check_hostname=false"
    )
    assert o.tls is True
    assert (o.ssl_ca_certs, o.ssl_certfile, o.ssl_keyfile) == ("/ca.pem", "/c.pem", "/k.pem")
    assert (o.ssl_cert_reqs, o.ssl_check_hostname) == ("optional", False)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://u:hunter2@h/0", r"not a redis://, rediss:// or redis\+cluster:// URL"),
        ("redis://u:hunter2@h:notaport/0", "malformed URL"),
        ("redis://u:hunter2@h/zero", "the database must be a number"),
        ("redis://u:hunter2@h/0/1", "the database must be a number"),
        ("redis://u:hunter2@h/0?prefix=", "prefix must be"),
        ("redis://u:hunter2@h/0?prefix=a{b}", "prefix must be"),
        ("redis://u:hunter2@h/0?poll_interval=0", "poll_interval must be a number of seconds"),
        ("redis://u:hunter2@h/0?socket_timeout=nan", "socket_timeout must be"),
        ("redis://u:hunter2@h/0?pool_size=0", "pool_size must be"),
        ("redis://u:hunter2@h/0?colour=blue", "unknown option 'colour'"),
        ("redis://u:hunter2@h/0?prefix=a&prefix=b", "given twice"),
        ("redis://u:hunter2@h/0?ssl_ca_certs=/ca.pem", "use rediss://"),
        ("rediss://u:hunter2@h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("rediss://u:hunter2@h/0?ssl_check_hostname=perhaps", "must be true or false"),
        ("redis://u:hunter2@h/0#frag", "fragment"),
    ],
)
def test_bad_urls_say_what_is_wrong_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as info:
        parse_url(url)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value) or "h:notaport" not in str(info.value)


def test_mask_url() -> None:
    assert mask_url("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("redis://:hunter2@h/0?prefix=x") == "redis://:***@h/0?prefix=x"
    assert mask_url("redis://h/0") == "redis://h/0"
    assert "hunter2" not in mask_url("redis://u:hunter2@h:bad/0")


def test_no_repr_shows_the_password() -> None:
    url = "redis://u:hunter2@h:6379/0"
    stores = [
        parse_url(url),
        RedisBroker(url),
        RedisResultBackend(url),
        RedisLockStore(url),
        RedisRevokeStore(url),
    ]
    for store in stores:
        assert "hunter2" not in repr(store)
    assert "u:***@h:6379/0" in repr(stores[1])


def test_the_schemes_are_registered_and_from_url_builds_redis_stores() -> None:
    assert isinstance(get_adapter("redis://h/0"), RedisAdapter)
    assert isinstance(get_adapter("rediss://h/0"), RedisAdapter)
    app = Stem.from_url("redis://localhost:6379/0?prefix=app")  # no I/O until first use
    assert isinstance(app.broker, RedisBroker)
    assert isinstance(app.backend, RedisResultBackend)
    assert isinstance(app.lock_store, RedisLockStore)
    assert isinstance(app.revoke_store, RedisRevokeStore)
    assert app.broker.options.prefix == "app"


def test_from_url_with_a_bad_redis_url_masks_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        Stem.from_url("redis://u:hunter2@h/0?bogus=1")
    assert "hunter2" not in str(info.value)


def test_tls_options_the_url_leaves_out_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEM_TLS_CA_CERTS", "/etc/ca.pem")
    monkeypatch.setenv("STEM_TLS_CERTFILE", "/etc/client.pem")
    monkeypatch.setenv("STEM_TLS_CERT_REQS", "OPTIONAL")
    options = parse_url("rediss://h/0?ssl_certfile=/mine.pem")
    assert options.ssl_ca_certs == "/etc/ca.pem"
    assert options.ssl_certfile == "/mine.pem"  # the URL wins
    assert options.ssl_cert_reqs == "optional"
    assert parse_url("redis://h/0").ssl_ca_certs is None  # plain redis:// ignores them
    monkeypatch.setenv("STEM_TLS_CHECK_HOSTNAME", "perhaps")
    with pytest.raises(ConfigurationError, match="STEM_TLS_CHECK_HOSTNAME"):
        parse_url("rediss://h/0")
