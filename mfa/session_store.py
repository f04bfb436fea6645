"""A session engine for the two-step login: Django's database sessions, written once a step.

``SESSION_ENGINE = "mfa.session_store"``. Each login step gives the session a new key
(``cycle_key``). Django's database store then asks the database whether the random key is
free, INSERTs the session under it at once, deletes the old row with a SELECT and a DELETE,
and SessionMiddleware UPDATEs the row again at the end of the request, in a transaction of its
own. This store instead:

- cycles the key without writing: at the next ``save()`` one statement moves the stored row
  to the new key with the new data (an UPDATE of the old key's row), or INSERTs it when there
  was no row. Either refuses a key that is taken (``CreateError``), and another is drawn then,
  so the question beforehand is dropped. Until that save the old row keeps the old data, and
  the new data exists nowhere, so nothing can be fixed to the old key;
- skips a save when the data is exactly what it wrote earlier in the same request, so that
  ``mfa.flows`` can write the session inside the step's own transaction (one commit for the
  whole step) and SessionMiddleware's save afterwards has nothing left to do;
- deletes with one DELETE (the row under its old key included, if a cycled key was never
  saved).

The two-step login works with any session engine; others just spend those extra statements.
"""

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.base import CreateError
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import IntegrityError, router, transaction
from django.utils.crypto import get_random_string

__all__ = ["SessionStore"]

VALID_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


class SessionStore(DatabaseSessionStore):
    def __init__(self, session_key: str | None = None):
        super().__init__(session_key)
        # The key is new and nothing is stored under it yet (cycle_key wrote nothing).
        self._unsaved_key = False
        # The key of the stored row that the next save() moves to the new key, if any.
        self._replaces: str | None = None
        # The serialized data this object last wrote, if it wrote any.
        self._written: bytes | None = None

    def _get_new_session_key(self) -> str:
        # 36**32 keys: a collision is never expected, and the write catches one.
        return get_random_string(32, VALID_KEY_CHARS)

    def cycle_key(self) -> None:
        data = self._session
        if not self._unsaved_key:
            # The current key's row (if it has one) is what the new key replaces. A key cycled
            # twice before a save was never stored: the row to replace is still the first one.
            self._replaces = self.session_key
        self._session_key = self._get_new_session_key()
        self._session_cache = data
        self._unsaved_key = True
        self._written = None
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create or self._unsaved_key)
        serialized = self.serializer().dumps(data)
        if not (must_create or self._unsaved_key) and serialized == self._written:
            return  # written earlier in this request, unchanged since
        if self._unsaved_key:
            self._store_under_new_key(data)
        else:
            super().save(must_create=must_create)
        self._written = serialized

    def _store_under_new_key(self, data: dict) -> None:
        for _attempt in range(3):
            try:
                self._write_new_key(data)
            except CreateError:
                # The new key was taken after all (outside a transaction; inside one the
                # error goes up, see _write_new_key): draw another. Three takes in a row are
                # not a collision.
                self._session_key = self._get_new_session_key()
                continue
            self._unsaved_key = False
            self._replaces = None
            return
        raise CreateError("no free session key in three draws")

    def _write_new_key(self, data: dict) -> None:
        # One statement: the old row moves to the new key (the old key is gone with it), or,
        # with no old row, an INSERT. Django's save(must_create=True) wraps its INSERT in a
        # savepoint, so that a taken key can be retried inside a caller's transaction. A
        # freshly cycled key has 165 random bits: it is never taken, so inside the login's
        # transaction the write goes without the savepoint (two round trips fewer). Were it
        # ever taken, that transaction fails as a whole and the login with it, which is the
        # safe way to fail. Outside a transaction, the write is its own and a taken key is
        # retried.
        obj = self.create_model_instance(data)
        using = router.db_for_write(self.model, instance=obj)
        try:
            with transaction.atomic(using=using, savepoint=False):
                moved = self._replaces and (
                    self.model.objects.using(using)
                    .filter(session_key=self._replaces)
                    .update(
                        session_key=obj.session_key,
                        session_data=obj.session_data,
                        expire_date=obj.expire_date,
                    )
                )
                if not moved:  # no old row (a new visitor, or it expired or was ended meanwhile)
                    obj.save(force_insert=True, using=using)
        except IntegrityError:
            if transaction.get_connection(using).in_atomic_block:
                raise  # the caller's transaction cannot go on: it fails as a whole
            raise CreateError from None

    def delete(self, session_key: str | None = None) -> None:
        if session_key is not None:
            keys = [session_key]
        else:
            # This session: under its current key, and under the key it had before a cycle
            # that was not saved yet.
            keys = [key for key in (self.session_key, self._replaces) if key]
            self._replaces = None
        if keys:
            self.model.objects.filter(session_key__in=keys).delete()

    # The async API goes through the same code (Django's own async methods would UPDATE a row
    # that a cycled key has not stored yet, or miss the row under the old key).
    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    async def asave(self, must_create: bool = False) -> None:
        await sync_to_async(self.save)(must_create)

    async def adelete(self, session_key: str | None = None) -> None:
        await sync_to_async(self.delete)(session_key)
