"""Hide a function's local variables from Django's error reports, without importing Django.

``mfa.totp`` and ``mfa.recovery`` hold secrets and fresh recovery codes in their frames.
``mfa.totp`` imports no Django by design (it is pure, like django-otp's ``oath.py``), and
``mfa.recovery`` only Django's settings and HMAC for imported tokens. This decorator
gives their functions what ``django.views.decorators.debug.sensitive_variables()`` gives a
Django module: every local of the function, and of every function it calls, is replaced by
stars in the error page and the error email (``SafeExceptionReporterFilter``, active while
``DEBUG`` is off).

How Django 6.1 finds them (django/views/debug.py, ``get_traceback_frame_variables``): for a
synchronous frame it walks ``f_back`` up to the nearest frame of a function whose code is
named ``sensitive_variables_wrapper`` and that has a local of that same name, and reads that
object's ``sensitive_variables`` attribute. (The ``__code__``-keyed registry is only for
coroutines, which these functions are not.) The wrapper below matches that shape exactly;
``tests/test_review_fixes.py`` builds real reports, so a change in Django fails a test.
"""

from collections.abc import Callable
from functools import wraps

__all__ = ["sensitive"]


def sensitive[**P, R](func: Callable[P, R]) -> Callable[P, R]:
    """Mark every local of ``func`` as sensitive, like Django's ``@sensitive_variables()``."""

    @wraps(func)
    def sensitive_variables_wrapper(*func_args: P.args, **func_kwargs: P.kwargs) -> R:
        # Referring to itself makes the wrapper a local of its own frame (a closure cell),
        # which is how Django's filter tells this frame from any other of the same name.
        sensitive_variables_wrapper.sensitive_variables = "__ALL__"  # type: ignore[attr-defined]
        return func(*func_args, **func_kwargs)

    return sensitive_variables_wrapper
