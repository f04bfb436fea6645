// Security keys and passkeys: run the browser's WebAuthn ceremony, then post its answer with
// the form. Only elements marked data-webauthn are touched: a form (its submit runs the
// ceremony), or a button inside an ordinary form (its click does, and the form then posts
// the answer with its other fields, e.g. the password of a re-authentication). Without this
// file (or without WebAuthn in the browser) they stay hidden, and the other factors work as
// before.
//
// Attributes of the marked element: data-webauthn="create" or "get", data-options (the URL
// the options are POSTed to), data-waiting and data-failed (the status texts); a button's
// data-webauthn-instead-of names the form's field the answer replaces (emptied before the
// post), and data-missing is said when another required field of the form is still empty.
(function () {
  "use strict";
  if (window.mfaWebAuthn) { return; }
  window.mfaWebAuthn = true;

  function decode(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function encode(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (c) { return { type: c.type, id: decode(c.id), transports: c.transports }; });
  }

  // The server's JSON options (py_webauthn's options_to_json) as the browser's API wants them.
  function creationOptions(o) {
    o.challenge = decode(o.challenge);
    o.user.id = decode(o.user.id);
    o.excludeCredentials = descriptors(o.excludeCredentials);
    return { publicKey: o };
  }

  function requestOptions(o) {
    o.challenge = decode(o.challenge);
    o.allowCredentials = descriptors(o.allowCredentials);
    return { publicKey: o };
  }

  // The browser's answer as the JSON that py_webauthn parses (WebAuthn Level 3's toJSON).
  function credentialJSON(credential) {
    var r = credential.response;
    var response = { clientDataJSON: encode(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = encode(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = encode(r.authenticatorData);
      response.signature = encode(r.signature);
      if (r.userHandle) { response.userHandle = encode(r.userHandle); }
    }
    return JSON.stringify({
      id: credential.id,
      rawId: encode(credential.rawId),
      type: credential.type,
      response: response,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {}
    });
  }

  // The status line of the form, with the trigger's text for the moment.
  function say(form, trigger, attribute) {
    var status = form.querySelector("[data-webauthn-status]");
    if (status) { status.textContent = trigger.getAttribute(attribute) || ""; }
  }

  // The page's one "don't ask again" box lives in the code form (it must work without this
  // file): a key form that names it (data-remember) posts its state as its own field.
  function remembered(form) {
    var selector = form.getAttribute("data-remember");
    var field = form.querySelector("input[name=remember]");
    if (!selector || !field) { return; }
    var box = document.querySelector(selector);
    field.value = box && box.checked ? box.value : "";
  }

  // ``trigger``: the element that carries the ceremony's attributes (the form, or a button).
  function run(form, trigger) {
    var create = trigger.getAttribute("data-webauthn") === "create";
    var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    say(form, trigger, "data-waiting");
    return fetch(trigger.getAttribute("data-options"), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Accept": "application/json" }
    }).then(function (response) {
      if (!response.ok) {
        var error = new Error("options " + response.status);
        error.status = response.status;
        throw error;
      }
      return response.json();
    }).then(function (options) {
      return create
        ? navigator.credentials.create(creationOptions(options))
        : navigator.credentials.get(requestOptions(options));
    }).then(function (credential) {
      var instead = trigger.getAttribute("data-webauthn-instead-of");
      if (instead && form.elements[instead]) { form.elements[instead].value = ""; }
      form.querySelector("input[name=credential]").value = credentialJSON(credential);
      remembered(form);
      form.submit();
    });
  }

  // A required field of the form, other than the one the answer replaces, left empty: the
  // server would refuse the post, and the key would have been touched for nothing.
  function missing(form, trigger) {
    var instead = trigger.getAttribute("data-webauthn-instead-of");
    var fields = form.querySelectorAll("input[required]");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].name !== instead && !fields[i].value) { return fields[i]; }
    }
    return null;
  }

  // Run the ceremony of ``trigger`` in ``form`` once at a time.
  function guard(form, trigger) {
    var busy = false;
    return function (event) {
      event.preventDefault();
      if (busy) { return; }
      var empty = trigger === form ? null : missing(form, trigger);
      if (empty) {
        say(form, trigger, "data-missing");
        empty.focus();
        return;
      }
      busy = true;
      run(form, trigger).catch(function (error) {
        // Cancelled, timed out, or the key is not one of this account's: nothing was sent.
        // Refused for now (429: too many requests, or the account is backed off): say so,
        // rather than blame the key.
        busy = false;
        var limited = error && error.status === 429 && trigger.hasAttribute("data-limited");
        say(form, trigger, limited ? "data-limited" : "data-failed");
      });
    };
  }

  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  ready(function () {
    if (!window.PublicKeyCredential || !navigator.credentials) { return; }
    document.querySelectorAll("[data-webauthn-needs]").forEach(function (el) { el.hidden = true; });
    document.querySelectorAll("form[data-webauthn]").forEach(function (form) {
      form.hidden = false;
      form.addEventListener("submit", guard(form, form));
    });
    // A key's way inside an ordinary form: the form's own submit stays as it is (a code).
    document.querySelectorAll("button[data-webauthn]").forEach(function (button) {
      var form = button.form;
      if (!form) { return; }
      var shown = button.closest("[data-webauthn-block]") || button;
      shown.hidden = false;
      button.addEventListener("click", guard(form, button));
    });
  });
})();
