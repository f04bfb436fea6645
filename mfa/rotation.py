"""Re-encrypt every stored TOTP secret under the primary key (``mfa_keys rotate``).

Rows are read in primary-key order, one batch at a time (constant memory), re-encrypted in
memory, and written back with one compare-and-swap statement per batch: a row gets its new
ciphertext only if it still holds the one that was read. Each batch's write is its own
transaction, so a run killed at any point (SIGKILL included) leaves every row either old (an
old key still decrypts it) or new, and running again finishes the rest; rows already under the
primary are skipped, so a second run changes nothing. An enrolment or a reset that changed a
row between its read and its write is never overwritten: the row is read again at the end.

On PostgreSQL the write is one ``UPDATE ... FROM unnest(...)`` per batch, parsed and planned
once (``executemany`` would send one UPDATE per row), and it is sent from a second thread on
its own connection while this thread encrypts the next batch: the database and the crypto run
at the same time, on different cores, and no row is locked while it is being encrypted (a
login that touches a row being written waits only for that batch's commit). Elsewhere
(SQLite, or a caller's open transaction) each batch is read under lock, re-encrypted and
written in a single transaction.
"""

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from . import crypto
from .models import TOTPDevice

__all__ = ["Tally", "rotate"]

# Users named when secrets cannot be decrypted; the count covers the rest (constant memory).
NAMED_FAILURES = 20

# (pk, ciphertext read, new ciphertext) for each row of a batch that needs rewriting.
Change = tuple[int, str, str]


@dataclass
class Tally:
    """What a rotation did, row by row."""

    seen: int = 0  # rows read by the main pass
    rotated: int = 0  # rows written under the primary key
    current: int = 0  # rows found under the primary key already
    failed: int = 0  # rows no key decrypts for their user
    failed_users: list[int] = field(default_factory=list)  # the first NAMED_FAILURES of them

    def fail(self, user_pk: int) -> None:
        self.failed += 1
        if len(self.failed_users) < NAMED_FAILURES:
            self.failed_users.append(user_pk)


def rotate(
    ring: crypto.KeyRing,
    *,
    batch_size: int = 1000,
    using: str = DEFAULT_DB_ALIAS,
    progress: Callable[[int], None] | None = None,
) -> Tally:
    """Re-encrypt every secret that is not yet under ``ring.primary``; return the tally.

    ``ring`` is one snapshot of the key ring for the whole run, so the primary cannot change
    half-way. ``progress`` is called with the number of rows read and re-encrypted so far after
    each batch (the writer may be up to two batches behind).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tally = Tally()
    connection = connections[using]
    # A second connection only when this one holds no transaction: a caller's open transaction
    # could hold a lock that the writer's UPDATE would wait for while the caller waits for the
    # writer, a deadlock that PostgreSQL cannot see (two connections of one process).
    own_transactions = connection.get_autocommit() and not connection.in_atomic_block
    if connection.vendor == "postgresql" and own_transactions:
        retry = _rotate_overlapped(ring, batch_size, using, tally, progress)
    else:
        retry = _rotate_in_place(ring, batch_size, using, tally, progress)
    # Rows changed by someone else between our read and our write: read them again, this time
    # under lock, so nothing can change them in between.
    for start in range(0, len(retry), batch_size):
        _rotate_batch(ring, using, tally, pk__in=retry[start : start + batch_size])
    return tally


def _rows(using: str, **lookup):
    return (
        TOTPDevice.objects.using(using)
        .filter(**lookup)
        .order_by("pk")
        .values_list("pk", "user_id", "encrypted_secret")
    )


def _prepare(ring: crypto.KeyRing, rows: Iterable[tuple], tally: Tally) -> list[Change]:
    """Re-encrypt a batch in memory; return the rows that need writing."""
    changes = []
    for pk, user_pk, token in rows:
        try:
            new_token = ring.reencrypt(token, user_pk)
        except crypto.UndecryptableSecret:
            tally.fail(user_pk)
            continue
        if new_token is None:
            tally.current += 1
        else:
            changes.append((pk, token, new_token))
    return changes


def _rotate_in_place(ring, batch_size, using, tally, progress) -> list[int]:
    last_pk = 0
    retry: list[int] = []
    while True:
        with transaction.atomic(using=using):
            rows = list(_rows(using, pk__gt=last_pk).select_for_update()[:batch_size])
            if rows:
                retry += _write(connections[using], _prepare(ring, rows, tally), tally)
        if not rows:
            return retry
        last_pk = rows[-1][0]
        tally.seen += len(rows)
        if progress is not None:
            progress(tally.seen)


def _rotate_batch(ring, using, tally, **lookup) -> None:
    with transaction.atomic(using=using):
        rows = list(_rows(using, **lookup).select_for_update())
        _write(connections[using], _prepare(ring, rows, tally), tally)


def _rotate_overlapped(ring, batch_size, using, tally, progress) -> list[int]:
    writer = _Writer(using, tally)
    writer.start()
    last_pk = 0
    try:
        while rows := list(_rows(using, pk__gt=last_pk)[:batch_size]):
            writer.put(_prepare(ring, rows, tally))
            last_pk = rows[-1][0]
            tally.seen += len(rows)
            if progress is not None:
                progress(tally.seen)
    except BaseException:
        writer.stop()  # the batches handed over are still written; the error is ours
        raise
    writer.stop()
    if writer.error is not None:
        raise writer.error
    return writer.retry


class _Writer(threading.Thread):
    """Write the batches handed over, each in its own transaction, on its own connection.

    The queue holds one batch: at most three batches are alive (one being written, one waiting,
    one being prepared), so memory stays that of three batches however many rows there are.
    """

    def __init__(self, using: str, tally: Tally):
        super().__init__(name="mfa-rotate-writer", daemon=True)
        self.using = using
        self.tally = tally
        self.retry: list[int] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue[list[Change] | None] = queue.Queue(maxsize=1)

    def run(self) -> None:
        try:
            while (changes := self._queue.get()) is not None:
                if self.error is not None:
                    continue  # keep draining, so that put() never blocks on a dead writer
                try:
                    with transaction.atomic(using=self.using):
                        self.retry += _write(connections[self.using], changes, self.tally)
                except BaseException as exc:  # handed to the caller's thread by put()/stop()
                    self.error = exc
        finally:
            connections[self.using].close()

    def put(self, changes: list[Change]) -> None:
        if self.error is not None:
            raise self.error
        if changes:
            self._queue.put(changes)

    def stop(self) -> None:
        self._queue.put(None)
        self.join()


def _write(connection: BaseDatabaseWrapper, changes: list[Change], tally: Tally) -> list[int]:
    """Write the new ciphertexts of rows that still hold the old; return the pks that did not.

    Runs inside the batch's transaction. (``tally.rotated`` is only ever added to by one thread
    at a time: the writer while the main pass runs, the main thread after it.)
    """
    if not changes:
        return []
    quote = connection.ops.quote_name
    table = quote(TOTPDevice._meta.db_table)
    pk = quote(TOTPDevice._meta.pk.column)
    column = quote(TOTPDevice._meta.get_field("encrypted_secret").column)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            pks, olds, news = zip(*changes, strict=True)
            cursor.execute(
                f"UPDATE {table} AS d SET {column} = v.new "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, old, new) "
                f"WHERE d.{pk} = v.id AND d.{column} = v.old RETURNING d.{pk}",
                [list(pks), list(olds), list(news)],
            )
            written = {row[0] for row in cursor.fetchall()}
            tally.rotated += len(written)
            return [pk_ for pk_ in pks if pk_ not in written]
        # Elsewhere this runs only with the batch's rows locked (SQLite: the write lock of an
        # IMMEDIATE transaction), so no row can have changed since it was read; the condition
        # is kept all the same, and the count says what was written.
        cursor.executemany(
            f"UPDATE {table} SET {column} = %s WHERE {pk} = %s AND {column} = %s",
            [(new, pk_, old) for pk_, old, new in changes],
        )
        tally.rotated += cursor.rowcount
        return []
