// The live map: draws the picture that `heimdall map` serves at /state and pushes over the /updates WebSocket
// (streamer/tools/map.py owns its shape). Leaflet is vendored in /static/leaflet, so nothing here needs the internet
// except the tiles, and without tiles the graticule still gives the map its coordinates.
"use strict";

// One definition of every colour: the page's legend (map.css) and tests/integration/test_map.py read these.
const COLOURS = {
  heard: "#1a9641", up: "#f4a81d", down: "#d7191c", unknown: "#888888",
  estimator: { onnx: "#2b83ba", physics: "#7b3294" }, otherEstimator: "#e66101",
  track: "#303030", truth: "#000000", graticule: "#cdd3dc",
};

const map = L.map("map", { zoomSnap: 0.25, worldCopyJump: true });
map.createPane("graticule").style.zIndex = 250;  // above the tiles (200), below the overlays (400)
map.setView([45.0, 7.5], 8);

const layers = {
  receivers: L.layerGroup().addTo(map),
  estimates: L.layerGroup().addTo(map),
  track: L.layerGroup().addTo(map),
  truth: L.layerGroup().addTo(map),
  graticule: L.layerGroup().addTo(map),
};
let tiles = null;
let fitted = false;
let latest = null;
// `localizations`: the server's count of loc messages in the last picture drawn; `updates`: pictures drawn
const drawn = { version: -1, receivers: 0, ellipses: 0, estimates: 0, track: 0, truth: 0, tileErrors: 0,
                localizations: 0, updates: 0 };
// Set once, in the first animation frame after the first ellipse joined the map (the frame that paints it):
// `heimdall bench map --first-ellipse` reads its time
const FIRST_ELLIPSE_MARK = "heimdall:first-ellipse";
let firstEllipseMarked = false;

function receiverColour(rx) {
  if (rx.up === false) return COLOURS.down;
  if (rx.up === null || rx.up === undefined) return COLOURS.unknown;
  return rx.heard ? COLOURS.heard : COLOURS.up;
}

function estimatorColour(name) {
  return COLOURS.estimator[name] || COLOURS.otherEstimator;
}

// Graticule lines every `step` degrees, the step chosen for about 4 to 10 lines across the view.
function drawGraticule() {
  layers.graticule.clearLayers();
  const b = map.getBounds();
  const span = Math.max(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
  const step = [30, 10, 5, 2, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01].find((s) => span / s >= 4) || 0.01;
  // 2 px wide, so that at least one pixel across each line is the graticule's colour wherever the line falls
  const style = { pane: "graticule", color: COLOURS.graticule, weight: 2, opacity: 1, interactive: false };
  for (let lat = Math.ceil(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) {
    L.polyline([[lat, b.getWest()], [lat, b.getEast()]], style).addTo(layers.graticule);
    L.marker([lat, b.getWest()], { pane: "graticule", interactive: false, icon: L.divIcon({
      className: "graticule-label", html: `${lat.toFixed(2)}°`, iconAnchor: [-2, 12] }) }).addTo(layers.graticule);
  }
  for (let lon = Math.ceil(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
    L.polyline([[b.getSouth(), lon], [b.getNorth(), lon]], style).addTo(layers.graticule);
    L.marker([b.getSouth(), lon], { pane: "graticule", interactive: false, icon: L.divIcon({
      className: "graticule-label", html: `${lon.toFixed(2)}°`, iconAnchor: [-2, 14] }) }).addTo(layers.graticule);
  }
}
map.on("moveend", drawGraticule);

function setTiles(url) {
  if (tiles || !url) return;
  tiles = L.tileLayer(url, { maxZoom: 18, attribution: "&copy; OpenStreetMap contributors" });
  tiles.on("tileerror", () => { drawn.tileErrors += 1; });
  tiles.addTo(map);
}

function drawReceivers(state) {
  layers.receivers.clearLayers();
  const body = document.querySelector("#receivers tbody");
  body.replaceChildren();
  drawn.receivers = 0;
  for (const rx of state.receivers) {
    const colour = receiverColour(rx);
    const power = rx.rx_power_dbm === null ? "" : rx.rx_power_dbm.toFixed(1);
    const snr = rx.peak_snr_db === null ? "" : ` (peak SNR ${rx.peak_snr_db.toFixed(1)} dB)`;
    if (rx.lat !== null && rx.lon !== null) {
      L.circleMarker([rx.lat, rx.lon], { radius: 9, color: "#222222", weight: 2, fillColor: colour, fillOpacity: 1 })
        .bindTooltip(`${rx.id}${power ? `: ${power} dBm` : ""}${snr}`, { permanent: true, direction: "right",
                                                                           offset: [10, 0] })
        .addTo(layers.receivers);
      drawn.receivers += 1;
    }
    const row = body.insertRow();
    row.insertCell().innerHTML = `<span class="dot" style="background:${colour}"></span>`;
    row.insertCell().textContent = rx.id + (rx.up === false ? " (down)" : "");
    row.insertCell().textContent = power + snr;
  }
}

function drawEstimates(state) {
  layers.estimates.clearLayers();
  drawn.ellipses = 0;
  drawn.estimates = state.estimates.length;
  for (const est of state.estimates) {
    const colour = estimatorColour(est.estimator);
    for (const e of est.ellipses) {
      const wide = e.p > 0.9;  // the 95 % ellipse: the outer, fainter one
      L.polygon(e.ring, { color: colour, weight: wide ? 3 : 2, opacity: 1, fillOpacity: wide ? 0.06 : 0.12,
                          interactive: false }).addTo(layers.estimates);
      drawn.ellipses += 1;
    }
    if (drawn.ellipses && !firstEllipseMarked) {
      firstEllipseMarked = true;
      requestAnimationFrame(() => performance.mark(FIRST_ELLIPSE_MARK));
    }
    L.circleMarker([est.lat, est.lon], { radius: 5, color: colour, weight: 2, fillColor: "#ffffff", fillOpacity: 1 })
      .bindTooltip(`${est.estimator}: ${est.lat.toFixed(4)}, ${est.lon.toFixed(4)}`).addTo(layers.estimates);
  }
}

// The track fades: the newest segment is nearly opaque, the oldest nearly invisible.
function drawTrack(state) {
  layers.track.clearLayers();
  const points = state.track;
  drawn.track = points.length;
  for (let i = 1; i < points.length; i += 1) {
    const opacity = 0.08 + 0.85 * (i / (points.length - 1));
    L.polyline([[points[i - 1].lat, points[i - 1].lon], [points[i].lat, points[i].lon]],
               { color: COLOURS.track, weight: 2, opacity, interactive: false }).addTo(layers.track);
  }
}

function drawTruth(state) {
  layers.truth.clearLayers();
  drawn.truth = 0;
  if (!state.truth || !document.getElementById("show-truth").checked) return;
  const t = state.truth;
  L.circleMarker([t.lat, t.lon], { radius: 7, color: COLOURS.truth, weight: 3, fill: false })
    .bindTooltip(`truth${t.keyed ? "" : " (not keyed)"}`).addTo(layers.truth);
  L.circleMarker([t.lat, t.lon], { radius: 2, color: COLOURS.truth, weight: 2, fillOpacity: 1 }).addTo(layers.truth);
  drawn.truth = 1;
}

function drawEmissions(state) {
  const lines = Object.entries(state.emissions).map(([channel, e]) =>
    `${channel}: emission ${e.emission_id} ${e.event === "start" ? "on the air" : "ended"}`);
  document.getElementById("emissions").textContent = lines.join("\n");
}

function draw(state) {
  latest = state;
  setTiles(state.tiles_url);
  if (!fitted) {
    const placed = state.receivers.filter((rx) => rx.lat !== null && rx.lon !== null);
    if (placed.length) {
      map.fitBounds(L.latLngBounds(placed.map((rx) => [rx.lat, rx.lon])).pad(0.6));
      fitted = true;
    }
  }
  drawReceivers(state);
  drawEstimates(state);
  drawTrack(state);
  drawTruth(state);
  drawEmissions(state);
  const counts = state.counts;
  document.getElementById("summary").textContent =
    `${counts.loc || 0} localizations, ${counts.status || 0} status, ${state.estimates.map((e) => e.estimator).join(" + ") || "no estimate yet"}`;
  drawn.version = state.version;
  drawn.localizations = counts.loc || 0;
  drawn.updates += 1;
}

document.getElementById("show-truth").addEventListener("change", () => { if (latest) drawTruth(latest); });
drawGraticule();
fetch("/state").then((r) => r.json()).then(draw);
// A WebSocket, not an EventSource: each event stream holds one of the browser's six connections to this host.
function follow() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/updates`);
  socket.onmessage = (event) => draw(JSON.parse(event.data));
  socket.onclose = () => setTimeout(follow, 1000);  // the map server restarted or the network dropped
}
follow();

// For tests and the curious: what is on the map now, and the colours it uses.
window.heimdallMap = { drawn, colours: COLOURS, map };
