// Checks a `WsClientOptions` object for `WsClient.connect` and flattens it for the wasm
// side, which reads the numbers by position (reading them field by field from Rust cost
// the bundle 4 KB). Throws an Error whose message names the field at fault.

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

export function optionSubprotocols(options) {
  const list = options?.subprotocols ?? [];
  if (!Array.isArray(list)) throw new Error("subprotocols: must be an array");
  if (list.some((p) => typeof p !== "string")) throw new Error("subprotocols: must be strings");
  return list;
}
