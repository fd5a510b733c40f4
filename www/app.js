// The wasmsocket console: a browser front end on the wasmsocket client (WebAssembly).
import init, { WsClient } from "./pkg/wasmsocket_client.js";

const $ = (id) => document.getElementById(id);
let client = null;
let kind = "text";

function log(direction, text, css) {
  const item = document.createElement("li");
  item.className = css;
  const time = new Date().toLocaleTimeString([], { hour12: false });
  for (const [cls, value] of [["time", time], ["dir", direction], ["body", text]]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = value;
    item.append(span);
  }
  $("log").append(item);
  $("log").scrollTop = $("log").scrollHeight;
}

function setStatus(state, label) {
  $("status").className = `pill ${state}`;
  $("status").textContent = label;
  const open = state === "open";
  $("send").disabled = !open;
  $("disconnect").disabled = !open;
  $("connect").disabled = state === "connecting" || open;
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
function parseHex(text) {
  const digits = text.replace(/[^0-9a-fA-F]/g, "");
  if (digits.length % 2) throw new Error("an even number of hex digits is needed");
  return Uint8Array.from(digits.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

async function readLoop(current) {
  for (;;) {
    try {
      const message = await current.read();
      if (typeof message === "string") log("◀ text", message, "in");
      else log("◀ binary", `${message.length} bytes: ${hex(message)}`, "in");
    } catch (error) {
      if (current !== client) return;
      if (error.name === "ConnectionClosed") {
        log("closed", `code ${error.code}${error.reason ? ` · ${error.reason}` : ""}`, "event");
        setStatus("closed", `closed ${error.code}`);
      } else {
        log("error", `${error.name}: ${error.message}`, "fail");
        setStatus("closed", "error");
      }
      client = null;
      return;
    }
  }
}

$("connect-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const url = $("url").value.trim();
  const subprotocols = $("protocols").value.split(",").map((p) => p.trim()).filter(Boolean);
  setStatus("connecting", "connecting…");
  try {
    const current = await WsClient.connect(url, { subprotocols, handshakeTimeoutMs: 10000 });
    client = current;
    const protocol = current.protocol ? ` (subprotocol ${current.protocol})` : "";
    log("open", `${url}${protocol}`, "event");
    setStatus("open", "open");
    readLoop(current);
  } catch (error) {
    log("error", `${error.name}: ${error.message}`, "fail");
    setStatus("closed", "failed");
  }
});

$("disconnect").addEventListener("click", async () => {
  const current = client;
  if (!current) return;
  const code = Number($("close-code").value);
  const reason = $("close-reason").value;
  log("▶ close", `code ${code}${reason ? ` · ${reason}` : ""}`, "out");
  try {
    const peer = await current.close(code, reason, 5000);
    client = null;
    log("closed", `server answered ${peer.code}${peer.reason ? ` · ${peer.reason}` : ""}`, "event");
    setStatus("closed", `closed ${peer.code}`);
  } catch (error) {
    log("error", `${error.name}: ${error.message}`, "fail");
  }
});

$("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("send-error").textContent = "";
  const text = $("payload").value;
  try {
    if (kind === "json") {
      const value = JSON.parse(text);
      await client.writeJson(value);
      log("▶ json", JSON.stringify(value), "out");
    } else if (kind === "binary") {
      const bytes = parseHex(text);
      await client.writeBinary(bytes);
      log("▶ binary", `${bytes.length} bytes: ${hex(bytes)}`, "out");
    } else {
      await client.writeText(text);
      log("▶ text", text, "out");
    }
  } catch (error) {
    $("send-error").textContent = `${error.name ?? "Error"}: ${error.message}`;
  }
});

const samples = { text: "Hello from the browser", json: '{"type": "greeting", "to": "wasm"}', binary: "de ad be ef 00 01" };
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    kind = tab.dataset.kind;
    $("payload").value = samples[kind];
  });
}
$("clear").addEventListener("click", () => { $("log").textContent = ""; });

$("url").value = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/echo`;
await init();
document.body.dataset.ready = "true";
