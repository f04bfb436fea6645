// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";
  // Once per page, even if a site's base links this file as well as the app's pages do: two
  // copies would bind every handler twice (an auto-submitted code would be posted twice).
  if (window.mfaEnhanced) { return; }
  window.mfaEnhanced = true;

  // Tell the server the browser's time zone, so security events show in local time. The IANA
  // name goes in as it is: its characters (letters, digits, "/", "_", "+", "-") are all valid
  // in a cookie, so nothing needs encoding (the server URL-decodes it anyway).
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && /^[A-Za-z0-9_+\/-]+$/.test(zone) &&
        document.cookie.split("; ").indexOf("mfa_tz=" + zone) === -1) {
      document.cookie = "mfa_tz=" + zone + "; path=/; SameSite=Lax; max-age=31536000" +
        (location.protocol === "https:" ? "; Secure" : "");
    }
  } catch (e) { /* no Intl: UTC it is */ }

  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  ready(function () {
    // Focus a field without scrolling the page (the setup page keeps its QR code in view).
    var focus = document.querySelector("[data-focus]");
    if (focus && !document.querySelector("[autofocus]")) { focus.focus({ preventScroll: true }); }

    // Copy buttons: shown only when the clipboard can be used. The label says "Copied" for
    // two seconds, in the page's language (data-done).
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      if (!navigator.clipboard || !window.isSecureContext) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        var source = document.querySelector(button.getAttribute("data-copy"));
        var codes = source.querySelectorAll(".recovery-code");
        var text = codes.length
          ? Array.prototype.map.call(codes, function (el) { return el.textContent.trim(); }).join("\n") + "\n"
          : source.textContent.replace(/\s+/g, "");
        navigator.clipboard.writeText(text).then(function () {
          var label = button.textContent;
          button.textContent = button.getAttribute("data-done") || label;
          setTimeout(function () { button.textContent = label; }, 2000);
        });
      });
    });

    document.querySelectorAll("button.print").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });

    // Submit the code form once six digits are typed (never on a page with errors showing,
    // so a wrong code is not resubmitted in a loop).
    document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
      var input = form.querySelector("input[autocomplete=one-time-code]");
      if (!input || input.getAttribute("aria-invalid") === "true") { return; }
      var sent = false;
      input.addEventListener("input", function () {
        var digits = input.value.replace(/[\s-]/g, "");
        if (!sent && /^[0-9]{6}$/.test(digits)) {
          sent = true;
          if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
        }
      });
    });
  });
})();
