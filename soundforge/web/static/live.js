// Live progress: one EventSource per page (the server fans one LISTEN connection out to every
// browser). Updates every stage cell on the page; the Live page also keeps a log.
(function () {
  "use strict";
  var FINISHED = { completed: true, failed: true };

  function updateCell(event) {
    var selector = 'td.stage[data-track="' + event.track_id + '"][data-stage="' + event.stage + '"]';
    var cells = document.querySelectorAll(selector);
    var notice = document.getElementById("new-tracks");
    if (notice && cells.length === 0) { notice.hidden = false; }
    cells.forEach(function (cell) {
      var bar = cell.querySelector("progress");
      var status = cell.querySelector(".status");
      var percent = cell.querySelector(".percent");
      if (bar && Number(bar.value) <= event.progress) { bar.value = event.progress; }
      if (status) { status.textContent = event.status; status.className = "status status-" + event.status; }
      if (percent) { percent.textContent = Math.max(event.progress, bar ? Number(bar.value) : 0) + "%"; }
    });
    var pipeline = document.getElementById("pipeline");
    var ready = document.getElementById("ready");
    if (pipeline && ready) {
      var cells = pipeline.querySelectorAll("td.stage .status");
      var states = Array.prototype.map.call(cells, function (s) { return s.textContent.trim(); });
      var download = states[0];
      var rest = states.slice(1).filter(function (s) { return s !== "-"; });
      var done = download === "failed" || (download === "completed" && rest.length > 0 &&
        rest.every(function (s) { return FINISHED[s]; }));
      if (done) { ready.hidden = false; }
    }
  }

  function logEvent(event) {
    var log = document.querySelector("#live-log tbody");
    if (!log) { return; }
    var row = document.createElement("tr");
    [new Date().toLocaleTimeString(), event.track_id, event.stage, event.status,
     event.progress + "%", event.error || ""].forEach(function (text, index) {
      var cell = document.createElement("td");
      if (index === 1) {
        var link = document.createElement("a");
        link.href = "/tracks/" + encodeURIComponent(text);
        link.textContent = text.slice(0, 8);
        cell.appendChild(link);
      } else {
        cell.textContent = text;
      }
      row.appendChild(cell);
    });
    log.insertBefore(row, log.firstChild);
    while (log.children.length > 500) { log.removeChild(log.lastChild); }
  }

  function setState(text) {
    var state = document.getElementById("live-state");
    if (state) { state.textContent = text; }
  }

  if (!window.EventSource) { return; }
  var source = new EventSource("/api/events");
  window.soundforgeEvents = { received: 0 };
  source.onopen = function () { setState("connected"); };
  source.onerror = function () { setState("reconnecting…"); };
  source.onmessage = function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (error) { return; }
    window.soundforgeEvents.received += 1;
    if (event.type === "progress") { updateCell(event); logEvent(event); }
  };
})();
