"""The forms of the security-key pages: they validate and parse, nothing more."""

from django import forms
from django.utils.translation import gettext_lazy as _

from ..forms import TextOnlyForm
from . import ceremonies

__all__ = ["AssertionForm", "KeyAddForm", "KeyNameForm"]

# Refused before it is parsed (see ceremonies.MAX_CREDENTIAL); mfa.forms.ReauthForm too.
MAX_CREDENTIAL = ceremonies.MAX_CREDENTIAL


def _credential_field() -> forms.CharField:
    return forms.CharField(
        widget=forms.HiddenInput,
        max_length=MAX_CREDENTIAL,
        error_messages={
            "required": _("Your browser sent no answer from the security key. Try again."),
            "max_length": _("That is not an answer from a security key."),
        },
    )


class KeyNameForm(TextOnlyForm):
    name = forms.CharField(
        label=_("Name"),
        max_length=64,
        help_text=_("So you can tell your keys apart, e.g. “blue USB key” or “laptop”."),
    )


class KeyAddForm(KeyNameForm):
    """A key's name, and the browser's answer to ``navigator.credentials.create``."""

    credential = _credential_field()

    def clean_credential(self) -> ceremonies.RegistrationCredential:
        try:
            return ceremonies.parse_registration(self.cleaned_data["credential"])
        except ceremonies.Malformed:
            raise forms.ValidationError(
                _("That is not an answer from a security key."), code="malformed"
            ) from None


class AssertionForm(TextOnlyForm):
    """The browser's answer to ``navigator.credentials.get``."""

    credential = _credential_field()

    def clean_credential(self) -> ceremonies.AuthenticationCredential:
        try:
            return ceremonies.parse_assertion(self.cleaned_data["credential"])
        except ceremonies.Malformed:
            raise forms.ValidationError(
                _("That is not an answer from a security key."), code="malformed"
            ) from None
