"""The two layers that make guessing hopeless: request rates, and the database back-off.

1. Request rates (counters in the cache, in fixed windows): how many attempts per minute one
   account, one username or one address may make. Cheap, shared by every process when the
   cache is Redis, and forgotten when the cache is flushed. On Redis every counter of a
   request is counted in one round trip; any other cache is counted by django-ratelimit.
2. Consecutive failures, on the user's ``TwoFactor`` row (every factor counts there): after
   ``MFA_BACKOFF_AFTER`` of them every second-factor attempt, even a correct one, is refused
   for a back-off that doubles with each further failure; at ``MFA_LOCKOUT_AFTER`` only an
   administrator can unlock. This layer lives in the database, so restarts, cache flushes, new
   sessions and new addresses change nothing.

If the cache is unreachable the first layer fails open, loudly in the log: logins keep working
and the second layer still bounds an attacker to a handful of guesses an hour.
"""

import ipaddress
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings as django_settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.db import transaction
from django.http import HttpRequest
from django.utils.crypto import salted_hmac
from django_ratelimit.core import get_usage

from .conf import settings
from .models import TwoFactor

__all__ = [
    "Check",
    "Failure",
    "Limited",
    "address_key",
    "backoff_seconds",
    "blocked_for",
    "check_rates",
    "client_ip",
    "parse_rate",
    "record_failure",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limited:
    """A refusal, with the seconds after which trying again makes sense."""

    retry_after: int
    locked: bool = False


def client_ip(request: HttpRequest) -> str:
    """Return the client's address: REMOTE_ADDR, or the trusted proxy's header when set.

    Only the entry that the operator's own proxies appended is trusted: with N proxies, the
    Nth address from the right. Anything further left came from the client and is forgeable.
    """
    header = settings.TRUSTED_PROXY_HEADER
    if header:
        meta_key = "HTTP_" + header.upper().replace("-", "_")
        hops = [part.strip() for part in request.META.get(meta_key, "").split(",") if part.strip()]
        count = max(settings.TRUSTED_PROXY_COUNT, 1)
        if len(hops) >= count:
            candidate = hops[-count]
            try:
                # No scoped addresses (fe80::1%eth0): they fit no database column.
                if "%" not in candidate:
                    return str(_unmapped(ipaddress.ip_address(candidate)))
            except ValueError:
                pass
            logger.warning("ignoring a malformed %s header", header)
    remote = request.META.get("REMOTE_ADDR", "") or "0.0.0.0"
    try:
        return str(_unmapped(ipaddress.ip_address(remote)))
    except ValueError:
        return remote


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    # A server bound to [::] sees IPv4 clients as ::ffff:a.b.c.d. Kept so, every IPv4 client
    # would share one /64 below (one client could block the login for all of them), and the
    # audit trail would show a spelling nobody recognises.
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 client's address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_key(ip: str) -> str:
    """Return the rate-limit key of an address: itself for IPv4, its /64 for IPv6.

    One IPv6 host usually holds a whole /64 and can pick a new address per request. IPv6
    addresses that stand for one IPv4 address are keyed as that address: IPv4-mapped
    (::ffff:0:0/96) and NAT64 (64:ff9b::/96), where one /64 holds every IPv4 client, and 6to4
    (2002::/16), where one IPv4 host holds a /48, that is 65536 /64s.
    """
    try:
        address = _unmapped(ipaddress.ip_address(ip))
    except ValueError:
        return ip
    if address.version == 6:
        if address in _NAT64:
            return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            return str(address.sixtofour)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


# (group, key, rate): one counter, e.g. ("mfa.code.user", "42", "5/m").
Check = tuple[str, str, str]

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """Return (limit, period in seconds) of a rate such as '5/m' or '100/15m' (checked by E006)."""
    count, per = rate.split("/")
    return int(count), int(per[:-1] or 1) * _PERIODS[per[-1]]


def check_rates(request: HttpRequest, *checks: Check) -> Limited | None:
    """Count one attempt against each counter; return the first refusal, if any is over.

    Every counter is counted, even after one refuses, so that an attacker who trips the
    per-address limit still spends the per-account budget. Fails open if the cache cannot be
    reached: an error is logged and the attempt goes on to the database back-off, which does not
    depend on the cache.
    """
    if not getattr(django_settings, "RATELIMIT_ENABLE", True):
        return None
    # A form can smuggle a lone surrogate into a username (a multipart body in UTF-7): such a
    # value is counted like any other, under its escaped spelling, instead of failing to encode.
    checks = tuple(
        (group, value.encode("utf-8", "backslashreplace").decode("utf-8"), rate)
        for group, value, rate in checks
    )
    cache = caches[getattr(django_settings, "RATELIMIT_USE_CACHE", "default")]
    try:
        if isinstance(cache, RedisCache):
            usages = _count_in_redis(cache, checks)
        else:
            usages = [_count_with_ratelimit(request, *check) for check in checks]
    except Exception:  # redis.ConnectionError, TimeoutError, ...: whatever the backend raises
        groups = ", ".join(group for group, _value, _rate in checks)
        logger.exception("rate limit cache unavailable for %s; failing open", groups)
        return None
    for over, time_left in usages:
        if over:
            return Limited(retry_after=max(time_left, 1))
    return None


def _count_with_ratelimit(request: HttpRequest, group: str, value: str, rate: str):
    usage = get_usage(
        request, group=group, key=lambda _group, _request: value, rate=rate, increment=True
    )
    if usage is None:
        return False, 0
    return usage["should_limit"], int(usage["time_left"])


def _count_in_redis(cache: RedisCache, checks: tuple[Check, ...]) -> list[tuple[bool, int]]:
    # All the counters of a request in one pipelined round trip on one client: per counter,
    # SET NX with the window's expiry, then INCR. Through Django's cache API django-ratelimit
    # makes three round trips per counter (add; incr = EXISTS + INCRBY), each on a new client,
    # about 1 ms of a login step. The windows are fixed, as django-ratelimit's: a burst across
    # a boundary can reach twice the rate, and the database back-off is the real bound.
    now = int(time.time())
    pipe = _redis_client(cache).pipeline(transaction=False)
    windows = []
    for group, value, rate in checks:
        limit, period = parse_rate(rate)
        end = now - now % period + period
        key = cache.make_and_validate_key(f"mfa.rate:{group}:{period}:{end}:{_digest(value)}")
        pipe.set(key, 0, ex=end - now + 1, nx=True)
        pipe.incr(key)
        windows.append((limit, end))
    counts = pipe.execute()[1::2]
    return [(count > limit, end - now) for count, (limit, end) in zip(counts, windows, strict=True)]


# One redis-py client per Django cache client, made on first use. Django's get_client() builds
# a new one on every call (~0.15 ms here), though all of them share the cache's connection
# pool, which is where the connections are.
_redis_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _redis_client(cache: RedisCache):
    # Django's RedisCache keeps its redis-py client factory in ``_cache`` (no public accessor).
    factory = cache._cache
    client = _redis_clients.get(factory)
    if client is None:
        client = _redis_clients[factory] = factory.get_client(write=True)
    return client


def _digest(value: str) -> str:
    # Keyed, so that usernames and addresses cannot be read back from the cache's keys (an
    # unkeyed hash of an IPv4 address falls to trying all 2**32 of them).
    return salted_hmac("mfa.rate-limit", value, algorithm="sha256").hexdigest()[:32]


def backoff_seconds(failures: int) -> int:
    """Return the back-off after ``failures`` consecutive failures (0 below the threshold)."""
    over = failures - settings.BACKOFF_AFTER
    if over < 0:
        return 0
    # Doubling from the base, capped; the exponent is capped first so it cannot grow huge.
    return min(settings.BACKOFF_BASE * 2 ** min(over, 32), settings.BACKOFF_MAX)


def blocked_for(row: TwoFactor, now: datetime) -> Limited | None:
    """Return a refusal if the user's second factor is locked or backed off at ``now``."""
    if row.locked_at is not None:
        return Limited(retry_after=settings.BACKOFF_MAX, locked=True)
    if row.blocked_until is not None and row.blocked_until > now:
        return Limited(retry_after=max(int((row.blocked_until - now).total_seconds()), 1))
    return None


@dataclass(frozen=True)
class Failure:
    """A counted failure: the row after it, and whether the account was already refusing."""

    row: TwoFactor
    # Set when the row was already backed off or locked as this failure was counted: the
    # attempt got past the early check while a concurrent one started the back-off.
    refused: Limited | None


def record_failure(row_pk: int, now: datetime) -> Failure | None:
    """Count one failed attempt on the TwoFactor row, atomically; None if the row is gone.

    The row lock (SELECT ... FOR UPDATE on PostgreSQL; an IMMEDIATE transaction on SQLite)
    serialises concurrent failures, so none is lost and each sees the count it produced.
    """
    with transaction.atomic():
        row = TwoFactor.objects.select_for_update().filter(pk=row_pk).first()
        if row is None:
            return None
        refused = blocked_for(row, now)
        row.failure_count += 1
        delay = backoff_seconds(row.failure_count)
        if delay:
            row.blocked_until = now + timedelta(seconds=delay)
        if row.failure_count >= settings.LOCKOUT_AFTER and row.locked_at is None:
            row.locked_at = now
        row.save(update_fields=["failure_count", "blocked_until", "locked_at"])
    return Failure(row, refused)
