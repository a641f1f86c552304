package io.edgekit.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The device tokenizer: {@code device_tokenizer.json} executed in plain Java.
 *
 * <p>A line-by-line port of {@code export/edgekit_device/tokenizer.py}, the executable
 * specification; the class and method names are the Python ones. Everything that depends on Unicode
 * tables is data in the JSON file, so no {@link Character} property is consulted and the ids do not
 * depend on the phone's Java or ICU version.
 *
 * <p>Python strings index code points, Java strings UTF-16 units: every step here works on code
 * point arrays ({@code int[]}), so a "character" (lengths, slicing, {@code max_input_chars_per_word},
 * the longest piece) means a code point exactly as in the reference.
 *
 * <pre>
 * split out added tokens  ->  for each remaining segment:  normalize -> pre-tokenize -> model
 * ->  truncate to max_length - (number of template ids)  ->  template prefix + ids + suffix
 * </pre>
 */
public final class Tokenizer {
    public static final String FORMAT = "edgekit-device-tokenizer";
    /** The newest version written; version 1 is read too. */
    public static final int VERSION = 2;
    /** SentencePiece / tokenizers: an unknown character scores min_score - 10. */
    static final double UNK_PENALTY = 10.0;

    // ---------------------------------------------------------------------------------------------
    // Code point helpers

    static int[] cps(String s) {
        int[] out = new int[s.codePointCount(0, s.length())];
        for (int i = 0, k = 0; i < s.length(); k++) {
            int cp = s.codePointAt(i);
            out[k] = cp;
            i += Character.charCount(cp);
        }
        return out;
    }

    static String str(int[] cps, int from, int to) {
        return new String(cps, from, to - from);
    }

    static String str(int cp) {
        return new String(Character.toChars(cp));
    }

    static int length(String s) {
        return s.codePointCount(0, s.length());
    }

    // ---------------------------------------------------------------------------------------------
    // Codepoint range tables: [[first, last], ...] sorted, inclusive; or [[first, last, value], ...]

    /** Membership in sorted inclusive codepoint ranges. */
    static final class RangeSet {
        final int[] starts;
        final int[] ends;
        final Object[] values;

        RangeSet(Object ranges) {
            List<Object> list = ranges == null ? Collections.emptyList() : Json.asList(ranges, "ranges");
            starts = new int[list.size()];
            ends = new int[list.size()];
            values = new Object[list.size()];
            for (int i = 0; i < list.size(); i++) {
                List<Object> r = Json.asList(list.get(i), "range");
                starts[i] = Json.asInt(r.get(0), "range start");
                ends[i] = Json.asInt(r.get(1), "range end");
                values[i] = r.size() > 2 ? r.get(2) : Boolean.TRUE;
            }
        }

        Object get(int cp) {
            // bisect_right(starts, cp) - 1: the last range starting at or before cp
            int lo = 0;
            int hi = starts.length;
            while (lo < hi) {
                int mid = (lo + hi) >>> 1;
                if (cp < starts[mid]) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            int i = lo - 1;
            if (i >= 0 && cp <= ends[i]) {
                return values[i];
            }
            return null;
        }

        Object get(int cp, Object fallback) {
            Object v = get(cp);
            return v == null ? fallback : v;
        }

        boolean contains(int cp) {
            return get(cp) != null;
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Grapheme clusters (UAX #29 extended grapheme clusters; the Precompiled normalizer needs them)

    /**
     * Splits text into extended grapheme clusters with the property tables of the JSON file:
     * {@code gcb} (Grapheme_Cluster_Break), {@code extended_pictographic}, {@code incb}
     * (Indic_Conjunct_Break).
     */
    static final class Graphemes {
        final RangeSet gcb;
        final RangeSet pict;
        final RangeSet incb;

        Graphemes(Map<String, Object> spec) {
            gcb = new RangeSet(spec.get("gcb"));
            pict = new RangeSet(spec.get("extended_pictographic"));
            incb = new RangeSet(spec.get("incb"));
        }

        /** Cluster boundaries of {@code cps}: cluster k is cps[bounds[k]..bounds[k+1]). */
        List<int[]> split(int[] text) {
            List<int[]> clusters = new ArrayList<>();
            if (text.length == 0) {
                return clusters;
            }
            int start = 0;
            String[] props = new String[text.length];
            for (int i = 0; i < text.length; i++) {
                props[i] = (String) gcb.get(text[i], "Other");
            }
            int riRun = 0;            // regional indicators in a row ending at i-1 (GB12/13)
            boolean emojiZwj = false; // i-1 is ZWJ preceded by ExtPict Extend* (GB11)
            boolean pictExt = false;  // ExtPict Extend* ends at i-1
            int incbState = 0;        // 0 none, 1 Consonant [Extend|Linker]* seen, 2 ... with a Linker (GB9c)
            for (int i = 0; i < text.length; i++) {
                int cp = text[i];
                String p = props[i];
                if (i > 0 && isBreak(props[i - 1], p, cp, riRun, emojiZwj, incbState)) {
                    clusters.add(Arrays.copyOfRange(text, start, i));
                    start = i;
                }
                riRun = p.equals("Regional_Indicator") ? riRun + 1 : 0;
                emojiZwj = p.equals("ZWJ") && pictExt;
                if (pict.contains(cp)) {
                    pictExt = true;
                } else if (!p.equals("Extend")) {
                    pictExt = false;
                }
                Object incbValue = incb.get(cp);
                if ("Consonant".equals(incbValue)) {
                    incbState = 1;
                } else if ("Linker".equals(incbValue) && incbState != 0) {
                    incbState = 2;
                } else if ("Extend".equals(incbValue) && incbState != 0) {
                    // unchanged
                } else {
                    incbState = 0;
                }
            }
            clusters.add(Arrays.copyOfRange(text, start, text.length));
            return clusters;
        }

        private static boolean in(String p, String a, String b, String c) {
            return p.equals(a) || p.equals(b) || p.equals(c);
        }

        boolean isBreak(String prev, String cur, int cp, int riRun, boolean emojiZwj, int incbState) {
            if (prev.equals("CR") && cur.equals("LF")) {                                          // GB3
                return false;
            }
            if (in(prev, "Control", "CR", "LF") || in(cur, "Control", "CR", "LF")) {              // GB4, GB5
                return true;
            }
            if (prev.equals("L") && (in(cur, "L", "V", "LV") || cur.equals("LVT"))) {            // GB6
                return false;
            }
            if ((prev.equals("LV") || prev.equals("V")) && (cur.equals("V") || cur.equals("T"))) { // GB7
                return false;
            }
            if ((prev.equals("LVT") || prev.equals("T")) && cur.equals("T")) {                    // GB8
                return false;
            }
            if (in(cur, "Extend", "ZWJ", "SpacingMark") || prev.equals("Prepend")) {            // GB9, GB9a, GB9b
                return false;
            }
            if (incbState == 2 && "Consonant".equals(incb.get(cp))) {                           // GB9c
                return false;
            }
            if (emojiZwj && pict.contains(cp)) {                                                 // GB11
                return false;
            }
            if (prev.equals("Regional_Indicator") && cur.equals("Regional_Indicator") && riRun % 2 == 1) { // GB12, GB13
                return false;
            }
            return true;                                                                          // GB999
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Normalizers

    interface Normalizer {
        String apply(String text);
    }

    /**
     * Per-codepoint rewriting (BERT's normalizer): {@code map} first, then {@code remove},
     * {@code space} (becomes " "), {@code pad} (becomes " c "); other characters are kept.
     */
    static final class CodepointMap implements Normalizer {
        final RangeSet remove;
        final RangeSet space;
        final RangeSet pad;
        final Map<Integer, String> map = new HashMap<>();

        CodepointMap(Map<String, Object> spec) {
            remove = new RangeSet(spec.get("remove"));
            space = new RangeSet(spec.get("space"));
            pad = new RangeSet(spec.get("pad"));
            Object m = spec.get("map");
            if (m != null) {
                for (Map.Entry<String, Object> e : Json.asObject(m, "map").entrySet()) {
                    map.put(Integer.parseInt(e.getKey(), 16), Json.asString(e.getValue(), "map value"));
                }
            }
        }

        @Override
        public String apply(String text) {
            StringBuilder out = new StringBuilder(text.length() + 8);
            for (int cp : cps(text)) {
                String mapped = map.get(cp);
                if (mapped != null) {
                    out.append(mapped);
                } else if (remove.contains(cp)) {
                    continue;
                } else if (space.contains(cp)) {
                    out.append(' ');
                } else if (pad.contains(cp)) {
                    out.append(' ').appendCodePoint(cp).append(' ');
                } else {
                    out.appendCodePoint(cp);
                }
            }
            return out.toString();
        }
    }

    /**
     * SentencePiece's precompiled charsmap as {@code tokenizers.normalizers.Precompiled} applies it:
     * a grapheme cluster shorter than 6 UTF-8 bytes whose beginning matches a key is replaced WHOLE
     * by the replacement of the SHORTEST matching key; otherwise each character is looked up alone.
     */
    static final class Precompiled implements Normalizer {
        final Map<String, String> map = new HashMap<>();
        final int maxKey;
        final Graphemes graphemes;

        Precompiled(Map<String, Object> spec) {
            int longest = 0;
            for (Map.Entry<String, Object> e : Json.asObject(spec.get("map"), "map").entrySet()) {
                map.put(e.getKey(), Json.asString(e.getValue(), "map value"));
                longest = Math.max(longest, length(e.getKey()));
            }
            maxKey = longest;
            graphemes = new Graphemes(Json.asObject(spec.get("graphemes"), "graphemes"));
        }

        private String shortestPrefix(int[] chunk) {
            for (int n = 1; n <= Math.min(chunk.length, maxKey); n++) {
                String hit = map.get(str(chunk, 0, n));
                if (hit != null) {
                    return hit;
                }
            }
            return null;
        }

        static int utf8Length(int[] cluster) {
            int bytes = 0;
            for (int cp : cluster) {
                bytes += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
            }
            return bytes;
        }

        @Override
        public String apply(String text) {
            StringBuilder out = new StringBuilder(text.length());
            for (int[] cluster : graphemes.split(cps(text))) {
                if (utf8Length(cluster) < 6) {
                    String hit = shortestPrefix(cluster);
                    if (hit != null) {
                        out.append(hit);
                        continue;
                    }
                }
                for (int cp : cluster) {
                    String hit = map.get(str(cp));
                    if (hit == null) {
                        out.appendCodePoint(cp);
                    } else {
                        out.append(hit);
                    }
                }
            }
            return out.toString();
        }
    }

    /**
     * Regular-expression replacement (e.g. runs of 2+ spaces -> one space). The pattern is compiled by
     * {@link java.util.regex}; the format only uses patterns both engines read alike (e.g. {@code " {2,}"}).
     */
    static final class Replace implements Normalizer {
        final Pattern pattern;
        final String content;

        Replace(Map<String, Object> spec) {
            pattern = spec.containsKey("regex") ? Pattern.compile(Json.asString(spec.get("regex"), "regex"))
                    : Pattern.compile(Pattern.quote(Json.asString(spec.get("string"), "string")));
            content = Matcher.quoteReplacement(Json.asString(spec.get("content"), "content"));
        }

        @Override
        public String apply(String text) {
            return pattern.matcher(text).replaceAll(content);
        }
    }

    static Normalizer normalizer(Map<String, Object> step) {
        String type = Json.asString(step.get("type"), "normalizer type");
        switch (type) {
            case "codepoint_map":
                return new CodepointMap(step);
            case "precompiled":
                return new Precompiled(step);
            case "replace":
                return new Replace(step);
            default:
                throw new UnknownEntry(type);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Pre-tokenizers: list of words -> list of words

    interface PreTokenizer {
        List<String> apply(List<String> words);
    }

    /** BERT's pre-tokenizer: whitespace separates words and is dropped; punctuation becomes words of its own. */
    static final class BertSplit implements PreTokenizer {
        final RangeSet whitespace;
        final RangeSet punctuation;

        BertSplit(Map<String, Object> spec) {
            whitespace = new RangeSet(required(spec, "whitespace"));
            punctuation = new RangeSet(required(spec, "punctuation"));
        }

        @Override
        public List<String> apply(List<String> words) {
            List<String> out = new ArrayList<>();
            StringBuilder current = new StringBuilder();
            for (String word : words) {
                current.setLength(0);
                for (int cp : cps(word)) {
                    if (whitespace.contains(cp)) {
                        flush(current, out);
                    } else if (punctuation.contains(cp)) {
                        flush(current, out);
                        out.add(str(cp));
                    } else {
                        current.appendCodePoint(cp);
                    }
                }
                flush(current, out);
            }
            return out;
        }
    }

    static void flush(StringBuilder current, List<String> out) {
        if (current.length() > 0) {
            out.add(current.toString());
            current.setLength(0);
        }
    }

    /**
     * SentencePiece's space handling: every " " becomes {@code replacement} (U+2581), and a non-empty
     * word that does not start with it gets one prepended ({@code prepend_scheme} "always").
     */
    static final class Metaspace implements PreTokenizer {
        final String replacement;
        final boolean prepend;

        Metaspace(Map<String, Object> spec) throws BundleException {
            replacement = Json.asString(required(spec, "replacement"), "replacement");
            Object scheme = spec.containsKey("prepend_scheme") ? spec.get("prepend_scheme") : "always";
            if (!"always".equals(scheme) && !"never".equals(scheme)) {
                throw new BundleException("device tokenizer: Metaspace prepend_scheme '" + scheme + "' is not supported.");
            }
            prepend = "always".equals(scheme);
            if (truthy(spec.get("split"))) {
                throw new BundleException("device tokenizer: Metaspace with split=true is not supported.");
            }
        }

        @Override
        public List<String> apply(List<String> words) {
            List<String> out = new ArrayList<>(words.size());
            for (String word : words) {
                word = word.replace(" ", replacement);
                if (!word.isEmpty() && prepend && !word.startsWith(replacement)) {
                    word = replacement + word;
                }
                out.add(word);
            }
            return out;
        }
    }

    /** Every character in {@code ranges} becomes a word of its own. */
    static final class Isolate implements PreTokenizer {
        final RangeSet ranges;

        Isolate(Map<String, Object> spec) {
            ranges = new RangeSet(required(spec, "ranges"));
        }

        @Override
        public List<String> apply(List<String> words) {
            List<String> out = new ArrayList<>();
            StringBuilder current = new StringBuilder();
            for (String word : words) {
                current.setLength(0);
                for (int cp : cps(word)) {
                    if (ranges.contains(cp)) {
                        flush(current, out);
                        out.add(str(cp));
                    } else {
                        current.appendCodePoint(cp);
                    }
                }
                flush(current, out);
            }
            return out;
        }
    }

    static PreTokenizer preTokenizer(Map<String, Object> step) throws BundleException {
        String type = Json.asString(step.get("type"), "pre_tokenizer type");
        switch (type) {
            case "bert":
                return new BertSplit(step);
            case "metaspace":
                return new Metaspace(step);
            case "isolate":
                return new Isolate(step);
            default:
                throw new UnknownEntry(type);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Models: one word -> ids

    interface Model {
        void encode(String word, IntList ids);
    }

    /**
     * Greedy longest-match-first; a word with no full segmentation (or longer than
     * {@code max_input_chars_per_word} characters) becomes the single unknown id.
     */
    static final class WordPiece implements Model {
        final Map<String, Integer> vocab = new HashMap<>();
        final int unkId;
        final String prefix;
        final int maxChars;

        WordPiece(Map<String, Object> spec) {
            List<Object> pieces = Json.asList(required(spec, "vocab"), "vocab");
            for (int i = 0; i < pieces.size(); i++) {
                vocab.put(Json.asString(pieces.get(i), "piece"), i); // a repeated piece keeps its last id, as a dict does
            }
            unkId = Json.asInt(required(spec, "unk_id"), "unk_id");
            Object p = spec.get("continuing_subword_prefix");
            prefix = p == null ? "##" : Json.asString(p, "continuing_subword_prefix");
            Object m = spec.get("max_input_chars_per_word");
            maxChars = m == null ? 100 : Json.asInt(m, "max_input_chars_per_word");
        }

        @Override
        public void encode(String text, IntList out) {
            int[] word = cps(text);
            if (word.length > maxChars) {
                out.add(unkId);
                return;
            }
            int mark = out.size();
            int start = 0;
            while (start < word.length) {
                int end = word.length;
                Integer found = null;
                while (start < end) {
                    String piece = start == 0 ? str(word, start, end) : prefix + str(word, start, end);
                    found = vocab.get(piece);
                    if (found != null) {
                        break;
                    }
                    end--;
                }
                if (found == null) {
                    out.truncate(mark);
                    out.add(unkId);
                    return;
                }
                out.add(found);
                start = end;
            }
        }
    }

    /**
     * Viterbi segmentation maximizing the sum of piece scores (log-probabilities): candidates
     * shortest first, replacing the best path to their end only if strictly better; an unknown
     * character scores {@code min(scores) - 10} where no piece covers exactly that character;
     * consecutive unknown characters are fused and looked up as one string.
     */
    static final class Unigram implements Model {
        final Map<String, Integer> vocab = new HashMap<>();
        final double[] scores;
        final int unkId;
        final boolean fuseUnk;
        final int maxLen;
        final double unkScore;

        Unigram(Map<String, Object> spec) {
            List<Object> pieces = Json.asList(required(spec, "pieces"), "pieces");
            scores = new double[pieces.size()];
            int longest = 0;
            double min = Double.POSITIVE_INFINITY;
            for (int i = 0; i < pieces.size(); i++) {
                List<Object> entry = Json.asList(pieces.get(i), "piece");
                String piece = Json.asString(entry.get(0), "piece");
                if (!vocab.containsKey(piece)) {
                    vocab.put(piece, i); // setdefault: a repeated piece keeps its first id
                }
                scores[i] = Json.asDouble(entry.get(1), "score");
                min = Math.min(min, scores[i]);
                longest = Math.max(longest, length(piece));
            }
            unkId = Json.asInt(required(spec, "unk_id"), "unk_id");
            fuseUnk = truthy(spec.containsKey("fuse_unk") ? spec.get("fuse_unk") : Boolean.TRUE);
            maxLen = pieces.isEmpty() ? 1 : longest;
            unkScore = (pieces.isEmpty() ? 0.0 : min) - UNK_PENALTY;
        }

        @Override
        public void encode(String text, IntList out) {
            int[] word = cps(text);
            int n = word.length;
            if (n == 0) {
                return;
            }
            // best path to each end position: score, start, id (start -2: no path yet)
            double[] bestScore = new double[n + 1];
            int[] bestStart = new int[n + 1];
            int[] bestId = new int[n + 1];
            Arrays.fill(bestStart, -2);
            bestScore[0] = 0.0;
            bestStart[0] = -1;
            bestId[0] = -1;
            for (int start = 0; start < n; start++) {
                double here = bestScore[start];
                boolean single = false;
                int limit = Math.min(maxLen, n - start);
                for (int length = 1; length <= limit; length++) {
                    Integer pieceId = vocab.get(str(word, start, start + length));
                    if (pieceId == null) {
                        continue;
                    }
                    double candidate = here + scores[pieceId];
                    int end = start + length;
                    if (bestStart[end] == -2 || candidate > bestScore[end]) {
                        bestScore[end] = candidate;
                        bestStart[end] = start;
                        bestId[end] = pieceId;
                    }
                    if (length == 1) {
                        single = true;
                    }
                }
                if (!single) {
                    double candidate = here + unkScore;
                    if (bestStart[start + 1] == -2 || candidate > bestScore[start + 1]) {
                        bestScore[start + 1] = candidate;
                        bestStart[start + 1] = start;
                        bestId[start + 1] = unkId;
                    }
                }
            }
            List<String> pieces = new ArrayList<>(); // read backwards
            int end = n;
            int unkRunStart = -1;                    // the fused unknown run is word[unkRunStart..unkRunEnd)
            int unkRunEnd = -1;
            while (end > 0) {
                int start = bestStart[end];
                if (fuseUnk && bestId[end] == unkId) {
                    if (unkRunStart < 0) {
                        unkRunEnd = end;
                    }
                    unkRunStart = start;
                } else {
                    if (unkRunStart >= 0) {
                        pieces.add(str(word, unkRunStart, unkRunEnd));
                        unkRunStart = -1;
                    }
                    pieces.add(str(word, start, end));
                }
                end = start;
            }
            if (unkRunStart >= 0) {
                pieces.add(str(word, unkRunStart, unkRunEnd));
            }
            for (int i = pieces.size() - 1; i >= 0; i--) {
                Integer id = vocab.get(pieces.get(i));
                out.add(id == null ? unkId : id);
            }
        }
    }

    static Model model(Map<String, Object> spec) {
        String type = Json.asString(spec.get("type"), "model type");
        switch (type) {
            case "wordpiece":
                return new WordPiece(spec);
            case "unigram":
                return new Unigram(spec);
            default:
                throw new UnknownEntry(type);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The tokenizer

    /** A missing key or unknown step type (Python's KeyError, reported as a BundleError). */
    static final class UnknownEntry extends RuntimeException {
        private static final long serialVersionUID = 1L;

        UnknownEntry(String key) {
            super(key);
        }
    }

    /** Python's {@code bool(x)} on a parsed JSON value. */
    static boolean truthy(Object v) {
        if (v == null) {
            return false;
        }
        if (v instanceof Boolean) {
            return (Boolean) v;
        }
        if (v instanceof Number) {
            return ((Number) v).doubleValue() != 0.0;
        }
        if (v instanceof String) {
            return !((String) v).isEmpty();
        }
        if (v instanceof List) {
            return !((List<?>) v).isEmpty();
        }
        return !(v instanceof Map) || !((Map<?, ?>) v).isEmpty();
    }

    static Object required(Map<String, Object> spec, String key) {
        if (!spec.containsKey(key)) {
            throw new UnknownEntry(key);
        }
        return spec.get(key);
    }

    /** A growable int array (ids without boxing). */
    static final class IntList {
        int[] data = new int[32];
        int size;

        void add(int v) {
            if (size == data.length) {
                data = Arrays.copyOf(data, size * 2);
            }
            data[size++] = v;
        }

        int size() {
            return size;
        }

        void truncate(int n) {
            size = n;
        }

        int[] toArray() {
            return Arrays.copyOf(data, size);
        }
    }

    private static final class Added {
        final String content;
        final int id;

        Added(String content, int id) {
            this.content = content;
            this.id = id;
        }
    }

    public final String type;
    public final int padId;
    public final int unkId;
    private final int[] prefix;
    private final int[] suffix;
    private final List<Normalizer> normalizers = new ArrayList<>();
    private final List<PreTokenizer> preTokenizers = new ArrayList<>();
    private final Model model;
    private final List<Added> added = new ArrayList<>();

    private Tokenizer(Map<String, Object> spec) throws BundleException {
        Object version = spec.get("version");
        if (!FORMAT.equals(spec.get("format")) || !(Long.valueOf(1).equals(version) || Long.valueOf(2).equals(version))) {
            throw new BundleException("device tokenizer has format '" + spec.get("format") + "' version "
                    + version + "; this app reads '" + FORMAT + "' versions 1 and 2.");
        }
        try {
            if (Long.valueOf(2).equals(version)) {
                spec = expandV2(spec);
            }
            type = Json.asString(required(spec, "type"), "type");
            for (Object step : Json.asList(required(spec, "normalizer"), "normalizer")) {
                normalizers.add(normalizer(Json.asObject(step, "normalizer step")));
            }
            for (Object step : Json.asList(required(spec, "pre_tokenizer"), "pre_tokenizer")) {
                preTokenizers.add(preTokenizer(Json.asObject(step, "pre_tokenizer step")));
            }
            model = model(Json.asObject(required(spec, "model"), "model"));
            Map<String, Object> special = Json.asObject(required(spec, "special"), "special");
            padId = Json.asInt(required(special, "pad_id"), "pad_id");
            unkId = Json.asInt(required(special, "unk_id"), "unk_id");
            Map<String, Object> template = Json.asObject(required(spec, "template"), "template");
            prefix = ints(required(template, "prefix"));
            suffix = ints(required(template, "suffix"));
            boolean split = truthy(spec.get("split_special_tokens"));
            // Added tokens are matched in the raw text, except special ones when split_special_tokens.
            Object addedTokens = spec.get("added_tokens");
            if (addedTokens != null) {
                for (Object t : Json.asList(addedTokens, "added_tokens")) {
                    Map<String, Object> token = Json.asObject(t, "added token");
                    String content = Json.asString(required(token, "content"), "content");
                    boolean isSpecial = truthy(token.containsKey("special") ? token.get("special") : Boolean.TRUE);
                    if (!content.isEmpty() && !(split && isSpecial)) {
                        added.add(new Added(content, Json.asInt(required(token, "id"), "id")));
                    }
                }
            }
            // longest first (in code points); the sort is stable, so equal lengths keep file order
            Collections.sort(added, new Comparator<Added>() {
                @Override
                public int compare(Added a, Added b) {
                    return Integer.compare(length(b.content), length(a.content));
                }
            });
        } catch (UnknownEntry e) {
            throw new BundleException("device tokenizer is missing or has an unknown entry '" + e.getMessage()
                    + "'; re-export the bundle.");
        } catch (IllegalArgumentException e) {
            throw new BundleException("device tokenizer is malformed (" + e.getMessage() + "); re-export the bundle.");
        }
    }

    /**
     * The version-1 structure of a version-2 spec, exactly ({@code expand_v2} in the Python
     * reference; {@code export/BUNDLE.md}). Ranges {@code [d0, n0, d1, n1, ...]}: {@code end = 0},
     * per pair {@code a = end + d}, {@code end = a + n}; valued ranges {@code {value: flat}} merged and
     * sorted by start. Scores: {@code bits} = cumulative sum of {@code f32}, score = the double with
     * bits {@code doubleToLongBits((double) intBitsToFloat(bits)) + ulp}. Character maps (precompiled
     * {@code map}; codepoint map {@code map}, whose keys are then written in hex): cumulative
     * {@code codepoints} are the keys of {@code replacements}, plus {@code other}.
     */
    static Map<String, Object> expandV2(Map<String, Object> spec) {
        Map<String, Object> out = new LinkedHashMap<>(spec);
        out.put("version", 1L);
        List<Object> normalizers = new ArrayList<>();
        for (Object s : Json.asList(required(spec, "normalizer"), "normalizer")) {
            Map<String, Object> step = new LinkedHashMap<>(Json.asObject(s, "normalizer step"));
            if ("codepoint_map".equals(step.get("type"))) {
                for (String key : new String[] {"remove", "space", "pad"}) {
                    step.put(key, flatRanges(step.get(key)));
                }
                Map<String, Object> hex = new LinkedHashMap<>();
                for (Map.Entry<String, Object> e : charMap(required(step, "map")).entrySet()) {
                    if (length(e.getKey()) != 1) {
                        throw new IllegalArgumentException("a codepoint map key is not one codepoint");
                    }
                    hex.put(Integer.toHexString(e.getKey().codePointAt(0)).toUpperCase(Locale.ROOT), e.getValue());
                }
                step.put("map", hex);
            } else if ("precompiled".equals(step.get("type"))) {
                step.put("map", charMap(required(step, "map")));
                Map<String, Object> g = new LinkedHashMap<>(Json.asObject(required(step, "graphemes"), "graphemes"));
                g.put("gcb", valuedRanges(required(g, "gcb")));
                g.put("incb", valuedRanges(g.get("incb")));
                g.put("extended_pictographic", flatRanges(required(g, "extended_pictographic")));
                step.put("graphemes", g);
            }
            normalizers.add(step);
        }
        out.put("normalizer", normalizers);
        List<Object> preTokenizers = new ArrayList<>();
        for (Object s : Json.asList(required(spec, "pre_tokenizer"), "pre_tokenizer")) {
            Map<String, Object> step = new LinkedHashMap<>(Json.asObject(s, "pre_tokenizer step"));
            if ("bert".equals(step.get("type"))) {
                step.put("whitespace", flatRanges(required(step, "whitespace")));
                step.put("punctuation", flatRanges(required(step, "punctuation")));
            } else if ("isolate".equals(step.get("type"))) {
                step.put("ranges", flatRanges(required(step, "ranges")));
            }
            preTokenizers.add(step);
        }
        out.put("pre_tokenizer", preTokenizers);
        Map<String, Object> model = new LinkedHashMap<>(Json.asObject(required(spec, "model"), "model"));
        if ("unigram".equals(model.get("type"))) {
            List<Object> pieces = Json.asList(required(model, "pieces"), "pieces");
            Map<String, Object> encoded = Json.asObject(model.remove("scores"), "scores");
            List<Object> f32 = Json.asList(required(encoded, "f32"), "f32");
            List<Object> ulp = Json.asList(required(encoded, "ulp"), "ulp");
            if (!"f32-delta+f64-ulp".equals(encoded.get("encoding")) || f32.size() != pieces.size()
                    || ulp.size() != pieces.size()) {
                throw new IllegalArgumentException("scores are in an unknown encoding or of the wrong length");
            }
            List<Object> withScores = new ArrayList<>();
            long bits = 0;
            for (int i = 0; i < pieces.size(); i++) {
                bits += Json.asLong(f32.get(i), "f32");
                if (bits < Integer.MIN_VALUE || bits > Integer.MAX_VALUE) {
                    throw new IllegalArgumentException("a float32 bit pattern is out of range");
                }
                double f = Float.intBitsToFloat((int) bits);
                double score = Double.longBitsToDouble(Double.doubleToRawLongBits(f) + Json.asLong(ulp.get(i), "ulp"));
                withScores.add(Arrays.<Object>asList(pieces.get(i), score));
            }
            model.put("pieces", withScores);
        }
        out.put("model", model);
        return out;
    }

    /** {@code {codepoints, replacements, other}} -> {@code {key: replacement}} (see {@link #expandV2}). */
    private static Map<String, Object> charMap(Object encoded) {
        Map<String, Object> m = Json.asObject(encoded, "map");
        List<Object> codepoints = Json.asList(required(m, "codepoints"), "codepoints");
        List<Object> replacements = Json.asList(required(m, "replacements"), "replacements");
        if (codepoints.size() != replacements.size()) {
            throw new IllegalArgumentException("map codepoints and replacements differ in length");
        }
        Map<String, Object> map = new LinkedHashMap<>();
        long cp = 0;
        for (int i = 0; i < codepoints.size(); i++) {
            cp += Json.asLong(codepoints.get(i), "codepoint");
            if (cp < 0 || cp > Character.MAX_CODE_POINT) {
                throw new IllegalArgumentException("map codepoint " + cp + " is out of range");
            }
            map.put(str((int) cp), replacements.get(i));
        }
        if (m.get("other") != null) {
            map.putAll(Json.asObject(m.get("other"), "other"));
        }
        return map;
    }

    /** {@code [d0, n0, d1, n1, ...]} -> {@code [[a0, z0], ...]} (see {@link #expandV2}). */
    private static List<Object> flatRanges(Object flat) {
        List<Object> list = flat == null ? Collections.emptyList() : Json.asList(flat, "ranges");
        if (list.size() % 2 != 0) {
            throw new IllegalArgumentException("a range list has an odd length");
        }
        List<Object> out = new ArrayList<>();
        long end = 0;
        for (int i = 0; i < list.size(); i += 2) {
            long a = end + Json.asLong(list.get(i), "range start");
            end = a + Json.asLong(list.get(i + 1), "range length");
            out.add(Arrays.<Object>asList(a, end));
        }
        return out;
    }

    /** {@code {value: flat}} -> {@code [[a, z, value], ...]} sorted by start. */
    private static List<Object> valuedRanges(Object byValue) {
        List<Object> out = new ArrayList<>();
        if (byValue != null) {
            for (Map.Entry<String, Object> e : Json.asObject(byValue, "valued ranges").entrySet()) {
                for (Object r : flatRanges(e.getValue())) {
                    List<Object> range = Json.asList(r, "range");
                    out.add(Arrays.<Object>asList(range.get(0), range.get(1), e.getKey()));
                }
            }
        }
        Collections.sort(out, new Comparator<Object>() {
            @Override
            public int compare(Object a, Object b) {
                return Long.compare((Long) Json.asList(a, "range").get(0), (Long) Json.asList(b, "range").get(0));
            }
        });
        return out;
    }

    private static int[] ints(Object list) {
        List<Object> values = Json.asList(list, "id list");
        int[] out = new int[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = Json.asInt(values.get(i), "id");
        }
        return out;
    }

    /** Builds the tokenizer from the text of {@code device_tokenizer.json}. */
    public static Tokenizer fromJson(String json, String where) throws BundleException {
        Object spec;
        try {
            spec = Json.parse(json);
        } catch (IllegalArgumentException e) {
            throw new BundleException("cannot read the device tokenizer '" + where + "' (" + e.getMessage() + ").");
        }
        if (!(spec instanceof Map)) {
            throw new BundleException("the device tokenizer '" + where + "' is not a JSON object.");
        }
        return new Tokenizer(Json.asObject(spec, "device tokenizer"));
    }

    public int numSpecial() {
        return prefix.length + suffix.length;
    }

    /** Leftmost-longest matches of added tokens, as (segment, null) or (token, id) pairs. */
    private void splitAdded(String text, List<String> segments, List<Integer> ids) {
        if (added.isEmpty()) {
            segments.add(text);
            ids.add(null);
            return;
        }
        int start = 0;
        int i = 0;
        while (i < text.length()) {
            Added match = null;
            for (Added token : added) { // longest first
                if (text.startsWith(token.content, i)) {
                    match = token;
                    break;
                }
            }
            if (match != null) {
                if (start < i) {
                    segments.add(text.substring(start, i));
                    ids.add(null);
                }
                segments.add(match.content);
                ids.add(match.id);
                i += match.content.length();
                start = i;
            } else {
                i += Character.charCount(text.codePointAt(i)); // one Python character
            }
        }
        if (start < text.length()) {
            segments.add(text.substring(start));
            ids.add(null);
        }
    }

    /** Ids of {@code text} without the template's special ids and without truncation. */
    public int[] tokenizeIds(String text) {
        IntList out = new IntList();
        List<String> segments = new ArrayList<>();
        List<Integer> tokenIds = new ArrayList<>();
        splitAdded(text, segments, tokenIds);
        for (int s = 0; s < segments.size(); s++) {
            if (tokenIds.get(s) != null) {
                out.add(tokenIds.get(s));
                continue;
            }
            String segment = segments.get(s);
            for (Normalizer normalize : normalizers) {
                segment = normalize.apply(segment);
            }
            List<String> words = Collections.singletonList(segment);
            for (PreTokenizer preTokenize : preTokenizers) {
                words = preTokenize.apply(words);
            }
            for (String word : words) {
                model.encode(word, out);
            }
        }
        return out.toArray();
    }

    /** Template ids around the text's ids, the text's ids cut so the total fits {@code maxLength} (null: no cut). */
    public int[] encode(String text, Integer maxLength) {
        int[] ids = tokenizeIds(text);
        int keep = ids.length;
        if (maxLength != null) {
            keep = Math.min(keep, Math.max(0, maxLength - numSpecial()));
        }
        int[] out = new int[prefix.length + keep + suffix.length];
        System.arraycopy(prefix, 0, out, 0, prefix.length);
        System.arraycopy(ids, 0, out, prefix.length, keep);
        System.arraycopy(suffix, 0, out, prefix.length + keep, suffix.length);
        return out;
    }
}
