// The seat map page: the flight list at /, one flight's cabin at /flights/<id>, live from the
// flight's seat stream (GET /api/flights/<id>/seats/events). Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "holdsvc.apiKey";
const USER_STORE = "holdsvc.userId";

function message(text) { $("message").textContent = text || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// One JSON call; refusals come back as {status, body}, for the caller to show.
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.body ? { "Content-Type": "application/json" } : {});
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (resp.status === 401 || resp.status === 403) {
    message("This service needs a client API key: type it at the top right.");
  }
  return { status: resp.status, body: body };
}

// ---------- the flight list

async function showFlights() {
  $("flights").hidden = false;
  $("title").textContent = "Flights";
  const { status, body } = await api("/api/flights/");
  if (status !== 200) { message(body && body.error ? body.error : "Flights unavailable"); return; }
  const rows = $("flight-rows");
  rows.textContent = "";
  for (const f of body) {
    const tr = document.createElement("tr");
    const link = document.createElement("a");
    link.href = "/flights/" + f.id;
    link.textContent = f.flight_number;
    const cells = [link, f.origin, f.destination, f.departure_time,
      f.seats_available === null ? "?" : f.seats_available + " / " + f.seats_total];
    for (const c of cells) {
      const td = document.createElement("td");
      if (typeof c === "string") td.textContent = c; else td.appendChild(c);
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
}

// ---------- the cabin

// Where the aisles go: at a gap in the letters (airlines skip letters there, ABC HJK), else
// as cabins of that width are usually laid out.
const USUAL = { 4: [2], 5: [2], 6: [3], 7: [2, 5], 8: [2, 6], 9: [3, 6], 10: [3, 7], 11: [3, 8], 12: [3, 9] };
function aisles(letters) {
  const gaps = [];
  for (let i = 1; i < letters.length; i++) {
    if (letters.charCodeAt(i) - letters.charCodeAt(i - 1) > 1) gaps.push(i);
  }
  if (gaps.length) return gaps;
  return USUAL[letters.length] || (letters.length > 3 ? [Math.floor(letters.length / 2)] : []);
}

const page = {
  flight: null,
  status: {},        // seat -> available | held | booked, as the stream says
  buttons: {},       // seat -> its element
  selected: new Set(),
  booking: null,     // {id, seats, deadline (local ms), state}
  lastEventId: null,
};

function drawCabin(flight) {
  const cabin = $("cabin");
  cabin.textContent = "";
  const letters = flight.seat_letters;
  const gaps = new Set(aisles(letters));
  const head = document.createElement("div");
  head.className = "letters";
  for (let i = 0; i < letters.length; i++) {
    if (gaps.has(i)) { const a = document.createElement("span"); a.className = "aisle"; head.appendChild(a); }
    const s = document.createElement("span");
    s.textContent = letters[i];
    head.appendChild(s);
  }
  cabin.appendChild(head);
  for (let r = 1; r <= flight.rows; r++) {
    const row = document.createElement("div");
    row.className = "row";
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = r;
    row.appendChild(num);
    for (let i = 0; i < letters.length; i++) {
      if (gaps.has(i)) { const a = document.createElement("span"); a.className = "aisle"; row.appendChild(a); }
      const name = r + letters[i];
      const b = document.createElement("button");
      b.className = "seat available";
      b.dataset.seat = name;
      b.title = name;
      b.addEventListener("click", () => toggle(name));
      page.buttons[name] = b;
      row.appendChild(b);
    }
    cabin.appendChild(row);
  }
}

function paint(name) {
  const b = page.buttons[name];
  if (!b) return;
  const status = page.status[name] || "available";
  const mine = page.booking && page.booking.state === "SEAT_HELD" && page.booking.seats.includes(name);
  let shown = status;
  if (status === "available" && page.selected.has(name)) shown = "selected";
  else if (status === "held" && mine) shown = "mine";
  b.className = "seat " + shown;
  b.dataset.status = status;
  b.title = name + " " + shown;
}

function setStatus(name, status) {
  page.status[name] = status;
  if (status !== "available") page.selected.delete(name);
  paint(name);
}

function toggle(name) {
  if (page.status[name] !== "available") return;
  if (page.selected.has(name)) page.selected.delete(name); else page.selected.add(name);
  paint(name);
  showSelection();
}

function showSelection() {
  const seats = [...page.selected];
  $("selected").textContent = seats.length ? seats.join(", ") : "none";
  $("hold").disabled = seats.length === 0 || !$("user-id").value.trim() || holding();
}

function holding() { return page.booking !== null && page.booking.state === "SEAT_HELD"; }

// ---------- the live stream (fetch, not EventSource: it can send the API key)

function live(on) {
  const el = $("live");
  el.textContent = on ? "live" : "offline";
  el.className = "live " + (on ? "on" : "off");
  document.body.dataset.live = on ? "1" : "0";
}

function onEvent(type, id, data) {
  if (id) page.lastEventId = id;
  if (type === "snapshot") {
    const snap = JSON.parse(data);
    for (const s of snap.seats) setStatus(s.seat, s.status);
    showSelection();
    live(true);
  } else if (type === "seat") {
    const change = JSON.parse(data);
    setStatus(change.seat, change.status);
    showSelection();
  }
}

async function stream() {
  for (;;) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (page.lastEventId) h["Last-Event-ID"] = page.lastEventId;
      const resp = await fetch("/api/flights/" + page.flight.id + "/seats/events", { headers: h });
      if (resp.status === 200 && resp.body) {
        await readEvents(resp.body.getReader());
      } else if (resp.status === 401 || resp.status === 403) {
        message("This service needs a client API key: type it at the top right.");
      }
    } catch (e) {
      // The connection broke: the next one resumes after the last event received.
    }
    live(false);
    await new Promise((done) => setTimeout(done, 1000));
  }
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  let type = "message", id = null, data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (line === "") {
        if (data.length) onEvent(type, id, data.join("\n"));
        type = "message"; id = null; data = [];
      } else if (!line.startsWith(":")) {
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        let value = at < 0 ? "" : line.slice(at + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
        else if (field === "id") id = value;
      }
    }
  }
}

// ---------- holding and paying

async function hold() {
  const user = $("user-id").value.trim();
  const seats = [...page.selected];
  localStorage.setItem(USER_STORE, user);
  $("hold").disabled = true;
  const { status, body } = await api("/api/bookings/", {
    method: "POST",
    body: JSON.stringify({ flight_id: page.flight.id, user_id: user, seats: seats }),
  });
  if (status !== 201) {
    message(body && body.error ? body.error + (body.seats ? ": " + body.seats.join(", ") : "") : "Hold failed");
    showSelection();
    return;
  }
  message("");
  page.selected.clear();
  // The time left as the server counts it when it says so, else from its deadline.
  const left = typeof body.expires_in_seconds === "number"
    ? body.expires_in_seconds * 1000 : Date.parse(body.hold_expires_at) - Date.now();
  page.booking = { id: body.id, seats: body.seats, state: body.state, deadline: Date.now() + left };
  showBooking();
  tick();
  for (const s of body.seats) paint(s);
  showSelection();
}

async function act(action, payload) {
  const b = page.booking;
  if (!b) return;
  const { status, body } = await api("/api/bookings/" + b.id + "/" + action + "/", {
    method: "POST", body: JSON.stringify(payload || {}),
  });
  if (body && body.state) b.state = body.state;
  message(status === 200 ? "" : (body && (body.message || body.error)) || action + " failed");
  showBooking();
  for (const s of b.seats) paint(s);
  showSelection();
}

function showBooking() {
  const b = page.booking;
  $("booking").hidden = !b;
  if (!b) return;
  $("booking-id").textContent = b.id;
  $("booking-state").textContent = b.state;
  $("booking").dataset.state = b.state;
  $("countdown-line").hidden = b.state !== "SEAT_HELD";
  $("pay").disabled = b.state !== "SEAT_HELD";
  $("release").disabled = b.state !== "SEAT_HELD";
}

function tick() {
  const b = page.booking;
  if (!b || b.state !== "SEAT_HELD") return;
  const left = Math.max(0, Math.ceil((b.deadline - Date.now()) / 1000));
  $("countdown").textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
  if (left === 0 && b.seats.every((s) => page.status[s] !== "held")) {
    // The stream says its seats are free again: the hold lapsed.
    b.state = "EXPIRED";
    showBooking();
    for (const s of b.seats) paint(s);
    showSelection();
  }
}

async function showFlight(id) {
  $("flight").hidden = false;
  const { status, body } = await api("/api/flights/" + id + "/");
  if (status !== 200) { message(body && body.error ? body.error : "Flight unavailable"); return; }
  page.flight = body;
  $("title").textContent = body.flight_number + " " + body.origin + " → " + body.destination +
    " · " + body.departure_time + " · " + body.price + " " + body.currency;
  drawCabin(body);
  $("user-id").value = localStorage.getItem(USER_STORE) || "";
  $("user-id").addEventListener("input", showSelection);
  $("hold").addEventListener("click", hold);
  $("pay").addEventListener("click", () => act("pay", { payment_method: "pm_card_visa" }));
  $("release").addEventListener("click", () => act("cancel"));
  setInterval(tick, 250);
  stream();
}

function start() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => { localStorage.setItem(KEY_STORE, key.value.trim()); location.reload(); });
  live(false);
  const m = location.pathname.match(/^\/flights\/(\d+)\/?$/);
  if (m) showFlight(Number(m[1])); else showFlights();
}

start();
