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
  static async load(ort, base, { onProgress = () => {}, sessionOptions = {} } = {}) {
    onProgress("manifest.json");
    const manifest = await (await fetchOk(new URL("manifest.json", base))).json();
    if (manifest.format !== "onnx") {
      throw new BundleError(`this is a ${manifest.format} bundle; the browser demo runs ONNX bundles (edgekit export --format onnx).`);
    }
    const files = manifest.files || {};
    const verified = [];
    const bytesOf = async (name) => {
      onProgress(name);
      const bytes = new Uint8Array(await (await fetchOk(new URL(encodeURI(name), base))).arrayBuffer());
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
