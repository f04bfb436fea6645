"""The two layers that make guessing hopeless: request rates, and the database back-off.

1. Request rates (django-ratelimit counters in the cache): how many attempts per minute one
   account, one username or one address may make. Cheap, shared by every process when the
   cache is Redis, and forgotten when the cache is flushed.
2. Consecutive failures, on the user's ``TOTPDevice`` row: after ``MFA_BACKOFF_AFTER`` of them
   every second-factor attempt, even a correct one, is refused for a back-off that doubles
   with each further failure; at ``MFA_LOCKOUT_AFTER`` only an administrator can unlock. This
   layer lives in the database, so restarts, cache flushes, new sessions and new addresses
   change nothing.

If the cache is unreachable the first layer fails open, loudly in the log: logins keep working
and the second layer still bounds an attacker to a handful of guesses an hour.
"""

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.http import HttpRequest
from django_ratelimit.core import get_usage

from .conf import settings
from .models import TOTPDevice

__all__ = [
    "Failure",
    "Limited",
    "address_key",
    "backoff_seconds",
    "blocked_for",
    "check_rate",
    "client_ip",
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
                    return str(ipaddress.ip_address(candidate))
            except ValueError:
                pass
            logger.warning("ignoring a malformed %s header", header)
    return request.META.get("REMOTE_ADDR", "") or "0.0.0.0"


def address_key(ip: str) -> str:
    """Return the rate-limit key of an address: itself for IPv4, its /64 for IPv6.

    One IPv6 host usually holds a whole /64 and can pick a new address per request.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def check_rate(request: HttpRequest, group: str, value: str, rate: str) -> Limited | None:
    """Count one attempt against ``group``/``value`` and return a refusal if over ``rate``.

    Fails open if the cache cannot be reached: an error is logged and the attempt goes on to
    the database back-off, which does not depend on the cache.
    """
    try:
        usage = get_usage(
            request, group=group, key=lambda _group, _request: value, rate=rate, increment=True
        )
    except Exception:  # redis.ConnectionError, TimeoutError, ...: whatever the backend raises
        logger.exception("rate limit cache unavailable for %s; failing open", group)
        return None
    if usage is None or not usage["should_limit"]:
        return None
    return Limited(retry_after=max(int(usage["time_left"]), 1))


def backoff_seconds(failures: int) -> int:
    """Return the back-off after ``failures`` consecutive failures (0 below the threshold)."""
    over = failures - settings.BACKOFF_AFTER
    if over < 0:
        return 0
    # Doubling from the base, capped; the exponent is capped first so it cannot grow huge.
    return min(settings.BACKOFF_BASE * 2 ** min(over, 32), settings.BACKOFF_MAX)


def blocked_for(device: TOTPDevice, now: datetime) -> Limited | None:
    """Return a refusal if the device is locked or backed off at ``now``."""
    if device.locked_at is not None:
        return Limited(retry_after=settings.BACKOFF_MAX, locked=True)
    if device.blocked_until is not None and device.blocked_until > now:
        return Limited(retry_after=max(int((device.blocked_until - now).total_seconds()), 1))
    return None


@dataclass(frozen=True)
class Failure:
    """A counted failure: the row after it, and whether the account was already refusing."""

    device: TOTPDevice
    # Set when the row was already backed off or locked as this failure was counted: the
    # attempt got past the early check while a concurrent one started the back-off.
    refused: Limited | None


def record_failure(device_pk: int, now: datetime) -> Failure | None:
    """Count one failed attempt on the device, atomically; None if the device is gone.

    The row lock (SELECT ... FOR UPDATE on PostgreSQL; an IMMEDIATE transaction on SQLite)
    serialises concurrent failures, so none is lost and each sees the count it produced.
    """
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().filter(pk=device_pk).first()
        if device is None:
            return None
        refused = blocked_for(device, now)
        device.failure_count += 1
        delay = backoff_seconds(device.failure_count)
        if delay:
            device.blocked_until = now + timedelta(seconds=delay)
        if device.failure_count >= settings.LOCKOUT_AFTER and device.locked_at is None:
            device.locked_at = now
        device.save(update_fields=["failure_count", "blocked_until", "locked_at"])
    return Failure(device, refused)
