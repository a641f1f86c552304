// Running an edgekit ONNX bundle in the browser with onnxruntime-web: a port of the parts of
// export/edgekit_device/runtime.py (Predictor) that one text at a time needs.
//
// - `per-layer` bundle: `embed` once, then the shared `layer` graph k times, feeding its output
//   back with the same attention_mask, and `head` where the model may stop:
//     fixed exit k: k layers, the head once;
//     "patience" (PABEE): stop when `patience` consecutive layers repeat the previous prediction;
//     "entropy" (DeeBERT): stop at the first layer whose prediction entropy (nats) < threshold;
//     the last allowed layer always stops.
// - `fixed` bundle: the single `model` graph computes its one exit.
// - The head reads the layer by the bundle's pooling (manifest `model.pooling`, absent: "cls"):
//   [CLS], or the masked token mean ("mean"), whose head graph also takes the attention mask.
//
// Inputs are fed with the dtypes the manifest declares, padded where it gives a static dimension,
// exactly as Predictor._run does. Scores are the softmax of the exit's logits.

import { Tokenizer } from "./tokenizer.js";

const TYPED = { int64: BigInt64Array, int32: Int32Array, float32: Float32Array };

export class BundleError extends Error {}

async function fetchOk(url) {
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new BundleError(`GET ${url} answered ${response.status} ${response.statusText}.`);
  return response;
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) return null; // only in secure contexts (localhost is one)
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// Packed bundles (.edgepack): the port of edgekit_device/pack.py's unpack (format: export/BUNDLE.md).
// "EKPACK1\n", u32 header length (little-endian), header JSON, payload of zlib streams. The header
// is untrusted: streams lie back to back and are used once, sizes agree with each other and with
// the limits before anything is inflated, inflating stops at the declared size, names are plain.

const PACK_MAGIC = "EKPACK1\n";
const MAX_UNPACKED_BYTES = 512 * 2 ** 20; // a page holds every file in memory
const SMALL_UNPACKED_BYTES = 64 * 2 ** 20; // below this, any compression ratio is accepted
const MAX_EXPANSION = 100; // above it, at most this many unpacked bytes per packed byte
const MAX_HEADER_BYTES = 16 * 2 ** 20;
const MAX_FILES = 10000;
const MAX_ITEMSIZE = 16;

function malformed(what) {
  return new BundleError(`the packed bundle is malformed (${what}); download it again or pack the bundle again.`);
}

function int(value, what, low = 0, high = Number.MAX_SAFE_INTEGER) {
  if (!Number.isSafeInteger(value) || value < low || value > high) throw malformed(`${what} is ${JSON.stringify(value)}`);
  return value;
}

function checkName(name) {
  if (typeof name !== "string" || name.length === 0 || name.length > 1024) throw malformed(`file name ${JSON.stringify(name)}`);
  const parts = name.split("/");
  const bad = name.startsWith("/") || name.includes("\\") || name.includes(":") || /[\u0000-\u001f\u007f]/.test(name) ||
    parts.some((p) => p === "" || p === "." || p === ".." || p.length > 255) || name === ".edgekit-written.json";
  if (bad) throw new BundleError(`the packed bundle names a file ${JSON.stringify(name.slice(0, 80))} outside a plain relative path; refusing to unpack it.`);
  return name;
}

// Inflate one zlib stream ("deflate" is zlib's format in the Compression Streams API) to exactly
// `size` bytes, stopping as soon as it outgrows them.
async function inflateExactly(bytes, size, name) {
  const reader = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate")).getReader();
  const out = new Uint8Array(size);
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.length > size) {
        reader.cancel().catch(() => {});
        throw new BundleError(`packed data of '${name}' expands beyond its declared ${size} bytes; the pack is corrupted, download it again.`);
      }
      out.set(value, n);
      n += value.length;
    }
  } catch (e) {
    if (e instanceof BundleError) throw e;
    throw new BundleError(`packed data of '${name}' is corrupted; download the bundle again.`);
  }
  if (n !== size) throw new BundleError(`packed data of '${name}' is truncated or corrupted; download the bundle again.`);
  return out;
}

// {name: Uint8Array} of the packed bundle `blob`, each file the exported one byte for byte (its
// sha256 checked against the pack header). Throws one BundleError sentence for anything else.
export async function unpackEdgePack(blob, maxBytes = MAX_UNPACKED_BYTES) {
  if (blob.length < 12 || new TextDecoder("latin1").decode(blob.subarray(0, 8)) !== PACK_MAGIC) {
    throw new BundleError("the file is not a packed edgekit bundle (wrong magic bytes); pass a file written by `edgekit export --pack`.");
  }
  const size = new DataView(blob.buffer, blob.byteOffset, blob.length).getUint32(8, true);
  if (size > MAX_HEADER_BYTES || 12 + size > blob.length) throw malformed(`a header of ${size} bytes in a file of ${blob.length}`);
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(blob.subarray(12, 12 + size)));
  } catch {
    throw new BundleError("the packed bundle's header is corrupted; download it again.");
  }
  if (header === null || typeof header !== "object" || header.format !== "edgekit-pack" || header.version !== 1) {
    throw new BundleError(`packed bundle version ${JSON.stringify(header?.version)} is not supported by this page (reads version 1); use the matching edgekit.`);
  }
  const payload = blob.subarray(12 + size);
  const { streams, files } = header;
  if (!Array.isArray(streams) || !Array.isArray(files)) throw malformed("'streams' and 'files' must be lists");
  if (files.length > MAX_FILES) throw malformed(`${files.length} files, more than a bundle has`);
  streams.forEach((s, i) => {
    if (s === null || typeof s !== "object") throw malformed(`stream ${i}`);
    if (s.codec === "xz") {
      throw new BundleError("the packed bundle is compressed with xz, and the browser reads zlib packs; pack the bundle again with `edgekit bundle pack BUNDLE_DIR --codec zlib`.");
    }
    if (s.codec !== "zlib") throw new BundleError(`the packed bundle uses codec ${JSON.stringify(s.codec)}; the browser reads zlib packs.`);
    int(s.offset, `stream ${i} offset`, 0, payload.length);
    int(s.length, `stream ${i} length`, 0, payload.length - s.offset);
    int(s.raw_bytes, `stream ${i} raw_bytes`);
  });
  let end = 0;
  for (const s of [...streams].sort((a, b) => a.offset - b.offset)) { // back to back, nothing between
    if (s.offset !== end) throw malformed(`a gap or overlap at payload byte ${end}`);
    end += s.length;
  }
  if (end !== payload.length) throw malformed(`${payload.length - end} payload bytes belong to no stream`);
  const used = new Set();
  const stream = (index, what) => {
    int(index, what, 0, streams.length - 1);
    if (used.has(index)) throw malformed(`${what} reuses stream ${index}`);
    used.add(index);
    return streams[index];
  };
  const names = new Set();
  const folded = new Set();
  let total = 0;
  for (const entry of files) {
    if (entry === null || typeof entry !== "object") throw malformed("a file entry");
    const name = checkName(entry.name);
    if (folded.has(name.toLowerCase())) throw malformed(`'${name}' is listed twice`);
    names.add(name);
    folded.add(name.toLowerCase());
    const bytes = int(entry.bytes, `size of '${name}'`, 0, 2 ** 31);
    total += bytes;
    if (typeof entry.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(entry.sha256)) throw malformed(`sha256 of '${name}'`);
    if (entry.encoding === "whole") {
      if (stream(entry.stream, `stream of '${name}'`).raw_bytes !== bytes) throw malformed(`'${name}' declares ${bytes} bytes but its stream a different size`);
    } else if (entry.encoding === "sparse") {
      const parts = entry.streams;
      if (!Array.isArray(entry.segments) || parts === null || typeof parts !== "object") throw malformed(`sparse entry of '${name}'`);
      let cursor = 0, cut = 0, maskBytes = 0;
      const bySize = new Map();
      for (const seg of entry.segments) {
        if (!Array.isArray(seg) || seg.length !== 3) throw malformed(`a segment of '${name}'`);
        const offset = int(seg[0], `a segment offset of '${name}'`, cursor, bytes);
        const length = int(seg[1], `a segment length of '${name}'`, 0, bytes - offset);
        const itemsize = int(seg[2], `a segment item size of '${name}'`, 1, MAX_ITEMSIZE);
        if (length % itemsize) throw malformed(`a segment of '${name}' is not a whole number of items`);
        cursor = offset + length;
        cut += length;
        maskBytes += Math.ceil(length / itemsize / 8);
        bySize.set(itemsize, (bySize.get(itemsize) || 0) + length);
      }
      const expected = ["skeleton", "masks", ...[...bySize.keys()].map((k) => `values${k}`)].sort();
      if (JSON.stringify(Object.keys(parts).sort()) !== JSON.stringify(expected)) throw malformed(`the streams of '${name}'`);
      if (stream(parts.skeleton, `skeleton of '${name}'`).raw_bytes !== bytes - cut) throw malformed(`the skeleton of '${name}' does not match its size`);
      if (stream(parts.masks, `masks of '${name}'`).raw_bytes !== maskBytes) throw malformed(`the masks of '${name}' do not match its segments`);
      for (const [k, cutBytes] of bySize) {
        const raw = stream(parts[`values${k}`], `values of '${name}'`).raw_bytes;
        if (raw % k || raw > cutBytes) throw malformed(`the values of '${name}' do not fit its segments`);
      }
    } else {
      throw new BundleError(`packed file '${name}' has unknown encoding ${JSON.stringify(entry.encoding)}; use the matching edgekit.`);
    }
  }
  for (const name of names) {
    const parts = name.split("/");
    for (let k = 1; k < parts.length; k++) {
      if (names.has(parts.slice(0, k).join("/"))) throw malformed(`'${name}' is inside a directory the pack also names as a file`);
    }
  }
  const limit = Math.min(maxBytes, Math.max(SMALL_UNPACKED_BYTES, MAX_EXPANSION * blob.length));
  if (total > limit) {
    throw new BundleError(`the packed bundle declares ${total} unpacked bytes, more than this page accepts from a ${blob.length}-byte file (${limit}); it is not a bundle edgekit packed.`);
  }
  if (!globalThis.crypto?.subtle) {
    throw new BundleError("this page cannot check the packed bundle's sha256 here (crypto.subtle needs https or localhost); open it from localhost.");
  }
  const read = (index, name) => {
    const s = streams[index];
    return inflateExactly(payload.subarray(s.offset, s.offset + s.length), s.raw_bytes, name);
  };
  const out = new Map();
  for (const entry of files) {
    let data;
    if (entry.encoding === "whole") {
      data = await read(entry.stream, entry.name);
    } else {
      data = await spliceSparse(entry, read);
    }
    if ((await sha256Hex(data)) !== entry.sha256) {
      throw new BundleError(`'${entry.name}' in the packed bundle does not match its sha256; the download is corrupted, download it again.`);
    }
    out.set(entry.name, data);
  }
  return out;
}

// A sparse file rebuilt: skeleton bytes up to each segment, then its elements: zero where the
// segment's mask bit (most significant first) is 0, else the next element of its item size, whose
// bytes are stored as planes (all first bytes, then all second bytes, ...).
async function spliceSparse(entry, read) {
  const parts = entry.streams;
  const skeleton = await read(parts.skeleton, entry.name);
  const masks = await read(parts.masks, entry.name);
  const planes = new Map();
  const next = new Map();
  for (const key of Object.keys(parts)) {
    if (key.startsWith("values")) {
      const k = Number(key.slice(6));
      planes.set(k, await read(parts[key], entry.name));
      next.set(k, 0);
    }
  }
  const out = new Uint8Array(entry.bytes);
  let written = 0, sk = 0, mk = 0;
  for (const [offset, length, itemsize] of entry.segments) {
    const take = offset - written;
    out.set(skeleton.subarray(sk, sk + take), written);
    sk += take;
    written += take;
    const values = planes.get(itemsize);
    const count = values.length / itemsize;
    let j = next.get(itemsize);
    const elements = length / itemsize;
    for (let i = 0; i < elements; i++) {
      if (masks[mk + (i >> 3)] & (0x80 >> (i & 7))) {
        if (j >= count) throw new BundleError(`'${entry.name}' has fewer non-zero values than its masks mark; the pack is corrupted.`);
        for (let b = 0; b < itemsize; b++) out[written + i * itemsize + b] = values[b * count + j];
        j++;
      }
    }
    next.set(itemsize, j);
    mk += Math.ceil(elements / 8);
    written += length;
  }
  out.set(skeleton.subarray(sk), written);
  for (const [k, values] of planes) {
    if (next.get(k) !== values.length / k) throw new BundleError(`'${entry.name}' has more non-zero values than its masks mark; the pack is corrupted.`);
  }
  return out;
}

export function softmax(logits) {
  const max = Math.max(...logits);
  const e = logits.map((z) => Math.exp(z - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / sum);
}

export function entropy(logits) {
  // Entropy of the softmax in nats, as edgekit_device.runtime.prediction_entropy.
  const max = Math.max(...logits);
  const z = logits.map((x) => x - max);
  const logSum = Math.log(z.reduce((a, x) => a + Math.exp(x), 0));
  return -z.reduce((a, x) => a + Math.exp(x - logSum) * (x - logSum), 0);
}

export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i; // first maximum, as numpy
  return best;
}

// Copy `data` (row-major, shape `dims`) into a new array whose `axis` has `size` entries:
// padded with `value` or cut.
function resizeAxis(data, dims, axis, size, value) {
  const outer = dims.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const out = new data.constructor(outer * size * inner);
  if (value !== 0 && value !== 0n) out.fill(value);
  const keep = Math.min(size, dims[axis]) * inner;
  for (let o = 0; o < outer; o++) {
    out.set(data.subarray(o * dims[axis] * inner, o * dims[axis] * inner + keep), o * size * inner);
  }
  const newDims = dims.slice();
  newDims[axis] = size;
  return [out, newDims];
}

export class WebPredictor {
  constructor(ort, manifest, labels, tokenizer, sessions) {
    this.ort = ort;
    this.manifest = manifest;
    this.labels = labels;
    this.tokenizer = tokenizer;
    this.sessions = sessions;
    this.graphs = manifest.graphs;
    this.layout = manifest.layout;
    this.exits = manifest.exits.layers.slice();
    this.depth = Math.max(...this.exits);
    this.maxLength = manifest.max_length;
    this.pooling = (manifest.model && manifest.model.pooling) || "cls";
  }

  // Fetch manifest.json, the labels, the device tokenizer and the graphs from `base` (a URL
  // ending in "/"), check every file against the manifest's size and sha256, and open one
  // InferenceSession per graph.
  static async load(ort, base, options = {}) {
    const fetchBytes = async (name) => new Uint8Array(await (await fetchOk(new URL(encodeURI(name), base))).arrayBuffer());
    return WebPredictor.fromFiles(ort, fetchBytes, options);
  }

  // The same from one packed bundle (.edgepack, zlib) at `url`: fetched once, decoded here
  // (unpackEdgePack: every file's sha256 against the pack header), then every file checked
  // against manifest.json as above.
  static async loadPacked(ort, url, options = {}) {
    const { onProgress = () => {} } = options;
    onProgress(`${url.pathname.split("/").pop()} (download)`);
    const pack = new Uint8Array(await (await fetchOk(url)).arrayBuffer());
    onProgress(`${url.pathname.split("/").pop()} (unpacking)`);
    const files = await unpackEdgePack(pack);
    const predictor = await WebPredictor.fromFiles(ort, async (name) => {
      if (!files.has(name)) throw new BundleError(`'${name}' listed in manifest.json is not in the packed bundle; pack the bundle again.`);
      return files.get(name);
    }, options);
    predictor.packBytes = pack.length;
    return predictor;
  }

  static async fromFiles(ort, fetchBytes, { onProgress = () => {}, sessionOptions = {} } = {}) {
    onProgress("manifest.json");
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder("utf-8").decode(await fetchBytes("manifest.json")));
    } catch (e) {
      if (e instanceof BundleError) throw e;
      throw new BundleError("manifest.json is not valid JSON; export the bundle again.");
    }
    if (manifest.format !== "onnx") {
      throw new BundleError(`this is a ${manifest.format} bundle; the browser demo runs ONNX bundles (edgekit export --format onnx).`);
    }
    const files = manifest.files || {};
    const verified = [];
    const bytesOf = async (name) => {
      onProgress(name);
      const bytes = await fetchBytes(name);
      const entry = files[name];
      if (!entry) throw new BundleError(`'${name}' is not listed in manifest.json 'files'.`);
      if (bytes.length !== entry.bytes) {
        throw new BundleError(`'${name}' has ${bytes.length} bytes, manifest.json says ${entry.bytes}; export the bundle again.`);
      }
      const digest = await sha256Hex(bytes);
      if (digest !== null && digest !== entry.sha256) {
        throw new BundleError(`'${name}' does not match its sha256 in manifest.json; the bundle is corrupted.`);
      }
      if (digest !== null) verified.push(name);
      return bytes;
    };
    const text = async (name) => new TextDecoder("utf-8").decode(await bytesOf(name));
    const labels = JSON.parse(await text(manifest.labels.file));
    const tokenizer = new Tokenizer(JSON.parse(await text(manifest.tokenizer.file)));
    const sessions = {};
    for (const [name, graph] of Object.entries(manifest.graphs)) {
      const bytes = await bytesOf(graph.file);
      onProgress(`${graph.file} (compiling)`);
      sessions[name] = await ort.InferenceSession.create(bytes, {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
        ...sessionOptions,
      });
    }
    const pooling = (manifest.model && manifest.model.pooling) || "cls";
    if (pooling !== "cls" && pooling !== "mean") {
      throw new BundleError(`model.pooling '${pooling}' is not one of cls, mean; export the bundle again with this edgekit.`);
    }
    const predictor = new WebPredictor(ort, manifest, labels, tokenizer, sessions);
    predictor.verifiedFiles = verified;
    return predictor;
  }

  get dynamicModes() {
    return this.layout === "per-layer" ? (this.manifest.exits.dynamic || ["patience", "entropy"]) : [];
  }

  static(name, axis) {
    for (const t of this.graphs[name].inputs) {
      const i = t.axes.indexOf(axis);
      if (i >= 0 && Number.isInteger(t.shape[i])) return t.shape[i];
    }
    return null;
  }

  // Run one graph on one example. `feeds`: {input name: [typed array, dims]}; returns
  // {output name: [typed array, dims]}, padding to and cutting from static shapes.
  async run(name, feeds) {
    const spec = Object.fromEntries(this.graphs[name].inputs.map((t) => [t.name, t]));
    const staticSeq = this.static(name, "sequence");
    const staticBatch = this.static(name, "batch");
    const prepared = {};
    let length = null;
    for (const [key, [data0, dims0]] of Object.entries(feeds)) {
      const t = spec[key];
      const Typed = TYPED[t.dtype];
      if (!Typed) throw new BundleError(`graph '${name}' input '${key}' has dtype ${t.dtype}, which this page does not feed.`);
      let data = data0 instanceof Typed ? data0 : Typed.from(data0, (x) => (t.dtype === "int64" ? BigInt(x) : Number(x)));
      let dims = dims0;
      const pad = key === "input_ids" ? this.tokenizer.padId : 0;
      const padValue = t.dtype === "int64" ? BigInt(pad) : pad;
      const seqAxis = t.axes.indexOf("sequence");
      if (seqAxis >= 0) {
        length = dims[seqAxis];
        if (staticSeq !== null) {
          if (length > staticSeq) {
            throw new BundleError(`an input of ${length} tokens is longer than this bundle's fixed length ${staticSeq}.`);
          }
          [data, dims] = resizeAxis(data, dims, seqAxis, staticSeq, padValue);
        }
      }
      const batchAxis = t.axes.indexOf("batch");
      if (batchAxis >= 0 && staticBatch !== null && staticBatch !== dims[batchAxis]) {
        [data, dims] = resizeAxis(data, dims, batchAxis, staticBatch, padValue);
      }
      prepared[key] = new this.ort.Tensor(t.dtype, data, dims);
    }
    const results = await this.sessions[name].run(prepared);
    const outputs = {};
    for (const t of this.graphs[name].outputs) {
      let data = results[t.name].data;
      let dims = results[t.name].dims.slice();
      const batchAxis = t.axes.indexOf("batch");
      if (batchAxis >= 0 && dims[batchAxis] !== 1) [data, dims] = resizeAxis(data, dims, batchAxis, 1, 0);
      const seqAxis = t.axes.indexOf("sequence");
      if (staticSeq !== null && length !== null && seqAxis >= 0) [data, dims] = resizeAxis(data, dims, seqAxis, length, 0);
      outputs[t.name] = [data, dims];
    }
    return outputs;
  }

  async output(name, feeds) {
    return (await this.run(name, feeds))[this.graphs[name].outputs[0].name];
  }

  checkExit(exitLayer) {
    if (exitLayer === null || exitLayer === undefined) return this.depth;
    if (!this.exits.includes(exitLayer)) {
      if (this.layout === "fixed") {
        throw new BundleError(`this bundle computes exactly ${this.exits[0]} layers (a fixed exit); exit layer ${exitLayer} needs a per-layer bundle.`);
      }
      throw new BundleError(`exit layer must be between 1 and ${this.depth}, got ${exitLayer}.`);
    }
    return exitLayer;
  }

  encode(text) {
    return this.tokenizer.encode(text, this.maxLength);
  }

  // The head's logits for one layer's hidden state: a mean-pooled head also takes the mask.
  async head(hidden, maskFeed) {
    const feeds = this.pooling === "mean" ? { hidden, attention_mask: maskFeed } : { hidden };
    return Array.from((await this.output("head", feeds))[0], Number);
  }

  // One text: {ids, labelId, label, scores, logits, exitLayer, layerEvaluations, trace, timings}.
  // options: {mode: "fixed" | "patience" | "entropy", exitLayer, patience, entropyThreshold, maxLayer}
  async predict(text, { mode = "fixed", exitLayer = null, patience = 2, entropyThreshold = 0.1, maxLayer = null } = {}) {
    const t0 = performance.now();
    const ids = this.encode(text);
    const t1 = performance.now();
    const T = ids.length;
    const idsFeed = [BigInt64Array.from(ids, BigInt), [1, T]];
    const maskFeed = [new BigInt64Array(T).fill(1n), [1, T]];
    let logits;
    let layer;
    let evaluations;
    const trace = [];
    if (mode === "fixed") {
      layer = this.checkExit(exitLayer);
      if (this.layout === "fixed") {
        logits = Array.from((await this.output("model", { input_ids: idsFeed, attention_mask: maskFeed }))[0], Number);
      } else {
        let hidden = await this.output("embed", { input_ids: idsFeed });
        for (let k = 0; k < layer; k++) hidden = await this.output("layer", { hidden, attention_mask: maskFeed });
        logits = await this.head(hidden, maskFeed);
      }
      evaluations = layer;
    } else {
      if (this.layout !== "per-layer") {
        throw new BundleError(`dynamic exits need a per-layer bundle; this one computes exactly ${this.exits[0]} layers.`);
      }
      if (mode !== "patience" && mode !== "entropy") throw new BundleError(`mode must be 'patience' or 'entropy', got '${mode}'.`);
      if (mode === "patience" && !(Number.isInteger(patience) && patience >= 1)) {
        throw new BundleError(`patience must be an integer of at least 1, got ${patience}.`);
      }
      if (mode === "entropy" && !(entropyThreshold > 0)) {
        throw new BundleError(`entropy threshold must be greater than 0, got ${entropyThreshold}.`);
      }
      const last = this.checkExit(maxLayer);
      let hidden = await this.output("embed", { input_ids: idsFeed });
      let previous = -1;
      let counter = 0;
      evaluations = 0;
      for (let k = 1; k <= last; k++) {
        hidden = await this.output("layer", { hidden, attention_mask: maskFeed });
        evaluations += 1;
        const here = await this.head(hidden, maskFeed);
        const prediction = argmax(here);
        const h = entropy(here);
        let done;
        if (k === last) done = true;
        else if (mode === "patience") {
          counter = prediction === previous ? counter + 1 : 0;
          previous = prediction;
          done = counter >= patience;
        } else done = h < entropyThreshold;
        trace.push({ layer: k, labelId: prediction, label: this.labels[prediction], score: softmax(here)[prediction], entropy: h });
        if (done) {
          logits = here;
          layer = k;
          break;
        }
      }
    }
    const t2 = performance.now();
    const scores = softmax(logits);
    const labelId = argmax(logits);
    return {
      text,
      ids,
      mode,
      labelId,
      label: this.labels[labelId],
      scores,
      logits,
      exitLayer: layer,
      layerEvaluations: evaluations,
      trace,
      timings: { tokenizeMs: t1 - t0, modelMs: t2 - t1, totalMs: t2 - t0 },
    };
  }
}
