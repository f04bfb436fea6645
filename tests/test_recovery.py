"""Recovery codes: format and entropy, hashed storage, one-time use, one Argon2 run per attempt.

Requirements 9 to 12 and 15 of SECURITY-REQUIREMENTS.md: at least 64 bits from the CSPRNG,
stored only as salted Argon2id hashes, each code works once (also under a race), attempts share
the TOTP failure budget, codes are shown once and can be regenerated only after
re-authentication, and every use or regeneration is audited and emailed.
"""

import base64
import math
import re
import threading
from collections import Counter

import pytest
from django.apps import apps
from django.contrib.sessions.backends.db import SessionStore
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone

from mfa import flows, recovery, totp
from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor
from mfa.test import verified_login
from tests.conftest import (
    PASSWORD,
    enrol,
    full_login,
    is_logged_in,
    login_password,
    secret_from_setup_page,
)

CODE_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")
RECOVERY_URL = "/accounts/2fa/recovery/"
REGENERATE_URL = "/accounts/2fa/recovery-codes/"
Kind = SecurityEvent.Kind


# --- helpers --------------------------------------------------------------------------------


def shown_codes(html: str) -> list[str]:
    return re.findall(r'<code class="recovery-code">([^<]*)</code>', html)


def enrol_through_views(client, user) -> tuple[str, list[str], object]:
    """Log ``user`` (no 2FA yet) in, enrol through the setup page; return secret, codes, page."""
    assert login_password(client, user.get_username()).status_code == 302
    page = client.get("/accounts/2fa/setup/")
    assert page.status_code == 200
    secret = secret_from_setup_page(page.content.decode())
    response = client.post(
        "/accounts/2fa/setup/", {"code": totp.code_at(secret, totp.step_of(totp.now()))}
    )
    assert response.status_code == 200
    return secret, shown_codes(response.content.decode()), response


def recovery_login(client, code: str, username: str = "alice"):
    assert login_password(client, username).status_code == 302
    return client.post(RECOVERY_URL, {"code": code})


def codes_left(client) -> tuple[int, bool]:
    """Return the remaining count the security page shows, and whether it warns."""
    page = client.get("/accounts/security/")
    assert page.status_code == 200
    match = re.search(r'<p class="codes-left( warning)?" data-codes-left="(\d+)"', page.text)
    assert match, "the security page shows data-codes-left"
    return int(match.group(2)), bool(match.group(1)) and "running low" in page.text


def make_user(django_user_model, name: str):
    return django_user_model.objects.create_user(name, f"{name}@example.com", PASSWORD)


def all_stored_text() -> list[str]:
    """Every value of every column of every table, and every session decoded."""
    values: list[str] = []
    tables = {model._meta.db_table for model in apps.get_models(include_auto_created=True)}
    with connection.cursor() as cursor:
        for table in sorted(tables):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                values.extend(str(value) for value in row)
    for row in SessionStore.get_model_class().objects.all():
        values.append(repr(SessionStore().decode(row.session_data)))
    return values


def forms_of(code: str) -> list[str]:
    raw = code.replace("-", "")
    verifier = raw[recovery.SELECTOR_LENGTH :]
    return [code, raw, verifier, code.lower(), raw.lower(), verifier.lower()]


# --- enrolment shows the codes once, well formed --------------------------------------------


def test_enrolment_shows_ten_distinct_well_formed_codes_with_download(client, user, clock):
    _secret, codes, response = enrol_through_views(client, user)

    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(CODE_RE.match(code) for code in codes), codes
    assert "no-store" in response["Cache-Control"]
    link = re.search(
        r'<a [^>]*href="(data:text/plain[^"]*)"[^>]*download="([^"]+\.txt)"', response.text
    )
    assert link, "a .txt download link (data: URL with a download attribute)"
    encoded = link.group(1).split("base64,", 1)[1]
    assert base64.b64decode(encoded).decode().split() == codes
    # Stored: ten unused rows for this user.
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=True).count() == 10


def test_alphabet_is_crockford_without_confusable_letters():
    assert len(recovery.ALPHABET) == len(set(recovery.ALPHABET)) == 32
    assert not set("ILOU") & set(recovery.ALPHABET)
    assert set(recovery.ALPHABET) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_each_code_has_at_least_64_bits_from_secrets(monkeypatch):
    import secrets

    calls: list[str] = []
    real_choice = secrets.choice

    def counting_choice(seq):
        calls.append(seq)
        return real_choice(seq)

    monkeypatch.setattr(recovery.secrets, "choice", counting_choice)
    pairs = recovery.generate(10)
    # Every character came from secrets.choice over the 32-letter alphabet.
    assert len(calls) >= 10 * recovery.CODE_LENGTH
    assert all(seq == recovery.ALPHABET for seq in calls)
    for selector, verifier in pairs:
        assert len(selector) == 3
        assert len(verifier) == 13
        assert set(selector + verifier) <= set(recovery.ALPHABET)
    # The verifier alone, the part that must be guessed, carries >= 64 bits.
    assert len(verifier) * math.log2(len(set(recovery.ALPHABET))) >= 64
    assert len({selector for selector, _ in pairs}) == 10


def test_generated_output_is_what_secrets_chose(monkeypatch):
    """The characters come from secrets.choice, not from some other generator."""
    monkeypatch.setattr(recovery.secrets, "choice", lambda seq: seq[-1])
    assert recovery.generate(1) == [("ZZZ", "Z" * 13)]


def test_verifiers_use_the_whole_alphabet():
    counts = Counter("".join(v for _, v in recovery.generate(200)))
    # 2600 draws: each of the 32 letters is expected ~81 times; a missing one means lost entropy.
    assert set(counts) == set(recovery.ALPHABET)


# --- stored only as salted Argon2id hashes --------------------------------------------------


def test_codes_are_stored_only_as_argon2id_hashes(client, user, clock, django_user_model):
    _secret, codes, _response = enrol_through_views(client, user)
    bob = make_user(django_user_model, "bob")
    bob_codes = enrol(bob).codes

    stored = all_stored_text()
    for code in codes + bob_codes:
        for form in forms_of(code):
            assert not any(form in value for value in stored), "a code is stored in the clear"

    hashes = list(RecoveryCode.objects.values_list("code_hash", flat=True))
    assert len(hashes) == 20
    for encoded in hashes:
        assert encoded.startswith("$argon2id$")
        params = dict(
            part.split("=") for part in re.search(r"\$m=[^$]+", encoded).group(0)[1:].split(",")
        )
        assert int(params["m"]) >= 19456
        assert int(params["t"]) >= 2
        assert int(params["p"]) >= 1


def test_same_code_for_two_users_hashes_differently(
    client, user, clock, django_user_model, monkeypatch
):
    fixed = [(f"{n:03d}", "ABCDEFGHJKMNP") for n in range(10)]
    monkeypatch.setattr(recovery, "generate", lambda count: list(fixed[:count]))
    enrol_through_views(client, user)
    bob = make_user(django_user_model, "bob")
    enrol_through_views(Client(), bob)

    alice_hashes = dict(RecoveryCode.objects.filter(user=user).values_list("selector", "code_hash"))
    bob_hashes = dict(RecoveryCode.objects.filter(user=bob).values_list("selector", "code_hash"))
    assert set(alice_hashes) == set(bob_hashes) == {s for s, _ in fixed}
    all_hashes = list(alice_hashes.values()) + list(bob_hashes.values())
    assert len(set(all_hashes)) == 20, "identical codes must give different (salted) hashes"
    salts = {encoded.split("$")[4] for encoded in all_hashes}
    assert len(salts) == 20


# --- logging in with a recovery code --------------------------------------------------------


def test_recovery_code_logs_in_once(client, user_with_totp, clock):
    code = user_with_totp.codes[0]
    response = recovery_login(client, code)
    assert response.status_code == 302
    assert is_logged_in(client)

    client.post("/accounts/logout/")
    assert not is_logged_in(client)
    again = recovery_login(client, code)
    assert again.status_code == 400
    assert "already been used" in again.text
    assert not is_logged_in(client)
    # A used code is a replay, not a guess: it does not spend the failure budget.
    assert user_with_totp.two_factor.failure_count == 0
    assert RecoveryCode.objects.filter(user=user_with_totp.user, used_at__isnull=False).count() == 1


def test_the_recovery_page_speaks_of_recovery_codes(client, user_with_totp, clock):
    old_code = user_with_totp.codes[0]
    user_with_totp.codes = flows._replace_recovery_codes(user_with_totp.user)  # a new list
    response = recovery_login(client, old_code)
    assert response.status_code == 400
    assert "recovery code is not right" in response.text and "clock" not in response.text
    assert recovery_login(client, user_with_totp.codes[0]).status_code == 302
    client.post("/accounts/logout/")
    again = recovery_login(client, user_with_totp.codes[0])
    assert "recovery code has already been used" in again.text
    assert "next one" not in again.text


def _code_with_digits(user) -> str:
    """Give ``user`` a known recovery code containing 0 and 1 (so O, I, L can be typed)."""
    selector, verifier = "0A1", "0123456789ABC"
    # One of the user's ten random selectors is "0A1" about once in 300 runs: make room.
    RecoveryCode.objects.filter(user=user, selector=selector).delete()
    RecoveryCode.objects.create(
        user=user, selector=selector, code_hash=recovery.hash_verifier(selector, verifier)
    )
    return recovery.format_code(selector, verifier)


@pytest.mark.parametrize(
    "typed",
    [
        pytest.param(lambda c: c.lower(), id="lowercase"),
        pytest.param(lambda c: c.replace("-", " "), id="spaces"),
        pytest.param(lambda c: c.replace("-", ""), id="no-separators"),
        pytest.param(lambda c: "  " + c.lower().replace("-", "") + " ", id="padded-lower"),
        pytest.param(lambda c: c.replace("0", "O"), id="O-for-0"),
        pytest.param(lambda c: c.replace("0", "o"), id="o-for-0"),
        pytest.param(lambda c: c.replace("1", "I"), id="I-for-1"),
        pytest.param(lambda c: c.replace("1", "L"), id="L-for-1"),
        pytest.param(lambda c: c.replace("1", "l").lower(), id="l-for-1"),
    ],
)
def test_forgiving_input(client, user_with_totp, clock, typed):
    code = _code_with_digits(user_with_totp.user)
    entered = typed(code)
    assert entered != code
    response = recovery_login(client, entered)
    assert response.status_code == 302
    assert is_logged_in(client)


def test_remaining_count_drops_and_warns_when_low(client, user_with_totp, clock):
    assert recovery_login(client, user_with_totp.codes[0]).status_code == 302
    assert codes_left(client) == (9, False)

    # Use up all but three, then three, two, one left.
    RecoveryCode.objects.filter(user=user_with_totp.user, used_at__isnull=True).exclude(
        selector__in=[c[:3] for c in user_with_totp.codes[-3:]]
    ).update(used_at=timezone.now())
    assert codes_left(client) == (3, False)
    RecoveryCode.objects.filter(selector=user_with_totp.codes[-3][:3]).update(
        used_at=timezone.now()
    )
    assert codes_left(client) == (2, True)
    RecoveryCode.objects.filter(selector=user_with_totp.codes[-2][:3]).update(
        used_at=timezone.now()
    )
    assert codes_left(client) == (1, True)


def test_using_a_recovery_code_is_audited_and_emailed(client, user_with_totp, clock, mailoutbox):
    assert recovery_login(client, user_with_totp.codes[3]).status_code == 302
    event = SecurityEvent.objects.get(user=user_with_totp.user, kind=Kind.RECOVERY_USED)
    assert "9" in event.detail
    notices = [m for m in mailoutbox if "recovery code" in m.subject.lower()]
    assert len(notices) == 1
    assert notices[0].to == ["alice@example.com"]
    assert user_with_totp.codes[3] not in notices[0].body


# --- one-time use under a race --------------------------------------------------------------


@pytest.fixture
def threaded_db(transactional_db):
    """The test database, committed and visible to several threads writing at once.

    On SQLite that needs a file, not the in-memory database (whose shared-cache locks fail at
    once instead of waiting): tests/settings.py makes it one.
    """
    assert not (connection.vendor == "sqlite" and connection.is_in_memory_db())
    yield


def run_together(functions) -> list:
    """Start every function at the same instant, each on its own thread; return the results."""
    barrier = threading.Barrier(len(functions))
    results: list = [None] * len(functions)
    errors: list[BaseException] = []

    def run(index, function):
        try:
            barrier.wait(timeout=30)
            results[index] = function()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a racer hung"
    if errors:
        raise errors[0]
    return results


def test_concurrent_submissions_of_one_code_log_in_exactly_once(
    threaded_db, settings, clock, django_user_model
):
    # Let every racer reach the check: the rate limits would otherwise stop the sixth.
    settings.MFA_CODE_RATE = "1000/m"
    settings.MFA_CODE_IP_RATE = "1000/m"
    settings.MFA_LOGIN_USER_RATE = "1000/m"
    settings.MFA_LOGIN_IP_RATE = "1000/m"
    user = django_user_model.objects.create_user("alice", "alice@example.com", PASSWORD)
    code = enrol(user).codes[0]
    clients = [Client() for _ in range(10)]
    for c in clients:
        assert login_password(c).status_code == 302

    responses = run_together([lambda c=c: c.post(RECOVERY_URL, {"code": code}) for c in clients])

    statuses = [r.status_code for r in responses]
    assert statuses.count(302) == 1, statuses
    assert set(statuses) <= {302, 400, 429}, statuses
    assert sum(is_logged_in(c) for c in clients) == 1
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=False).count() == 1
    assert SecurityEvent.objects.filter(user=user, kind=Kind.RECOVERY_USED).count() == 1
    assert SecurityEvent.objects.filter(user=user, kind=Kind.LOGIN).count() == 1


# --- exactly one Argon2 verification per attempt --------------------------------------------


class CountingHasher:
    """Stands in for ``recovery.HASHER`` and counts its Argon2 verifications."""

    def __init__(self, real):
        self.real = real
        self.verifications = 0

    def verify(self, *args, **kwargs):
        self.verifications += 1
        return self.real.verify(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("left", [10, 1])
@pytest.mark.parametrize("attempt", ["wrong-known-selector", "wrong-unknown-selector", "right"])
def test_one_argon2_verification_per_attempt(
    client, user_with_totp, clock, monkeypatch, left, attempt
):
    codes = user_with_totp.codes
    keep = codes[-left:]
    RecoveryCode.objects.filter(user=user_with_totp.user).exclude(
        selector__in=[c[:3] for c in keep]
    ).update(used_at=timezone.now())
    target = keep[0].replace("-", "")
    if attempt == "right":
        entered = keep[0]
    elif attempt == "wrong-known-selector":
        verifier = "".join(
            recovery.ALPHABET[(recovery.ALPHABET.index(ch) + 1) % 32] for ch in target[3:]
        )
        entered = target[:3] + verifier
    else:
        used = {c[:3] for c in codes}
        selector = next(
            s for s in (a + b + c for a in "XYZ" for b in "XYZ" for c in "XYZ") if s not in used
        )
        entered = selector + target[3:]

    assert login_password(client).status_code == 302
    hasher = CountingHasher(recovery.HASHER)
    # PasswordHasher has __slots__: wrap the module's HASHER instead of patching its method.
    monkeypatch.setattr(recovery, "HASHER", hasher)
    response = client.post(RECOVERY_URL, {"code": entered})

    assert response.status_code == (302 if attempt == "right" else 400)
    assert hasher.verifications == 1


# --- regenerating ---------------------------------------------------------------------------


def _old_code_still_works(code: str, user) -> bool:
    parsed = recovery.parse(code)
    row = RecoveryCode.objects.filter(
        user=user, selector=parsed.selector, used_at__isnull=True
    ).first()
    return row is not None and recovery.verify(row.code_hash, parsed)


def test_regenerate_refuses_wrong_password_and_keeps_old_codes(client, user_with_totp, clock):
    assert full_login(client, user_with_totp).status_code == 302
    clock.shift(30)
    response = client.post(
        REGENERATE_URL, {"password": "not the password", "code": user_with_totp.code()}
    )
    assert response.status_code == 400
    assert 'role="alert"' in response.text
    assert not shown_codes(response.text)
    assert all(_old_code_still_works(c, user_with_totp.user) for c in user_with_totp.codes)
    assert not SecurityEvent.objects.filter(kind=Kind.CODES_REGENERATED).exists()

    other = Client()
    assert recovery_login(other, user_with_totp.codes[0]).status_code == 302


def test_regenerate_refuses_wrong_code(client, user_with_totp, clock):
    assert full_login(client, user_with_totp).status_code == 302
    clock.shift(30)
    wrong = f"{(int(user_with_totp.code()) + 1) % 1_000_000:06d}"
    response = client.post(REGENERATE_URL, {"password": PASSWORD, "code": wrong})
    assert response.status_code == 400
    assert not shown_codes(response.text)
    bad_recovery = "ZZZZ-ZZZZ-ZZZZ-ZZZZ"
    response = client.post(REGENERATE_URL, {"password": PASSWORD, "code": bad_recovery})
    assert response.status_code == 400
    assert all(_old_code_still_works(c, user_with_totp.user) for c in user_with_totp.codes)


def test_regenerate_with_the_code_just_used_says_it_was_used(client, user_with_totp, clock):
    code = user_with_totp.code()
    assert full_login(client, user_with_totp).status_code == 302  # spends this step's code
    response = client.post(REGENERATE_URL, {"password": PASSWORD, "code": code})
    assert response.status_code == 400
    assert "already been used" in response.text
    assert "password or the code is not right" not in response.text
    assert all(_old_code_still_works(c, user_with_totp.user) for c in user_with_totp.codes)


@pytest.mark.parametrize("proof", ["totp", "recovery"])
def test_regenerate_replaces_every_code(client, user_with_totp, clock, mailoutbox, proof):
    verified_login(client, user_with_totp.user)
    code = user_with_totp.code() if proof == "totp" else user_with_totp.codes[0]
    mailoutbox.clear()

    response = client.post(REGENERATE_URL, {"password": PASSWORD, "code": code})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    new_codes = shown_codes(response.text)
    assert len(new_codes) == 10 and len(set(new_codes)) == 10
    assert all(CODE_RE.match(c) for c in new_codes)
    assert not set(new_codes) & set(user_with_totp.codes)
    assert not any(_old_code_still_works(c, user_with_totp.user) for c in user_with_totp.codes)
    assert all(_old_code_still_works(c, user_with_totp.user) for c in new_codes)
    assert (
        SecurityEvent.objects.filter(user=user_with_totp.user, kind=Kind.CODES_REGENERATED).count()
        == 1
    )
    assert [m.to for m in mailoutbox if "recovery codes" in m.subject.lower()] == [
        ["alice@example.com"]
    ]

    # Shown once: no later page repeats them.
    for url in ["/accounts/security/", "/", REGENERATE_URL, "/accounts/2fa/disable/"]:
        page = client.get(url)
        assert page.status_code == 200, url
        for c in new_codes:
            assert c not in page.text and c.replace("-", "") not in page.text, url

    # End to end: an old code is refused, a new one logs in.
    other = Client()
    assert recovery_login(other, user_with_totp.codes[5]).status_code == 400
    third = Client()
    assert recovery_login(third, new_codes[0]).status_code == 302


# --- disable, shared budget, bad input ------------------------------------------------------


def test_disable_accepts_a_recovery_code(client, user_with_totp, clock):
    verified_login(client, user_with_totp.user)
    response = client.post(
        "/accounts/2fa/disable/", {"password": PASSWORD, "code": user_with_totp.codes[2].lower()}
    )
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=user_with_totp.user).exists()
    assert not RecoveryCode.objects.filter(user=user_with_totp.user).exists()
    assert SecurityEvent.objects.filter(user=user_with_totp.user, kind=Kind.DISABLED).exists()


def _wrong_recovery_code(n: int) -> str:
    return recovery.format_code("ZZ" + recovery.ALPHABET[n], "Y" * 13)


@pytest.mark.parametrize("wrong", [4, 5])
def test_recovery_failures_count_against_the_totp_budget(client, user_with_totp, clock, wrong):
    assert login_password(client).status_code == 302
    for n in range(wrong):
        assert client.post(RECOVERY_URL, {"code": _wrong_recovery_code(n)}).status_code == 400
    # Drop the per-minute rate-limit counters: only the database budget remains.
    cache.clear()
    response = client.post("/accounts/2fa/verify/", {"code": user_with_totp.code()})
    if wrong < 5:
        assert response.status_code == 302
        assert is_logged_in(client)
    else:
        assert response.status_code == 429
        assert int(response["Retry-After"]) > 0
        assert not is_logged_in(client)


@pytest.mark.parametrize(
    "entered",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("A" * 1_000_000, id="1MB"),
        pytest.param("ÄÖÜ0-ÄÖÜ0-ÄÖÜ0-ÄÖÜ0", id="umlauts"),
        pytest.param("\U0001f600" * 16, id="emoji"),
        pytest.param("٠١٢٣-٤٥٦٧-٨٩٠١-٢٣٤٥", id="arabic-digits"),
        pytest.param("ABCD-EFGH-JKMN-PQR", id="15-chars"),
        pytest.param("ABCD-EFGH-JKMN-PQRST", id="17-chars"),
        pytest.param("ABCD-EFGH-JKMN-PQR\x00", id="nul"),
        pytest.param("123456", id="totp-shaped"),
    ],
)
def test_bad_input_is_a_form_error(client, user_with_totp, clock, entered):
    assert login_password(client).status_code == 302
    response = client.post(RECOVERY_URL, {"code": entered})
    assert response.status_code == 400
    assert 'id="code-errors"' in response.text
    assert not is_logged_in(client)
    # Not a guess: nothing was counted against the account.
    assert TwoFactor.objects.get(user=user_with_totp.user).failure_count == 0


def test_recovery_page_without_pending_login_redirects(client, user_with_totp, clock):
    response = client.post(RECOVERY_URL, {"code": user_with_totp.codes[0]})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not is_logged_in(client)
    assert RecoveryCode.objects.filter(used_at__isnull=False).count() == 0
