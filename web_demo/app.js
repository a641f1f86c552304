// The demo page: load the bundle served under bundle/, then classify what the user types.
//
// The last prediction is also written, unrounded, to #result as data-json (with data-state
// "done" and data-seq counting predictions), which the end-to-end test reads.

import * as ort from "./ort/ort.wasm.min.mjs";
import { WebPredictor } from "./runtime.js";

const $ = (id) => document.getElementById(id);
const EXAMPLES = [
  "这家店的菜很好吃，服务也很热情！",
  "物流太慢了，包装也破了，再也不买了。",
  "iPhone 15 的电池续航怎么样？",
  "今天天气不错, let's go hiking 吧 😀",
];
const ms = (x) => (x < 10 ? x.toFixed(2) : x.toFixed(1)) + " ms";
const fmtBytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(2) + " MiB" : (n / 1024).toFixed(1) + " KiB");

// Single-threaded wasm: no cross-origin isolation needed, and the phone-like case.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
ort.env.logLevel = "error";

let predictor = null;
let seq = 0;
let busy = false;

function setStatus(text, state = "loading") {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showBundle(p) {
  const m = p.manifest;
  const exits = p.layout === "fixed" ? `exactly ${p.exits[0]} layers (fixed)` : `any of 1–${p.depth}, fixed or dynamic`;
  const rows = [
    ["model", `ALBERT, ${m.model.num_layers} layers${m.model.shared_layer ? " (one shared layer)" : ""}, hidden ${m.model.hidden_size}, ` +
      `${(m.model.nonzero_parameters ?? m.model.parameters).toLocaleString()} non-zero parameters`],
    ["graphs", `${m.format} ${m.precision}, ${p.layout}: ${Object.values(m.graphs).map((g) => g.file).join(", ")}`],
    ["exits", exits],
    ["labels", p.labels.join(" · ")],
    ["tokenizer", `${m.tokenizer.type}, max ${m.max_length} tokens`],
    ["download", (p.packBytes ? `${fmtBytes(p.packBytes)} packed (.edgepack, decoded here), ` : "") +
      `${fmtBytes(m.sizes?.dense_bytes ?? 0)} unpacked (gzip ${fmtBytes(m.sizes?.gzip_bytes ?? 0)})` +
      (p.verifiedFiles.length ? `, sha256 checked` : "")],
  ];
  const dl = $("bundle-info");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
}

function setupControls(p) {
  const mode = $("mode");
  for (const option of mode.options) {
    option.disabled = option.value !== "fixed" && !p.dynamicModes.includes(option.value);
  }
  const select = $("exit-layer");
  select.replaceChildren(...p.exits.map((k) => new Option(String(k), String(k))));
  select.value = String(p.depth);
  const sync = () => {
    const dynamic = mode.value !== "fixed";
    $("exit-layer-label").textContent = dynamic ? "Max layer" : "Exit layer";
    for (const el of document.querySelectorAll(".dynamic-only")) el.hidden = el.dataset.mode !== mode.value;
  };
  mode.addEventListener("change", sync);
  sync();
  for (const id of ["text", "mode", "exit-layer", "patience", "entropy", "run"]) $(id).disabled = false;
  const examples = $("examples");
  for (const text of EXAMPLES) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.addEventListener("click", () => {
      $("text").value = text;
      classify();
    });
    examples.append(b);
  }
}

function options() {
  return {
    mode: $("mode").value,
    exitLayer: $("mode").value === "fixed" ? Number($("exit-layer").value) : null,
    maxLayer: $("mode").value === "fixed" ? null : Number($("exit-layer").value),
    patience: Number($("patience").value),
    entropyThreshold: Number($("entropy").value),
  };
}

function render(r) {
  $("label").textContent = r.label;
  $("exit-out").textContent = `${r.exitLayer} of ${predictor.depth}` + (r.mode === "fixed" ? "" : ` (${r.mode})`);
  $("latency").textContent = ms(r.timings.totalMs);
  $("latency").title = `tokenize ${ms(r.timings.tokenizeMs)}, model ${ms(r.timings.modelMs)}`;
  $("tokens").textContent = String(r.ids.length);
  const body = $("scores").tBodies[0];
  body.replaceChildren();
  r.scores.forEach((s, i) => {
    const tr = body.insertRow();
    tr.className = i === r.labelId ? "top" : "";
    tr.dataset.label = predictor.labels[i];
    tr.insertCell().textContent = predictor.labels[i];
    tr.insertCell().textContent = s.toFixed(4);
    const bar = tr.insertCell();
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * s).toFixed(2)}%`;
    bar.append(fill);
  });
  const traceBody = $("trace").tBodies[0];
  traceBody.replaceChildren();
  for (const t of r.trace) {
    const tr = traceBody.insertRow();
    tr.className = t.layer === r.exitLayer ? "exit" : "";
    for (const v of [t.layer, t.label, t.score.toFixed(4), t.entropy.toFixed(4)]) tr.insertCell().textContent = String(v);
  }
  $("trace-box").hidden = r.trace.length === 0;
  $("trace-box").open = r.trace.length > 0;
}

async function classify() {
  if (!predictor || busy) return;
  busy = true;
  $("run").disabled = true;
  const result = $("result");
  result.dataset.state = "running";
  $("error").hidden = true;
  try {
    const r = await predictor.predict($("text").value, options());
    render(r);
    seq += 1;
    result.dataset.json = JSON.stringify({
      text: r.text, ids: r.ids, label: r.label, label_id: r.labelId, scores: r.scores, logits: r.logits,
      exit_layer: r.exitLayer, mode: r.mode, layer_evaluations: r.layerEvaluations, latency_ms: r.timings.totalMs,
    });
    result.dataset.seq = String(seq);
    result.dataset.state = "done";
  } catch (e) {
    seq += 1;
    $("error").textContent = `error: ${e.message}`;
    $("error").hidden = false;
    result.dataset.seq = String(seq);
    result.dataset.state = "error";
  } finally {
    busy = false;
    $("run").disabled = false;
  }
}

async function main() {
  $("engine").textContent = `onnxruntime-web ${ort.env.versions?.web ?? ""} (wasm, 1 thread)`;
  try {
    const t0 = performance.now();
    // `?pack=NAME`: the packed download (what `edgekit demo web BUNDLE.edgepack` serves), decoded here.
    const pack = new URLSearchParams(location.search).get("pack");
    const onProgress = (what) => setStatus(`Loading ${what}…`);
    predictor = pack
      ? await WebPredictor.loadPacked(ort, new URL(pack, location.href), { onProgress })
      : await WebPredictor.load(ort, new URL("bundle/", location.href), { onProgress });
    await predictor.predict("warm-up 预热", { mode: "fixed", exitLayer: predictor.depth }); // first run allocates
    showBundle(predictor);
    setupControls(predictor);
    setStatus(`Ready: loaded and checked in ${ms(performance.now() - t0)}.`, "ready");
    document.body.dataset.ready = "true";
  } catch (e) {
    setStatus(`error: ${e.message}`, "error");
    document.body.dataset.ready = "error";
    return;
  }
  $("run").addEventListener("click", classify);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      classify();
    }
  });
}

main();
