"""A session engine for the two-step login: Django's database sessions, written once a step.

``SESSION_ENGINE = "mfa.session_store"``. Each login step gives the session a new key
(``cycle_key``). Django's database store then asks the database whether the random key is
free, INSERTs the session under it at once, deletes the old row with a SELECT and a DELETE,
and SessionMiddleware UPDATEs the row again at the end of the request, in a transaction of its
own. This store instead:

- cycles the key without writing: the data reaches the database under the new key at the next
  ``save()``, as one INSERT. The INSERT alone refuses a key that is taken (``CreateError``),
  and another is drawn then, so the question beforehand is dropped;
- skips a save when the data is exactly what it wrote earlier in the same request, so that
  ``mfa.flows`` can write the session inside the step's own transaction (one commit for the
  whole step) and SessionMiddleware's save afterwards has nothing left to do;
- deletes with one DELETE.

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
        # The key is new: the next save() must INSERT (cycle_key wrote nothing).
        self._insert_on_save = False
        # The serialized data this object last wrote, if it wrote any.
        self._written: bytes | None = None

    def _get_new_session_key(self) -> str:
        # 36**32 keys: a collision is never expected, and save(must_create=True) catches one.
        return get_random_string(32, VALID_KEY_CHARS)

    def cycle_key(self) -> None:
        data = self._session
        old_key = self.session_key
        self._session_key = self._get_new_session_key()
        self._session_cache = data
        self._insert_on_save = True
        self._written = None
        self.modified = True
        if old_key:
            self.delete(old_key)

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create or self._insert_on_save)
        serialized = self.serializer().dumps(data)
        if not (must_create or self._insert_on_save) and serialized == self._written:
            return  # written earlier in this request, unchanged since
        if self._insert_on_save:
            try:
                self._insert(data)
            except CreateError:
                self._insert_on_save = False
                return self.create()  # the new key was taken after all: draw another
            self._insert_on_save = False
        else:
            super().save(must_create=must_create)
        self._written = serialized

    def _insert(self, data: dict) -> None:
        # Django's save(must_create=True) wraps its INSERT in a savepoint, so that a taken key
        # can be retried inside a caller's transaction. A freshly cycled key has 165 random
        # bits: it is never taken, so inside the login's transaction the INSERT goes without
        # the savepoint (two round trips fewer). Were it ever taken, that transaction fails as
        # a whole and the login with it, which is the safe way to fail. Outside a transaction,
        # the INSERT is its own and a taken key is retried as usual.
        obj = self.create_model_instance(data)
        using = router.db_for_write(self.model, instance=obj)
        try:
            with transaction.atomic(using=using, savepoint=False):
                obj.save(force_insert=True, using=using)
        except IntegrityError:
            raise CreateError from None

    # The async API goes through the same code (Django's own async methods would UPDATE a row
    # that a cycled key has not INSERTed yet).
    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    async def asave(self, must_create: bool = False) -> None:
        await sync_to_async(self.save)(must_create)

    def delete(self, session_key: str | None = None) -> None:
        session_key = session_key or self.session_key
        if session_key is not None:
            self.model.objects.filter(session_key=session_key).delete()
