// The device tokenizer (device_tokenizer.json) in JavaScript: a line-by-line port of
// export/edgekit_device/tokenizer.py, the executable specification. Same pipeline, same
// tie-breaking, same ids:
//
//   split out added tokens -> for each remaining segment: normalize -> pre-tokenize -> model
//   -> truncate to max_length - (number of template ids) -> template prefix + ids + suffix
//
// Python indexes strings by code point and JavaScript by UTF-16 unit, so every step that
// counts, slices or steps through characters works on code points here (Array.from(text),
// codePointAt), never on String.length. All Unicode-dependent decisions come from the tables
// in the JSON file, so no Unicode support of the JS engine is used. Runs in browsers and Node.

export const FORMAT = "edgekit-device-tokenizer";
export const VERSION = 2; // the newest version written; version 1 is read too
const UNK_PENALTY = 10.0; // an unknown character scores min_score - 10

export class TokenizerError extends Error {}

const cpOf = (c) => c.codePointAt(0);
const chars = (text) => Array.from(text); // code points, as Python sees a str
const utf8Length = (text) => new TextEncoder().encode(text).length;

// ---------------------------------------------------------------------------------------------
// Version 2 -> version 1 (export/BUNDLE.md, "Version 2"): expand_v2 of the Python reference.
// Ranges [d0, n0, d1, n1, ...]: end = 0, per pair a = end + d, end = a + n; valued ranges
// {value: flat} merged and sorted by start. Scores: bits = cumulative sum of f32, score = the double
// whose 64 bits are those of (double) float32-from-bits plus ulp (BigInt: exact 64-bit add).
// Character maps (precompiled map; codepoint map map, whose keys are then written in hex):
// cumulative codepoints are the keys of replacements, plus other.

const integer = (x, what) => {
  if (!Number.isSafeInteger(x)) throw new TokenizerError(`device tokenizer version 2: ${what} must be an integer; re-export the bundle.`);
  return x;
};

function flatRanges(flat) {
  flat = flat || [];
  if (flat.length % 2) throw new TokenizerError("device tokenizer version 2: a range list has an odd length; re-export the bundle.");
  const out = [];
  let end = 0;
  for (let i = 0; i < flat.length; i += 2) {
    const a = end + integer(flat[i], "a range start");
    end = a + integer(flat[i + 1], "a range length");
    out.push([a, end]);
  }
  return out;
}

function valuedRanges(byValue) {
  const out = [];
  for (const [value, flat] of Object.entries(byValue || {})) for (const [a, z] of flatRanges(flat)) out.push([a, z, value]);
  return out.sort((x, y) => x[0] - y[0]);
}

function decodeScores(encoded, count) {
  const { f32, ulp } = encoded || {};
  if (encoded?.encoding !== "f32-delta+f64-ulp" || f32?.length !== count || ulp?.length !== count) {
    throw new TokenizerError("device tokenizer version 2 has scores in an unknown encoding or of the wrong length; re-export the bundle.");
  }
  const view = new DataView(new ArrayBuffer(8));
  const out = new Array(count);
  let bits = 0;
  for (let i = 0; i < count; i++) {
    bits += integer(f32[i], "a float32 delta");
    if (bits < -0x80000000 || bits > 0x7fffffff) throw new TokenizerError("device tokenizer version 2: a float32 bit pattern is out of range; re-export the bundle.");
    view.setInt32(0, bits);
    const f = view.getFloat32(0);
    const u = integer(ulp[i], "an ulp correction");
    if (u === 0) {
      out[i] = f;
    } else {
      view.setFloat64(0, f);
      view.setBigInt64(0, view.getBigInt64(0) + BigInt(u));
      out[i] = view.getFloat64(0);
    }
  }
  return out;
}

function charMap(m) {
  m = m || {};
  const codepoints = m.codepoints || [];
  const replacements = m.replacements || [];
  if (codepoints.length !== replacements.length) throw new TokenizerError("device tokenizer version 2: map codepoints and replacements differ in length; re-export the bundle.");
  const map = {};
  let cp = 0;
  codepoints.forEach((d, i) => {
    cp += integer(d, "a map codepoint");
    if (cp < 0 || cp > 0x10ffff) throw new TokenizerError("device tokenizer version 2: a map codepoint is out of range; re-export the bundle.");
    map[String.fromCodePoint(cp)] = replacements[i];
  });
  return Object.assign(map, m.other || {});
}

export function expandV2(spec) {
  const normalizer = (spec.normalizer || []).map((s) => {
    const step = { ...s };
    if (step.type === "codepoint_map") {
      for (const key of ["remove", "space", "pad"]) step[key] = flatRanges(step[key]);
      const hex = {};
      for (const [k, v] of Object.entries(charMap(step.map))) {
        if (chars(k).length !== 1) throw new TokenizerError("device tokenizer version 2: a codepoint map key is not one codepoint; re-export the bundle.");
        hex[cpOf(k).toString(16).toUpperCase()] = v;
      }
      step.map = hex;
    } else if (step.type === "precompiled") {
      const g = step.graphemes || {};
      step.map = charMap(step.map);
      step.graphemes = { ...g, gcb: valuedRanges(g.gcb), incb: valuedRanges(g.incb),
                         extended_pictographic: flatRanges(g.extended_pictographic) };
    }
    return step;
  });
  const preTokenizer = (spec.pre_tokenizer || []).map((s) => {
    const step = { ...s };
    if (step.type === "bert") {
      step.whitespace = flatRanges(step.whitespace);
      step.punctuation = flatRanges(step.punctuation);
    } else if (step.type === "isolate") {
      step.ranges = flatRanges(step.ranges);
    }
    return step;
  });
  let model = spec.model;
  if (model?.type === "unigram") {
    const { scores, ...rest } = model;
    const pieces = rest.pieces || [];
    const values = decodeScores(scores, pieces.length);
    model = { ...rest, pieces: pieces.map((p, i) => [p, values[i]]) };
  }
  return { ...spec, version: 1, normalizer, pre_tokenizer: preTokenizer, model };
}

// ---------------------------------------------------------------------------------------------
// Codepoint range tables: [[first, last], ...] sorted, inclusive; or [[first, last, value], ...]

export class RangeSet {
  constructor(ranges) {
    ranges = ranges || [];
    this.starts = ranges.map((r) => Number(r[0]));
    this.ends = ranges.map((r) => Number(r[1]));
    this.values = ranges.map((r) => (r.length > 2 ? r[2] : true));
  }

  get(cp, fallback = undefined) {
    // bisect_right(starts, cp) - 1
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cp < this.starts[mid]) hi = mid;
      else lo = mid + 1;
    }
    const i = lo - 1;
    if (i >= 0 && cp <= this.ends[i]) return this.values[i];
    return fallback;
  }

  has(cp) {
    const v = this.get(cp);
    return v !== undefined && v !== null;
  }
}

// ---------------------------------------------------------------------------------------------
// Grapheme clusters (UAX #29 extended grapheme clusters; the Precompiled normalizer needs them)

class Graphemes {
  constructor(spec) {
    this.gcb = new RangeSet(spec.gcb);
    this.pict = new RangeSet(spec.extended_pictographic);
    this.incb = new RangeSet(spec.incb || []);
  }

  split(text) {
    const cs = chars(text);
    if (cs.length === 0) return [];
    const clusters = [];
    let start = 0;
    const props = cs.map((c) => this.gcb.get(cpOf(c), "Other"));
    let riRun = 0;
    let emojiZwj = false;
    let pictExt = false;
    let incbState = 0;
    for (let i = 0; i < cs.length; i++) {
      const cp = cpOf(cs[i]);
      const p = props[i];
      if (i > 0 && this.isBreak(props[i - 1], p, cp, riRun, emojiZwj, incbState)) {
        clusters.push(cs.slice(start, i).join(""));
        start = i;
      }
      riRun = p === "Regional_Indicator" ? riRun + 1 : 0;
      emojiZwj = p === "ZWJ" && pictExt;
      if (this.pict.has(cp)) pictExt = true;
      else if (p !== "Extend") pictExt = false;
      const incb = this.incb.get(cp);
      if (incb === "Consonant") incbState = 1;
      else if (incb === "Linker" && incbState) incbState = 2;
      else if (incb === "Extend" && incbState) {
        // unchanged
      } else incbState = 0;
    }
    clusters.push(cs.slice(start).join(""));
    return clusters;
  }

  isBreak(prev, cur, cp, riRun, emojiZwj, incbState) {
    const control = (p) => p === "Control" || p === "CR" || p === "LF";
    if (prev === "CR" && cur === "LF") return false; // GB3
    if (control(prev) || control(cur)) return true; // GB4, GB5
    if (prev === "L" && (cur === "L" || cur === "V" || cur === "LV" || cur === "LVT")) return false; // GB6
    if ((prev === "LV" || prev === "V") && (cur === "V" || cur === "T")) return false; // GB7
    if ((prev === "LVT" || prev === "T") && cur === "T") return false; // GB8
    if (cur === "Extend" || cur === "ZWJ" || cur === "SpacingMark" || prev === "Prepend") return false; // GB9, 9a, 9b
    if (incbState === 2 && this.incb.get(cp) === "Consonant") return false; // GB9c
    if (emojiZwj && this.pict.has(cp)) return false; // GB11
    if (prev === "Regional_Indicator" && cur === "Regional_Indicator" && riRun % 2 === 1) return false; // GB12, 13
    return true; // GB999
  }
}

// ---------------------------------------------------------------------------------------------
// Normalizers: string -> string

function codepointMap(spec) {
  const remove = new RangeSet(spec.remove);
  const space = new RangeSet(spec.space);
  const pad = new RangeSet(spec.pad);
  const map = new Map(Object.entries(spec.map || {}).map(([k, v]) => [parseInt(k, 16), v]));
  return (text) => {
    const out = [];
    for (const c of text) {
      const cp = cpOf(c);
      const mapped = map.get(cp);
      if (mapped !== undefined) out.push(mapped);
      else if (remove.has(cp)) continue;
      else if (space.has(cp)) out.push(" ");
      else if (pad.has(cp)) out.push(" " + c + " ");
      else out.push(c);
    }
    return out.join("");
  };
}

function precompiled(spec) {
  const map = new Map(Object.entries(spec.map));
  let maxKey = 0;
  for (const k of map.keys()) maxKey = Math.max(maxKey, chars(k).length);
  const graphemes = new Graphemes(spec.graphemes);
  const shortestPrefix = (cs) => {
    const n = Math.min(cs.length, maxKey);
    let key = "";
    for (let i = 0; i < n; i++) {
      key += cs[i];
      const hit = map.get(key);
      if (hit !== undefined) return hit;
    }
    return undefined;
  };
  return (text) => {
    const out = [];
    for (const cluster of graphemes.split(text)) {
      const cs = chars(cluster);
      if (utf8Length(cluster) < 6) {
        const hit = shortestPrefix(cs);
        if (hit !== undefined) {
          out.push(hit);
          continue;
        }
      }
      for (const c of cs) {
        const hit = map.get(c);
        out.push(hit === undefined ? c : hit);
      }
    }
    return out.join("");
  };
}

function replace(spec) {
  const content = spec.content;
  if (spec.regex !== undefined) {
    let pattern;
    try {
      pattern = new RegExp(spec.regex, "gu"); // code points, as Python's re on a str
    } catch {
      pattern = new RegExp(spec.regex, "g");
    }
    return (text) => text.replace(pattern, () => content);
  }
  const needle = spec.string;
  return (text) => text.split(needle).join(content);
}

const NORMALIZERS = { codepoint_map: codepointMap, precompiled, replace };

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers: string[] -> string[]

function bertSplit(spec) {
  const whitespace = new RangeSet(spec.whitespace);
  const punctuation = new RangeSet(spec.punctuation);
  return (words) => {
    const out = [];
    for (const word of words) {
      let current = [];
      for (const c of word) {
        const cp = cpOf(c);
        if (whitespace.has(cp)) {
          if (current.length) {
            out.push(current.join(""));
            current = [];
          }
        } else if (punctuation.has(cp)) {
          if (current.length) {
            out.push(current.join(""));
            current = [];
          }
          out.push(c);
        } else current.push(c);
      }
      if (current.length) out.push(current.join(""));
    }
    return out;
  };
}

function metaspace(spec) {
  const replacement = spec.replacement;
  const prepend = spec.prepend_scheme ?? "always";
  if (prepend !== "always" && prepend !== "never") {
    throw new TokenizerError(`device tokenizer: Metaspace prepend_scheme ${JSON.stringify(prepend)} is not supported.`);
  }
  if (spec.split) throw new TokenizerError("device tokenizer: Metaspace with split=true is not supported.");
  return (words) =>
    words.map((word) => {
      word = word.split(" ").join(replacement);
      if (word && prepend === "always" && !word.startsWith(replacement)) word = replacement + word;
      return word;
    });
}

function isolate(spec) {
  const ranges = new RangeSet(spec.ranges);
  return (words) => {
    const out = [];
    for (const word of words) {
      let current = [];
      for (const c of word) {
        if (ranges.has(cpOf(c))) {
          if (current.length) {
            out.push(current.join(""));
            current = [];
          }
          out.push(c);
        } else current.push(c);
      }
      if (current.length) out.push(current.join(""));
    }
    return out;
  };
}

const PRE_TOKENIZERS = { bert: bertSplit, metaspace, isolate };

// ---------------------------------------------------------------------------------------------
// Models: one word -> ids

function wordPiece(spec) {
  const vocab = new Map();
  spec.vocab.forEach((piece, i) => vocab.set(piece, i)); // a repeated piece keeps its last id, as a dict comprehension
  const unkId = Number(spec.unk_id);
  const prefix = spec.continuing_subword_prefix ?? "##";
  const maxChars = Number(spec.max_input_chars_per_word ?? 100);
  return (word) => {
    const cs = chars(word);
    if (cs.length > maxChars) return [unkId];
    const ids = [];
    let start = 0;
    while (start < cs.length) {
      let end = cs.length;
      let found;
      while (start < end) {
        const sub = cs.slice(start, end).join("");
        found = vocab.get(start === 0 ? sub : prefix + sub);
        if (found !== undefined) break;
        end -= 1;
      }
      if (found === undefined) return [unkId];
      ids.push(found);
      start = end;
    }
    return ids;
  };
}

function unigram(spec) {
  const pieces = spec.pieces;
  const vocab = new Map();
  const scores = new Float64Array(pieces.length);
  let maxLen = 0;
  let minScore = Infinity;
  pieces.forEach(([piece, score], i) => {
    if (!vocab.has(piece)) vocab.set(piece, i); // the first id of a repeated piece (setdefault)
    scores[i] = Number(score);
    if (scores[i] < minScore) minScore = scores[i];
    maxLen = Math.max(maxLen, chars(piece).length);
  });
  if (pieces.length === 0) {
    maxLen = 1;
    minScore = 0.0;
  }
  const unkId = Number(spec.unk_id);
  const fuseUnk = spec.fuse_unk === undefined ? true : Boolean(spec.fuse_unk);
  const unkScore = minScore - UNK_PENALTY;
  return (word) => {
    const cs = chars(word);
    const n = cs.length;
    if (n === 0) return [];
    // offsets[i]: UTF-16 index of code point i, so slices are word.slice(offsets[a], offsets[b])
    const offsets = new Array(n + 1);
    offsets[0] = 0;
    for (let i = 0; i < n; i++) offsets[i + 1] = offsets[i] + cs[i].length;
    const slice = (a, b) => word.slice(offsets[a], offsets[b]);
    const best = new Array(n + 1).fill(null); // best[end] = [score, start, id]
    best[0] = [0.0, -1, -1];
    for (let start = 0; start < n; start++) {
      const here = best[start][0];
      let single = false;
      const top = Math.min(maxLen, n - start);
      for (let length = 1; length <= top; length++) {
        const pieceId = vocab.get(slice(start, start + length));
        if (pieceId === undefined) continue;
        const candidate = here + scores[pieceId];
        const end = start + length;
        if (best[end] === null || candidate > best[end][0]) best[end] = [candidate, start, pieceId];
        if (length === 1) single = true;
      }
      if (!single) {
        const candidate = here + unkScore;
        if (best[start + 1] === null || candidate > best[start + 1][0]) best[start + 1] = [candidate, start, unkId];
      }
    }
    const out = []; // piece texts, read backwards
    let end = n;
    let unkRun = [];
    while (end > 0) {
      const [, start, pieceId] = best[end];
      if (fuseUnk && pieceId === unkId) unkRun.push(slice(start, end));
      else {
        if (unkRun.length) {
          out.push(unkRun.reverse().join(""));
          unkRun = [];
        }
        out.push(slice(start, end));
      }
      end = start;
    }
    if (unkRun.length) out.push(unkRun.reverse().join(""));
    return out.reverse().map((text) => {
      const id = vocab.get(text);
      return id === undefined ? unkId : id;
    });
  };
}

const MODELS = { wordpiece: wordPiece, unigram };

// ---------------------------------------------------------------------------------------------
// The tokenizer

export class Tokenizer {
  constructor(spec) {
    if (spec.format !== FORMAT || (spec.version !== 1 && spec.version !== 2)) {
      throw new TokenizerError(
        `device tokenizer has format ${JSON.stringify(spec.format)} version ${JSON.stringify(spec.version)}; ` +
          `this page reads ${JSON.stringify(FORMAT)} versions 1 and 2.`,
      );
    }
    if (spec.version === 2) spec = expandV2(spec);
    const need = (value, key) => {
      if (value === undefined || value === null) {
        throw new TokenizerError(`device tokenizer is missing or has an unknown entry '${key}'; re-export the bundle.`);
      }
      return value;
    };
    this.spec = spec;
    this.type = need(spec.type, "type");
    this.normalizers = need(spec.normalizer, "normalizer").map((s) => need(NORMALIZERS[s.type], s.type)(s));
    this.preTokenizers = need(spec.pre_tokenizer, "pre_tokenizer").map((s) => need(PRE_TOKENIZERS[s.type], s.type)(s));
    const model = need(spec.model, "model");
    this.model = need(MODELS[model.type], model.type)(model);
    const special = need(spec.special, "special");
    this.padId = Number(need(special.pad_id, "pad_id"));
    this.unkId = Number(need(special.unk_id, "unk_id"));
    const template = need(spec.template, "template");
    this.prefix = need(template.prefix, "prefix").map(Number);
    this.suffix = need(template.suffix, "suffix").map(Number);
    const split = Boolean(spec.split_special_tokens ?? false);
    // Added tokens are matched in the raw text, except special ones when split_special_tokens.
    this.added = (spec.added_tokens || [])
      .filter((t) => t.content && !(split && (t.special ?? true)))
      .map((t) => [t.content, Number(t.id), chars(t.content).length])
      .sort((a, b) => b[2] - a[2]); // stable: equal lengths keep the file's order
  }

  get numSpecial() {
    return this.prefix.length + this.suffix.length;
  }

  splitAdded(text) {
    // Leftmost-longest matches of added tokens: [[segment, null] | [token, id]]
    if (!this.added.length) return [[text, null]];
    const cs = chars(text);
    const offsets = new Array(cs.length + 1);
    offsets[0] = 0;
    for (let k = 0; k < cs.length; k++) offsets[k + 1] = offsets[k] + cs[k].length;
    const out = [];
    let start = 0;
    let i = 0;
    while (i < cs.length) {
      let matched = false;
      for (const [content, id, length] of this.added) {
        if (text.startsWith(content, offsets[i])) {
          if (start < i) out.push([text.slice(offsets[start], offsets[i]), null]);
          out.push([content, id]);
          i += length;
          start = i;
          matched = true;
          break;
        }
      }
      if (!matched) i += 1;
    }
    if (start < cs.length) out.push([text.slice(offsets[start]), null]);
    return out;
  }

  tokenizeIds(text) {
    // Ids of `text` without the template's special ids and without truncation.
    const ids = [];
    for (let [segment, id] of this.splitAdded(text)) {
      if (id !== null) {
        ids.push(id);
        continue;
      }
      for (const normalize of this.normalizers) segment = normalize(segment);
      let words = [segment];
      for (const preTokenize of this.preTokenizers) words = preTokenize(words);
      for (const word of words) for (const x of this.model(word)) ids.push(x);
    }
    return ids;
  }

  encode(text, maxLength = null) {
    // Template ids around the text's ids, the text's ids cut so the total fits maxLength.
    let ids = this.tokenizeIds(text);
    if (maxLength !== null && maxLength !== undefined) ids = ids.slice(0, Math.max(0, maxLength - this.numSpecial));
    return [...this.prefix, ...ids, ...this.suffix];
  }
}
