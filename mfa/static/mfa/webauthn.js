// Security keys and passkeys: run the browser's WebAuthn ceremony, then post its answer with
// the form. Only forms marked data-webauthn are touched; without this file (or without
// WebAuthn in the browser) they stay hidden, and the other factors work as before.
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

  function say(form, attribute) {
    var status = form.querySelector("[data-webauthn-status]");
    if (status) { status.textContent = form.getAttribute(attribute) || ""; }
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

  function run(form) {
    var create = form.getAttribute("data-webauthn") === "create";
    var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    say(form, "data-waiting");
    return fetch(form.getAttribute("data-options"), {
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
      form.querySelector("input[name=credential]").value = credentialJSON(credential);
      remembered(form);
      form.submit();
    });
  }

  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  ready(function () {
    if (!window.PublicKeyCredential || !navigator.credentials) { return; }
    document.querySelectorAll("[data-webauthn-needs]").forEach(function (el) { el.hidden = true; });
    document.querySelectorAll("form[data-webauthn]").forEach(function (form) {
      form.hidden = false;
      var busy = false;
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        if (busy) { return; }
        busy = true;
        run(form).catch(function (error) {
          // Cancelled, timed out, or the key is not one of this account's: nothing was sent.
          // Refused for now (429: too many requests, or the account is backed off): say so,
          // rather than blame the key.
          busy = false;
          var limited = error && error.status === 429 && form.hasAttribute("data-limited");
          say(form, limited ? "data-limited" : "data-failed");
        });
      });
    });
  });
})();
