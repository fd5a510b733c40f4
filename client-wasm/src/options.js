// The JavaScript class's checks and parsing that cost the wasm bundle kilobytes in Rust:
// a `WsClientOptions` object for `WsClient.connect`, checked and flattened for the wasm
// side, which reads the numbers by position (field by field from Rust cost 4 KB); the
// subprotocols and the URL (parse_url and check_subprotocols in lib.rs, 4.6 KB); and
// readJson's decoding and parsing (1.6 KB). Each throws an Error whose message says what
// is wrong (for options, the field at fault).

function number(object, name) {
  const value = object[name];
  if (value === undefined || value === null) return NaN;
  if (typeof value !== "number" || !(value >= 0) || value === Infinity) {
    throw new Error(`${name}: must be a number, 0 or more`);
  }
  return value;
}

function object(value, name) {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "object") throw new Error(`${name}: must be an object`);
  return value;
}

// [readTimeoutMs, writeTimeoutMs, handshakeTimeoutMs, retry (1, or NaN for none),
//  retry.maxCount, retry.intervalMs, retry.backOffFactor, retry.maxWaitIntervalMs];
// NaN where a field is absent.
export function optionNumbers(options) {
  options = object(options, "options") ?? {};
  const retry = object(options.retry, "retry");
  return Float64Array.of(
    number(options, "readTimeoutMs"),
    number(options, "writeTimeoutMs"),
    number(options, "handshakeTimeoutMs"),
    retry ? 1 : NaN,
    ...["maxCount", "intervalMs", "backOffFactor", "maxWaitIntervalMs"].map((name) =>
      retry ? number(retry, name) : NaN,
    ),
  );
}

// The subprotocols as an array of HTTP tokens, each once (the WebSocket constructor
// would throw a SyntaxError for a duplicate).
export function optionSubprotocols(options) {
  const list = options?.subprotocols ?? [];
  if (!Array.isArray(list)) throw new Error("subprotocols: must be an array");
  list.forEach((p, i) => {
    if (typeof p !== "string") throw new Error("subprotocols: must be strings");
    if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(p)) {
      throw new Error(`subprotocols: "${p}" is not a valid token`);
    }
    if (list.indexOf(p) !== i) throw new Error(`subprotocols: "${p}" is offered twice`);
  });
  return list;
}

// Checks WsClient.connect's URL as the Rust client's parser does (parse_url in lib.rs),
// with the same messages; the WebSocket constructor's URL parser checks the host and
// port. Throws an Error that says what is wrong.
export function checkUrl(url) {
  const scheme = /^([^:]*):\/\//.exec(url)?.[1];
  if (scheme === undefined) throw new Error("no scheme");
  if (!/^wss?$/i.test(scheme)) throw new Error("the scheme must be ws or wss");
  const rest = url.slice(scheme.length + 3);
  if (rest.includes("#")) throw new Error("a fragment is not allowed");
  if (/[\0-\x20\x7f]/.test(rest)) {
    throw new Error("spaces and control characters must be percent-encoded");
  }
  const authority = rest.split(/[/?]/)[0];
  if (authority.includes("@")) throw new Error("credentials in the URL are not supported");
  if (authority === "" || authority.startsWith(":")) throw new Error("no host");
  if (authority.endsWith(":")) throw new Error("bad port");
  try {
    new URL(url);
  } catch {
    throw new Error("bad host or port");
  }
}

// readJson's parsing of a message (a string, or a Uint8Array decoded as UTF-8 first).
// Throws an Error that says what is wrong.
export function parseJson(message) {
  let text = message;
  if (typeof message !== "string") {
    try {
      text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(message);
    } catch {
      throw new Error("binary message is not UTF-8 text");
    }
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`JSON: ${e.message}`);
  }
}
