"""Django's database sessions, two queries lighter on the login's hot path.

Each login step makes a new session key (``cycle_key``). Django first asks the database
whether a random 32-character key is free, then INSERTs it; the INSERT alone already refuses
a duplicate (``CreateError``, and ``create()`` tries another key), so the question is dropped.
Deleting the old session is one DELETE instead of a SELECT and a DELETE.
"""

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.utils.crypto import get_random_string

VALID_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


class SessionStore(DatabaseSessionStore):
    def _get_new_session_key(self) -> str:
        # 36**32 keys: a collision is never expected, and save(must_create=True) catches one.
        return get_random_string(32, VALID_KEY_CHARS)

    def delete(self, session_key: str | None = None) -> None:
        session_key = session_key or self.session_key
        if session_key is not None:
            self.model.objects.filter(session_key=session_key).delete()
