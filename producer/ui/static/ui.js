// routeq dashboard: live updates over server-sent events. No framework, nothing fetched from elsewhere.
(function () {
  "use strict";

  function setText(id, value) {
    var el = document.getElementById(id);
    if (el && value !== undefined && el.textContent !== String(value)) { el.textContent = String(value); }
  }

  function setStatus(el, status) {
    if (!el) { return; }
    el.textContent = status;
    el.className = "pill " + status;
  }

  // As the server writes money (producer/ui/rendering.py): millionths below a dollar.
  function money(value) {
    if (value === 0) { return "$0.00"; }
    if (Math.abs(value) < 1) { return "$" + value.toFixed(6); }
    return Math.abs(value) < 100 ? "$" + value.toFixed(4) : "$" + value.toFixed(2);
  }

  function width(done, total) {
    return (total ? (100 * done / total) : 100).toFixed(1) + "%";
  }

  // A batch's page: status word, counts, cost, progress; the cancel form goes when the batch ends.
  function followBatch(url) {
    var source = new EventSource(url);
    source.addEventListener("snapshot", function (message) {
      var s = JSON.parse(message.data);
      setStatus(document.getElementById("batch-status"), s.status);
      setText("count-total", s.total);
      setText("count-completed", s.completed);
      setText("count-failed", s.failed);
      setText("batch-cost", money(s.cost_usd));
      setText("batch-done", s.done + "/" + s.jobs);
      var bar = document.getElementById("batch-progress");
      if (bar) { bar.style.width = width(s.done, s.jobs); }
      if (!s.cancellable || s.ended) {
        var form = document.getElementById("cancel-form");
        if (form) { form.remove(); }
      }
      if (s.ended) { source.close(); }
    });
    source.onerror = function () { if (source.readyState === EventSource.CLOSED) { source.close(); } };
  }

  // The batches list: each row's status and done/total.
  function followList(url) {
    var source = new EventSource(url);
    source.addEventListener("snapshot", function (message) {
      var s = JSON.parse(message.data);
      var row = document.querySelector('tr[data-batch-id="' + s.id + '"]');
      if (!row) { return; }
      setStatus(row.querySelector("td.status .pill"), s.status);
      var progress = row.querySelector("td.progress");
      if (progress) { progress.textContent = s.done + "/" + s.jobs; }
      var fill = row.querySelector("td.bar-cell .fill");
      if (fill) { fill.style.width = width(s.done, s.jobs); }
    });
    source.addEventListener("end", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.querySelector("main");
    if (!main || !window.EventSource) { return; }
    if (main.dataset.live) { followBatch(main.dataset.live); }
    if (main.dataset.liveList) { followList(main.dataset.liveList); }
  });
})();
