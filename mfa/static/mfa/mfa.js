// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";

  // Tell the server the browser's time zone, so security events show in local time.
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && document.cookie.indexOf("mfa_tz=" + zone) === -1) {
      document.cookie = "mfa_tz=" + encodeURIComponent(zone) + "; path=/; SameSite=Lax; max-age=31536000" +
        (location.protocol === "https:" ? "; Secure" : "");
    }
  } catch (e) { /* no Intl: UTC it is */ }

  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  ready(function () {
    // Copy buttons: shown only when the clipboard can be used.
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      if (!navigator.clipboard) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        var source = document.querySelector(button.getAttribute("data-copy"));
        var text = source.querySelectorAll(".recovery-code").length
          ? Array.prototype.map.call(source.querySelectorAll(".recovery-code"), function (el) { return el.textContent; }).join("\n")
          : source.textContent.replace(/\s+/g, "");
        navigator.clipboard.writeText(text).then(function () {
          var label = button.textContent;
          button.textContent = button.getAttribute("data-done") || "Copied";
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
        if (!sent && /^[0-9]{6}$/.test(digits)) { sent = true; form.requestSubmit ? form.requestSubmit() : form.submit(); }
      });
    });
  });
})();
