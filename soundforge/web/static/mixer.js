// The stem mixer: every stem's <audio> element feeds a gain node of one AudioContext, so the
// stems play in sync with solo, mute and volume per stem; seeking one seeks them all.
(function () {
  "use strict";
  var mixer = document.getElementById("mixer");
  if (!mixer) { return; }
  var rows = Array.prototype.slice.call(mixer.querySelectorAll(".stem"));
  var players = rows.map(function (row) { return row.querySelector("audio"); });
  var context = null;
  var gains = [];
  var syncing = false;

  function ensureGraph() {
    if (context || !(window.AudioContext || window.webkitAudioContext)) { return; }
    context = new (window.AudioContext || window.webkitAudioContext)();
    gains = players.map(function (player) {
      var gain = context.createGain();
      context.createMediaElementSource(player).connect(gain).connect(context.destination);
      return gain;
    });
    applyMix();
  }

  function applyMix() {
    var soloed = rows.some(function (row) { return row.querySelector(".solo").checked; });
    rows.forEach(function (row, index) {
      var muted = row.querySelector(".mute").checked;
      var solo = row.querySelector(".solo").checked;
      var volume = Number(row.querySelector(".volume").value);
      var level = (muted || (soloed && !solo)) ? 0 : volume;
      if (gains[index]) { gains[index].gain.value = level; } else { players[index].volume = Math.min(level, 1); }
    });
  }

  function seekAll(time, except) {
    syncing = true;
    players.forEach(function (player) {
      if (player !== except && Math.abs(player.currentTime - time) > 0.05) { player.currentTime = time; }
    });
    syncing = false;
  }

  rows.forEach(function (row) {
    row.querySelectorAll("input").forEach(function (input) { input.addEventListener("input", applyMix); });
  });
  players.forEach(function (player) {
    player.addEventListener("seeked", function () { if (!syncing) { seekAll(player.currentTime, player); } });
  });
  document.getElementById("play-all").addEventListener("click", function () {
    ensureGraph();
    if (context && context.state === "suspended") { context.resume(); }
    seekAll(players[0].currentTime, null);
    players.forEach(function (player) { player.play(); });
  });
  document.getElementById("stop-all").addEventListener("click", function () {
    players.forEach(function (player) { player.pause(); });
  });
  setInterval(function () {  // keep the stems together while they play
    var lead = players[0];
    if (!lead || lead.paused) { return; }
    players.slice(1).forEach(function (player) {
      if (Math.abs(player.currentTime - lead.currentTime) > 0.08) { player.currentTime = lead.currentTime; }
    });
  }, 1000);
})();
