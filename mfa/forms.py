"""Forms only validate and normalise input; flows.py decides what it means."""

import re
import unicodedata

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.utils.datastructures import MultiValueDict
from django.utils.translation import gettext_lazy as _

from . import recovery, totp
from .webauthn import ceremonies

__all__ = [
    "CodeForm",
    "LoginForm",
    "PasswordForm",
    "ReauthForm",
    "RecoveryCodeForm",
    "TextOnlyForm",
    "normalize_username",
    "username_key",
]

# Longer than any code with generous spacing, far shorter than an abuse.
MAX_INPUT = 64


class TextOnlyForm(forms.Form):
    """A form that refuses lone surrogates, which no real username, password or code contains.

    A multipart body that declares a charset such as UTF-7 can carry them. The database, the
    password hasher and even the page that shows the form again cannot encode them, so the
    submitted data is cleaned of them first (each becomes U+FFFD) and the form is refused.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._had_surrogates = False
        if isinstance(self.data, MultiValueDict):
            data = self.data.copy()
            for key, values in self.data.lists():
                fixed = [_without_surrogates(value) for value in values]
                if fixed != values:
                    data.setlist(key, fixed)
                    self._had_surrogates = True
            if self._had_surrogates:
                self.data = data

    def clean(self):
        if self._had_surrogates:
            raise forms.ValidationError(_("That is not valid text."), code="invalid")
        return super().clean()


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value):
    if not isinstance(value, str) or value.isascii():  # C speed, even for a megabyte of input
        return value
    return _SURROGATE.sub("\ufffd", value)


def normalize_username(value: str, max_length: int | None = None) -> str:
    """Return ``value`` as the login authenticates it, or raise ValidationError if too long.

    The one derivation of a username, shared by the login form (what authenticate() gets) and
    the per-username password budget (``username_key``), so that the two cannot drift apart:
    any spelling that signs in as a user counts against that user's one budget. Stripped like
    Django's UsernameField, then normalised by the user model (NFKC for Django's own). Too long
    for ``max_length`` is refused before any normalisation: no such account can exist, and
    NFKC of a megabyte costs time.
    """
    value = value.strip()
    if max_length is not None and len(value) > max_length:
        raise forms.ValidationError(_("That username is too long."), code="max_length")
    normalize = getattr(get_user_model(), "normalize_username", None)
    value = normalize(value) if normalize else unicodedata.normalize("NFKC", value)
    if max_length is not None and len(value) > max_length:  # NFKC can lengthen ("ﬀ" -> "ff")
        raise forms.ValidationError(_("That username is too long."), code="max_length")
    return value


def username_key(username: str) -> str:
    """Return the key of the per-username password budget of ``username``.

    Case folded on top of ``normalize_username``: a backend that matches names without regard
    to case signs "ALICE" in as alice, and folding can only merge budgets (the safe direction),
    never split one. Used for a user's own name too (re-authentication shares the budget).
    Upper-cased first: a case-insensitive lookup compares upper cases (Django's ``iexact`` is
    UPPER() on PostgreSQL), and "alıce" (dotless ı) upper-cases to ALICE but casefolds apart.
    """
    return normalize_username(username).upper().casefold()


class LoginForm(TextOnlyForm, AuthenticationForm):
    """Django's login form (authenticate() runs only for text it can encode).

    The username is refused beyond the user model's max_length (Django's form only sets the
    widget's maxlength) and normalised by ``normalize_username``.
    """

    def clean_username(self) -> str:
        return normalize_username(self.cleaned_data["username"], self.fields["username"].max_length)

    def rate_key(self) -> str | None:
        """Return the username's budget key, or None when the form refuses the username."""
        field = self.fields["username"]
        raw = field.widget.value_from_datadict(self.data, self.files, self.add_prefix("username"))
        try:
            # The same steps as the form's own cleaning: the field's, then clean_username's.
            return username_key(normalize_username(field.clean(raw), field.max_length))
        except forms.ValidationError:
            return None


def _code_widget(**attrs) -> forms.TextInput:
    return forms.TextInput(
        attrs={
            "autocomplete": "one-time-code",
            "autocapitalize": "off",
            "spellcheck": "false",
            "autofocus": True,
            "aria-describedby": "code-help code-errors",
            **attrs,
        }
    )


class CodeForm(TextOnlyForm):
    """A 6-digit TOTP code; spaces and dashes are forgiven."""

    code = forms.CharField(
        label=_("6-digit code"),
        max_length=MAX_INPUT,
        strip=True,
        widget=_code_widget(inputmode="numeric", pattern=r"[0-9\s\-]*", maxlength=MAX_INPUT),
        error_messages={
            "required": _("Enter the 6-digit code from your authenticator app."),
            "max_length": _("That is not a 6-digit code."),
        },
    )

    def clean_code(self) -> str:
        code = totp.normalize_code(self.cleaned_data["code"])
        if code is None:
            raise forms.ValidationError(
                _("Enter the 6 digits shown in your authenticator app."), code="format"
            )
        return code


class RecoveryCodeForm(TextOnlyForm):
    """A recovery code; case, spaces and dashes are forgiven.

    ``imported``: whether the user holds codes imported from django-otp (8 characters).
    """

    def __init__(self, *args, imported: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.imported = imported

    code = forms.CharField(
        label=_("Recovery code"),
        max_length=MAX_INPUT,
        strip=True,
        widget=_code_widget(maxlength=MAX_INPUT),
        error_messages={
            "required": _("Enter one of your recovery codes."),
            "max_length": _("That is not a recovery code."),
        },
    )

    def clean_code(self) -> recovery.ParsedCode:
        parsed = recovery.parse(self.cleaned_data["code"], imported=self.imported)
        if parsed is None:
            raise forms.ValidationError(
                _("A recovery code has 16 letters and digits, like ABCD-EFGH-JKMN-PQRS."),
                code="format",
            )
        return parsed


class PasswordForm(TextOnlyForm):
    """The password again, before a session that is not fresh may add a second factor."""

    password = forms.CharField(
        label=_("Your password"),
        max_length=4096,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )


# A 6-digit code from a user with security keys only (never checked, never counted).
NO_APP = _("This account has no authenticator app: use your security key or a recovery code.")


class ReauthForm(PasswordForm):
    """The password again, and either a current TOTP code or an unused recovery code, or a
    security key's answer (``credential``, filled in by mfa/webauthn.js): exactly one of them.

    ``imported``: whether the user holds codes imported from django-otp (8 characters).
    ``has_app``: whether the user has an authenticator app. Without one, a 6-digit code is a
    form error whatever the password: refusing it only after a right password would tell a
    session thief that the password they tried is right.
    """

    def __init__(self, *args, imported: bool = True, has_app: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.imported = imported
        self.has_app = has_app

    code = forms.CharField(
        label=_("Code from your app, or a recovery code"),
        max_length=MAX_INPUT,
        strip=True,
        # Required unless a key answered instead (``clean``), which the field cannot know.
        required=False,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autocapitalize": "off",
                "spellcheck": "false",
                "aria-describedby": "code-help code-errors",
                "maxlength": MAX_INPUT,
            }
        ),
        error_messages={"max_length": _("That is neither a 6-digit code nor a recovery code.")},
    )
    credential = forms.CharField(
        widget=forms.HiddenInput,
        required=False,
        max_length=ceremonies.MAX_CREDENTIAL,
        error_messages={"max_length": _("That is not an answer from a security key.")},
    )

    def clean_code(self) -> str:
        raw = self.cleaned_data["code"]
        if raw and not self.has_app and totp.normalize_code(raw) is not None:
            raise forms.ValidationError(NO_APP, code="no_app")
        if raw and totp.normalize_code(raw) is None and recovery.parse(raw, self.imported) is None:
            raise forms.ValidationError(
                _("Enter the 6-digit code from your app, or one of your recovery codes."),
                code="format",
            )
        return raw

    def clean_credential(self) -> ceremonies.AuthenticationCredential | None:
        raw = self.cleaned_data["credential"]
        if not raw:
            return None
        try:
            return ceremonies.parse_assertion(raw)
        except ceremonies.Malformed:
            raise forms.ValidationError(
                _("That is not an answer from a security key."), code="malformed"
            ) from None

    def clean(self):
        cleaned = super().clean()
        # What the browser sent counts here, not whether it parsed: a malformed answer has its
        # own error above. Blank is not sent (the fields strip it too).
        code = str(self.data.get(self.add_prefix("code"), "")).strip()
        credential = str(self.data.get(self.add_prefix("credential"), "")).strip()
        if code and credential:
            # Which one did the user mean? Neither is checked, nor counted as a guess.
            raise forms.ValidationError(
                _("Enter a code or use your security key, not both."), code="both"
            )
        if not code and not credential:
            self.add_error(
                "code",
                forms.ValidationError(
                    _("Enter the 6-digit code from your app, or one of your recovery codes."),
                    code="required",
                ),
            )
        return cleaned
