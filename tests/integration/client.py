"""A small browser for the integration test: a cookie jar, no automatic redirects, forms."""

import http.client
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urljoin, urlsplit

__all__ = ["Browser", "Form", "Page", "forms_of"]


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self, page_path: str) -> None:
        super().__init__()
        self.page_path = page_path
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            # A form without an action posts to the page it is on.
            action = urljoin(self.page_path, attributes.get("action") or self.page_path)
            self.forms.append(Form(action, attributes.get("method", "get").lower()))
        elif tag == "input" and self.forms and attributes.get("name"):
            if attributes.get("type") in ("checkbox", "radio") and "checked" not in attributes:
                return  # as a browser: an unticked box is not sent
            default = "on" if attributes.get("type") in ("checkbox", "radio") else ""
            self.forms[-1].fields[attributes["name"]] = attributes.get("value", default)


def forms_of(html: str, page_path: str) -> list[Form]:
    """Return the forms of ``html`` with their named inputs and their pre-filled values."""
    parser = _FormParser(page_path)
    parser.feed(html)
    return parser.forms


@dataclass
class Page:
    status: int
    path: str
    headers: http.client.HTTPMessage
    text: str

    @property
    def location(self) -> str:
        """The redirect's target, as a path on this site."""
        target = urlsplit(self.headers["Location"] or "")
        return target.path + (f"?{target.query}" if target.query else "")

    def form_with(self, *names: str) -> Form:
        """Return the one form of this page that has every input in ``names``."""
        found = [f for f in forms_of(self.text, self.path) if set(names) <= set(f.fields)]
        assert len(found) == 1, f"{len(found)} forms with {names} on {self.path}"
        return found[0]


class Browser:
    """Speak HTTP/1.1 to 127.0.0.1:``port`` and keep the cookies the site sets."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, data: dict[str, str] | None = None) -> Page:
        headers = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if data is not None:
            body = urlencode(data)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Page(response.status, path, response.headers, text)

    def get(self, path: str) -> Page:
        return self.request("GET", path)

    def submit(self, form: Form, **values: str) -> Page:
        """Post ``form`` (its CSRF token and hidden fields included) with ``values`` filled in."""
        assert form.method == "post", form
        unknown = set(values) - set(form.fields)
        assert not unknown, f"the form at {form.action} has no {unknown}"
        return self.request("POST", form.action, {**form.fields, **values})

    def follow(self, page: Page) -> Page:
        """GET the target of a redirect."""
        assert page.status in (301, 302, 303), (page.status, page.path, page.text[:2000])
        return self.get(page.location)
