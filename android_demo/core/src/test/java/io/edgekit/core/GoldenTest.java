package io.edgekit.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * JVM tests of the app's core against golden outputs of the Python reference runtime
 * ({@code android_demo/tools/make_goldens.py}); no JUnit, so it runs with a bare JDK:
 *
 * <pre>
 * javac -d out $(find android_demo/core/src -name '*.java')
 * java -cp out io.edgekit.core.GoldenTest goldens.json
 * </pre>
 *
 * Prints one line per check group and exits with status 1 if anything differs.
 */
public final class GoldenTest {
    private static int checks;
    private static final List<String> failures = new ArrayList<>();

    private static void check(boolean ok, String what) {
        checks++;
        if (!ok && failures.size() < 1000) {
            failures.add(what);
        }
    }

    private static Map<String, Object> obj(Object v) {
        return Json.asObject(v, "golden");
    }

    private static List<Object> list(Object v) {
        return Json.asList(v, "golden");
    }

    private static int[] ints(Object v) {
        List<Object> l = list(v);
        int[] out = new int[l.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = Json.asInt(l.get(i), "id");
        }
        return out;
    }

    private static float[] floats(Object v) {
        List<Object> l = list(v);
        float[] out = new float[l.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) Json.asDouble(l.get(i), "float");
        }
        return out;
    }

    private static String show(String text) {
        String s = text.length() > 40 ? text.substring(0, 40) + "..." : text;
        return "'" + s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + "'";
    }

    interface Body {
        void run() throws Exception;
    }

    private static void expectThrows(Body body, String fragment, String what) {
        try {
            body.run();
            check(false, what + ": no exception");
        } catch (Exception e) {
            String message = String.valueOf(e.getMessage());
            check(message.contains(fragment), what + ": message '" + message + "' lacks '" + fragment + "'");
        }
    }

    // ---------------------------------------------------------------------------------------------

    static void jsonReader() {
        Object v = Json.parse("{\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\"], \"b\": {}}");
        Map<String, Object> m = obj(v);
        List<Object> a = list(m.get("a"));
        check(Long.valueOf(1).equals(a.get(0)), "json: integer becomes Long");
        check(Double.valueOf(-2500.0).equals(a.get(1)), "json: exponent number becomes Double");
        check(Boolean.TRUE.equals(a.get(2)) && Boolean.FALSE.equals(a.get(3)) && a.get(4) == null, "json: literals");
        check("x\u00e9\ud83d\ude00\n\"\\/".equals(a.get(5)), "json: escapes and surrogate pairs");
        check(obj(m.get("b")).isEmpty(), "json: empty object");
        check(Json.parse(" [ ] ") instanceof List, "json: empty list with spaces");
        check(Json.asDouble(Json.parse("-0.0001234"), "x") == -0.0001234, "json: decimals round like Python");
        List<Object> special = list(Json.parse("[NaN, Infinity, -Infinity, 12345678901234567890]"));
        check(Double.isNaN((Double) special.get(0)) && Double.valueOf(Double.POSITIVE_INFINITY).equals(special.get(1))
                && Double.valueOf(Double.NEGATIVE_INFINITY).equals(special.get(2)), "json: Python's NaN and infinities");
        check(special.get(3) instanceof Double, "json: an integer beyond long becomes a double");
        for (String bad : new String[]{"", "{", "[1,]", "{\"a\" 1}", "tru", "\"abc", "01x", "[1] 2", "\"\\x\"", "-", "Nan", "-Inf"}) {
            expectThrows(() -> Json.parse(bad), "invalid JSON", "json: rejects " + bad);
        }
        System.out.println("json reader: ok");
    }

    // ---------------------------------------------------------------------------------------------

    /**
     * device_tokenizer.json version 2 scores (float32 bit deltas + double ulps) decoded to the exact
     * doubles: positive and negative, 1..3 ulps either side of a float32, non-float32 doubles, a
     * float32 subnormal and both zeros (the list and its encoding are tests/test_device_tokenizer_v2.py's HAND).
     */
    static void v2ScoresByHand() throws Exception {
        double[] expected = {0.0, -0.0, 1.5, 2.2999999523162846, 2.2999999523162833, 3.700000047683717,
            -7.4715776443481445, -7.471577644348145, -7.471577644348144, -7.471577644348146, -7.471577644348142,
            -3.4635426998138428, -7.471577644348144, 0.1, -0.3333333333333333, 1e-40, -3e38, 1.1754943508222875e-38,
            -20.364652633666992};
        String f32 = "[0,-2147483648,3217031168,5452595,0,5872026,-2138944931,0,0,0,0,-9530491,9530491,2094904739,"
                + "-2132943394,1096182807,-10446044,18763290,-1054676273]";
        String ulp = "[0,0,0,1,-2,3,0,1,-1,2,-3,0,-1,-107374182,-178956971,26431936412,-14552438,0,0]";
        StringBuilder pieces = new StringBuilder();
        for (int i = 0; i < expected.length; i++) {
            pieces.append(i == 0 ? "" : ",").append("\"p").append(i).append('"');
        }
        Map<String, Object> spec = obj(Json.parse("{\"format\":\"edgekit-device-tokenizer\",\"version\":2,"
                + "\"normalizer\":[],\"pre_tokenizer\":[],\"model\":{\"type\":\"unigram\",\"unk_id\":0,\"pieces\":["
                + pieces + "],\"scores\":{\"encoding\":\"f32-delta+f64-ulp\",\"f32\":" + f32 + ",\"ulp\":" + ulp + "}}}"));
        List<Object> got = list(obj(Tokenizer.expandV2(spec).get("model")).get("pieces"));
        check(got.size() == expected.length, "v2 scores: one score per piece");
        for (int i = 0; i < expected.length; i++) {
            double score = (Double) list(got.get(i)).get(1);
            check(Double.doubleToRawLongBits(score) == Double.doubleToRawLongBits(expected[i]),
                    "v2 scores: " + expected[i] + " decoded as " + score);
        }
        System.out.println("v2 scores by hand: ok");
    }

    /** The exit rules and scores on hand-computed cases (the paper's rules, independent of Python). */
    static void exitRulesByHand() throws Exception {
        float[] a = {2f, 0f, 0f};   // predicts 0
        float[] b = {0f, 2f, 0f};   // predicts 1
        float[] tie = {1f, 1f, 0f}; // argmax takes the first of equal logits
        check(Scores.argmax(tie) == 0, "argmax: first of a tie");
        check(Math.abs(Scores.entropy(new float[]{0f, 0f, 0f}) - Math.log(3)) < 1e-6, "entropy: uniform is ln 3");
        check(Scores.entropy(new float[]{100f, 0f, 0f}) < 1e-6, "entropy: a sure prediction is 0");
        float[] p = Scores.softmax(new float[]{(float) Math.log(1), (float) Math.log(3)});
        check(Math.abs(p[0] - 0.25f) < 1e-6 && Math.abs(p[1] - 0.75f) < 1e-6, "softmax: 1:3 odds");
        // PABEE: the counter counts layers that repeat the previous prediction; it resets on a change.
        float[][] layers = {a, a, b, b, b, a};
        check(ExitRule.patience(1).chooseExit(layers) == 2, "patience 1: stops at the first repeat");
        check(ExitRule.patience(2).chooseExit(layers) == 5, "patience 2: a change resets the count");
        check(ExitRule.patience(3).chooseExit(layers) == 6, "patience 3: the last layer always stops");
        check(ExitRule.patience(1).chooseExit(new float[][]{a}) == 1, "patience: a one-layer budget stops at once");
        // DeeBERT: the first layer whose entropy is below the threshold.
        float[] sure = {8f, 0f, 0f};
        float[] unsure = {0.1f, 0f, 0f};
        check(ExitRule.entropy(0.1).chooseExit(new float[][]{unsure, sure, sure}) == 2, "entropy: first confident layer");
        check(ExitRule.entropy(1e-9).chooseExit(new float[][]{unsure, sure, unsure}) == 3, "entropy: last layer stops");
        check(ExitRule.entropy(2.0).chooseExit(new float[][]{unsure, sure}) == 1, "entropy: a loose threshold stops at 1");
        double equal = Scores.entropy(unsure);
        check(ExitRule.entropy(equal).chooseExit(new float[][]{unsure, sure}) == 2, "entropy: equal to the threshold goes on");
        System.out.println("exit rules and scores on hand-computed cases: ok");
    }

    // ---------------------------------------------------------------------------------------------

    static void tokenizers(List<Object> goldens) throws Exception {
        for (Object g : goldens) {
            Map<String, Object> golden = obj(g);
            String name = (String) golden.get("name");
            String file = (String) golden.get("file");
            Tokenizer tok = Tokenizer.fromJson(new String(Files.readAllBytes(new File(file).toPath()),
                    StandardCharsets.UTF_8), file);
            int maxLength = Json.asInt(golden.get("max_length"), "max_length");
            check(tok.type.equals(golden.get("type")), name + ": type");
            check(tok.padId == Json.asInt(golden.get("pad_id"), "pad"), name + ": pad id");
            check(tok.unkId == Json.asInt(golden.get("unk_id"), "unk"), name + ": unk id");
            check(tok.numSpecial() == Json.asInt(golden.get("num_special"), "n"), name + ": number of special ids");
            Tokenizer.Graphemes graphemes = graphemesOf(file);
            int same = 0;
            int total = 0;
            int tokens = 0;
            int clustered = 0;
            for (Object c : list(golden.get("cases"))) {
                Map<String, Object> kase = obj(c);
                String text = (String) kase.get("text");
                if (kase.containsKey("clusters")) {
                    List<int[]> got = graphemes.split(Tokenizer.cps(text));
                    int[] lengths = new int[got.size()];
                    for (int k = 0; k < lengths.length; k++) {
                        lengths[k] = got.get(k).length;
                    }
                    int[] expected = ints(kase.get("clusters"));
                    check(Arrays.equals(expected, lengths), name + ": grapheme clusters of " + show(text) + "\n    python "
                            + Arrays.toString(expected) + "\n    java   " + Arrays.toString(lengths));
                    clustered++;
                }
                int[] expected = ints(kase.get("ids"));
                int[] got = tok.encode(text, null);
                int[] expectedCut = ints(kase.get("truncated"));
                int[] gotCut = tok.encode(text, maxLength);
                boolean ok = Arrays.equals(expected, got) && Arrays.equals(expectedCut, gotCut);
                check(ok, name + ": ids of " + show(text) + "\n    python " + Arrays.toString(expected)
                        + "\n    java   " + Arrays.toString(got));
                total++;
                tokens += expected.length;
                if (ok) {
                    same++;
                }
            }
            System.out.println("tokenizer " + name + " (" + tok.type + "): " + same + "/" + total
                    + " texts give the reference ids (" + tokens + " tokens)"
                    + (clustered > 0 ? ", grapheme clusters of " + clustered + " texts compared" : ""));
        }
    }

    /** The grapheme tables of a tokenizer file's precompiled normalizer, or null. */
    private static Tokenizer.Graphemes graphemesOf(String file) throws IOException {
        Map<String, Object> spec = obj(Json.parse(new String(Files.readAllBytes(new File(file).toPath()),
                StandardCharsets.UTF_8)));
        if (Long.valueOf(2).equals(spec.get("version"))) {
            spec = Tokenizer.expandV2(spec);
        }
        for (Object step : list(spec.get("normalizer"))) {
            if ("precompiled".equals(obj(step).get("type"))) {
                return new Tokenizer.Graphemes(obj(obj(step).get("graphemes")));
            }
        }
        return null;
    }

    /**
     * Static shapes with a pad id that is not 0 (XLM-R's is 1): a made-up TFLite-like bundle over a
     * real device tokenizer, whose runner checks exactly what {@link Predictor} feeds.
     */
    static void staticPadding(String tokenizerFile) throws Exception {
        int failedBefore = failures.size();
        final Map<String, byte[]> contents = new HashMap<>();
        contents.put("t.json", Files.readAllBytes(new File(tokenizerFile).toPath()));
        contents.put("labels.json", "[\"no\", \"yes\"]".getBytes(StandardCharsets.UTF_8));
        String ids = "{\"name\": \"input_ids\", \"dtype\": \"int32\", \"shape\": [1, 8], \"axes\": [\"batch\", \"sequence\"]}";
        String mask = ids.replace("input_ids", "attention_mask");
        String hidden = "{\"name\": \"hidden\", \"dtype\": \"float32\", \"shape\": [1, 8, 2], \"axes\": [\"batch\", \"sequence\", \"hidden\"]}";
        String logits = "{\"name\": \"logits\", \"dtype\": \"float32\", \"shape\": [1, 2], \"axes\": [\"batch\", \"labels\"]}";
        String manifest = "{\"format_version\": 1, \"format\": \"tflite\", \"precision\": \"fp32\", \"layout\": \"per-layer\", "
                + "\"graphs\": {\"embed\": {\"file\": \"e\", \"inputs\": [" + ids + "], \"outputs\": [" + hidden + "]}, "
                + "\"layer\": {\"file\": \"l\", \"inputs\": [" + hidden + ", " + mask + "], \"outputs\": [" + hidden + "]}, "
                + "\"head\": {\"file\": \"h\", \"inputs\": [" + hidden + "], \"outputs\": [" + logits + "]}}, "
                + "\"max_length\": 8, \"exits\": {\"layers\": [1, 2]}, \"model\": {\"num_labels\": 2}, "
                + "\"tokenizer\": {\"file\": \"t.json\"}, \"labels\": {\"file\": \"labels.json\"}, "
                + "\"files\": {\"e\": {}, \"l\": {}, \"h\": {}, \"t.json\": {}, \"labels.json\": {}}}";
        contents.put(Bundle.MANIFEST, manifest.getBytes(StandardCharsets.UTF_8));
        Bundle bundle = Bundle.load(new BundleFiles() {
            @Override
            public byte[] read(String name) throws IOException {
                if (!contents.containsKey(name)) {
                    throw new java.io.FileNotFoundException(name);
                }
                return contents.get(name);
            }

            @Override
            public String describe() {
                return "in memory";
            }
        }, false);
        final int padId = bundle.tokenizer().padId;
        check(padId != 0, "static padding: the tokenizer's pad id is not 0");
        final List<String> seen = new ArrayList<>();
        GraphRunner runner = (graph, inputs) -> {
            Map<String, Tensor> out = new LinkedHashMap<>();
            if (graph.equals("embed")) {
                Tensor t = inputs.get("input_ids");
                seen.add("ids " + t.dtype + Arrays.toString(t.shape) + Arrays.toString(t.ints));
                float[] h = new float[16];
                Arrays.fill(h, 7f);
                out.put("hidden", Tensor.ofFloats(new int[]{1, 8, 2}, h));
            } else if (graph.equals("layer")) {
                Tensor m = inputs.get("attention_mask");
                Tensor h = inputs.get("hidden");
                seen.add("mask " + m.dtype + Arrays.toString(m.shape) + Arrays.toString(m.ints));
                seen.add("hidden " + Arrays.toString(h.floats));
                out.put("hidden", Tensor.ofFloats(new int[]{1, 8, 2}, h.floats.clone()));
            } else {
                out.put("logits", Tensor.ofFloats(new int[]{1, 2}, new float[]{0f, 1f}));
            }
            return out;
        };
        Predictor predictor = new Predictor(bundle, runner);
        int[] encoded = predictor.encode("ok");
        int n = encoded.length;
        check(n < 8, "static padding: a short text");
        Prediction p = predictor.predict("ok", 2);
        int[] wantIds = new int[8];
        int[] wantMask = new int[8];
        float[] wantHidden = new float[16];
        Arrays.fill(wantIds, padId);
        for (int i = 0; i < n; i++) {
            wantIds[i] = encoded[i];
            wantMask[i] = 1;
            wantHidden[2 * i] = 7f;
            wantHidden[2 * i + 1] = 7f;
        }
        List<String> want = Arrays.asList("ids int32[1, 8]" + Arrays.toString(wantIds),
                "mask int32[1, 8]" + Arrays.toString(wantMask), "hidden " + Arrays.toString(wantHidden),
                "mask int32[1, 8]" + Arrays.toString(wantMask), "hidden " + Arrays.toString(wantHidden));
        check(seen.equals(want), "static padding: feeds\n    want " + want + "\n    got  " + seen);
        check(p.label.equals("yes") && p.exitLayer == 2 && p.layerEvaluations == 2, "static padding: result");
        seen.clear();
        predictor.predict("a text long enough to be cut to eight tokens by max_length", 1);
        check(seen.size() == 3 && !seen.get(0).contains(", " + padId + "]") && seen.get(1).endsWith("1, 1, 1, 1, 1, 1, 1, 1]"),
                "static padding: a long text fills max_length " + seen);
        System.out.println("static shapes: ids padded with pad id " + padId + ", mask and hidden state with 0: "
                + (failures.size() == failedBefore ? "ok" : "FAILED"));
    }

    // ---------------------------------------------------------------------------------------------

    /**
     * Serves the recorded logits like the Python test backend: {@code embed} writes the example's
     * index (looked up by its ids) into the hidden state, {@code layer} counts depth there,
     * {@code head} returns that example's logits at that depth. Every feed is checked against the
     * manifest: names, dtypes, static sizes, padding and the attention mask.
     */
    static final class ReplayRunner implements GraphRunner {
        final Bundle bundle;
        final Map<String, Integer> index = new HashMap<>();
        final float[][][] logits; // [layer][example][label]
        final int padId;
        final Map<String, Integer> calls = new HashMap<>();
        int currentLength = -1;

        ReplayRunner(Bundle bundle, List<int[]> rows, float[][][] logits, int padId) {
            this.bundle = bundle;
            for (int i = 0; i < rows.size(); i++) {
                index.putIfAbsent(Arrays.toString(rows.get(i)), i);
            }
            this.logits = logits;
            this.padId = padId;
        }

        private void require(boolean ok, String what) throws BundleException {
            if (!ok) {
                throw new BundleException("replay: " + what);
            }
        }

        private void checkFeeds(String graph, Map<String, Tensor> inputs) throws BundleException {
            Bundle.Graph g = bundle.graphs.get(graph);
            require(g != null, "no graph " + graph);
            require(inputs.keySet().equals(namesOf(g.inputs)), graph + " fed " + inputs.keySet());
            for (TensorSpec spec : g.inputs) {
                Tensor t = inputs.get(spec.name);
                require(t.dtype.equals(spec.dtype), graph + "." + spec.name + " dtype " + t.dtype + " != " + spec.dtype);
                require(t.shape.length == spec.shape.length, graph + "." + spec.name + " rank");
                for (int d = 0; d < t.shape.length; d++) {
                    if (spec.shape[d] != null) {
                        require(t.shape[d] == spec.shape[d], graph + "." + spec.name + " shape " + Arrays.toString(t.shape));
                    }
                    if ("batch".equals(spec.axes[d])) {
                        require(t.shape[d] == 1, graph + "." + spec.name + " batch " + t.shape[d]);
                    }
                }
            }
        }

        private static java.util.Set<String> namesOf(List<TensorSpec> specs) {
            java.util.Set<String> out = new java.util.HashSet<>();
            for (TensorSpec s : specs) {
                out.add(s.name);
            }
            return out;
        }

        private int lookup(Tensor ids) throws BundleException {
            int n = ids.size();
            int length = n;
            while (length > 0 && (long) ids.get(length - 1) == padId) {
                length--;
            }
            int[] row = new int[length];
            for (int i = 0; i < length; i++) {
                row[i] = (int) ids.get(i);
            }
            Integer found = index.get(Arrays.toString(row));
            require(found != null, "ids " + Arrays.toString(row) + " are not those of any golden text");
            currentLength = length;
            return found;
        }

        private void checkMask(Tensor mask) throws BundleException {
            for (int i = 0; i < mask.size(); i++) {
                require((long) mask.get(i) == (i < currentLength ? 1 : 0), "attention mask " + i);
            }
        }

        private Map<String, Tensor> output(String graph, Tensor value) {
            Map<String, Tensor> out = new LinkedHashMap<>();
            out.put(bundle.graphs.get(graph).outputs.get(0).name, value);
            return out;
        }

        private Tensor logitsTensor(float[] row) {
            return Tensor.ofFloats(new int[]{1, row.length}, row.clone());
        }

        @Override
        public Map<String, Tensor> run(String graph, Map<String, Tensor> inputs) throws BundleException {
            checkFeeds(graph, inputs);
            calls.merge(graph, 1, Integer::sum);
            if (graph.equals("model")) {
                int example = lookup(inputs.get("input_ids"));
                checkMask(inputs.get("attention_mask"));
                return output(graph, logitsTensor(logits[0][example]));
            }
            if (graph.equals("embed")) {
                Tensor ids = inputs.get("input_ids");
                int example = lookup(ids);
                TensorSpec out = bundle.graphs.get("embed").outputs.get(0);
                int hiddenSize = bundle.graphs.get("layer").inputs.get(0).shape[2];
                // A static graph returns every position; a dynamic one as many as it was given.
                int positions = out.shape[1] != null ? out.shape[1] : ids.shape[1];
                float[] hidden = new float[positions * hiddenSize];
                Arrays.fill(hidden, 0.5f); // garbage beyond the text: the runtime must zero it before the next layer
                hidden[0] = example;
                hidden[1] = 0;
                return output(graph, Tensor.ofFloats(new int[]{1, positions, hiddenSize}, hidden));
            }
            Tensor hidden = inputs.get("hidden");
            int hiddenSize = hidden.shape[2];
            for (int i = currentLength * hiddenSize; i < hidden.size(); i++) {
                require(hidden.get(i) == 0.0, graph + ": hidden state beyond the text is not zero");
            }
            if (graph.equals("layer")) {
                checkMask(inputs.get("attention_mask"));
                float[] next = hidden.floats.clone();
                for (int i = currentLength * hiddenSize; i < next.length; i++) {
                    next[i] = 0.25f;
                }
                next[1] += 1;
                return output(graph, Tensor.ofFloats(hidden.shape, next));
            }
            if (inputs.containsKey("attention_mask")) { // a mean-pooled head: the same mask as the layers
                checkMask(inputs.get("attention_mask"));
            }
            int example = (int) hidden.get(0);
            int depth = (int) hidden.get(1);
            require(depth >= 1 && depth <= logits.length, "head at depth " + depth);
            return output(graph, logitsTensor(logits[depth - 1][example]));
        }
    }

    static void bundles(List<Object> goldens) throws Exception {
        for (Object g : goldens) {
            Map<String, Object> golden = obj(g);
            String name = (String) golden.get("name");
            File dir = new File((String) golden.get("dir"));
            String packFile = (String) golden.get("pack");
            // A packed bundle is loaded from the download itself, as the app does, and every
            // decoded file must be the exported one byte for byte.
            Bundle bundle = packFile == null ? Bundle.load(new BundleFiles.Directory(dir), true)
                    : packedBundle(name, packFile, dir);
            Map<String, Object> expect = obj(golden.get("expect"));
            check(bundle.format.equals(expect.get("format")), name + ": format");
            check(bundle.layout.equals(expect.get("layout")), name + ": layout");
            check(bundle.precision.equals(expect.get("precision")), name + ": precision");
            check(bundle.maxLength == Json.asInt(expect.get("max_length"), "max_length"), name + ": max_length");
            check(bundle.pooling.equals(expect.get("pooling")), name + ": pooling " + bundle.pooling);
            check(Arrays.equals(bundle.exitLayers.toArray(), toIntegers(ints(expect.get("exits")))), name + ": exits");
            check(bundle.labels.equals(list(expect.get("labels"))), name + ": labels");
            check(new java.util.TreeSet<>(bundle.graphs.keySet()).toString().equals(
                    new java.util.TreeSet<>(toStrings(list(expect.get("graphs")))).toString()), name + ": graphs");

            List<Object> texts = list(golden.get("texts"));
            List<int[]> rows = new ArrayList<>();
            for (Object r : list(golden.get("ids"))) {
                rows.add(ints(r));
            }
            List<Object> layers = list(golden.get("layer_logits"));
            float[][][] logits = new float[layers.size()][][];
            for (int k = 0; k < logits.length; k++) {
                List<Object> layer = list(layers.get(k));
                logits[k] = new float[layer.size()][];
                for (int i = 0; i < layer.size(); i++) {
                    logits[k][i] = floats(layer.get(i));
                }
            }
            float[][] entropies = new float[logits.length][];
            List<Object> ent = list(golden.get("entropies"));
            for (int k = 0; k < logits.length; k++) {
                entropies[k] = floats(ent.get(k));
            }
            ReplayRunner runner = new ReplayRunner(bundle, rows, logits, Json.asInt(expect.get("pad_id"), "pad"));
            Predictor predictor = new Predictor(bundle, runner);

            int idsOk = 0;
            for (int i = 0; i < texts.size(); i++) {
                boolean ok = Arrays.equals(predictor.encode((String) texts.get(i)), rows.get(i));
                check(ok, name + ": ids of " + show((String) texts.get(i)));
                idsOk += ok ? 1 : 0;
            }
            double worstEntropy = 0;
            for (int k = 0; k < logits.length; k++) {
                for (int i = 0; i < logits[k].length; i++) {
                    worstEntropy = Math.max(worstEntropy, Math.abs(Scores.entropy(logits[k][i]) - entropies[k][i]));
                }
            }
            check(worstEntropy < 1e-5, name + ": entropies differ from numpy by " + worstEntropy);

            int runsOk = 0;
            List<Object> runs = list(golden.get("runs"));
            double worstScore = 0;
            for (Object r : runs) {
                Map<String, Object> run = obj(r);
                String kind = (String) run.get("kind");
                Integer maxLayer = run.get("max_layer") == null ? null : Json.asInt(run.get("max_layer"), "max_layer");
                ExitRule rule = null;
                Integer exit = null;
                String label;
                if (kind.equals("fixed")) {
                    exit = Json.asInt(run.get("exit_layer"), "exit_layer");
                    label = "fixed exit " + exit;
                } else if (kind.equals("patience")) {
                    rule = ExitRule.patience(Json.asInt(run.get("patience"), "patience"));
                    label = rule + (maxLayer == null ? "" : " (max layer " + maxLayer + ")");
                } else {
                    rule = ExitRule.entropy(Json.asDouble(run.get("threshold"), "threshold"));
                    label = rule + (maxLayer == null ? "" : " (max layer " + maxLayer + ")");
                }
                List<Object> results = list(run.get("results"));
                int evaluations = 0;
                boolean all = true;
                for (int i = 0; i < texts.size(); i++) {
                    Map<String, Object> want = obj(results.get(i));
                    String text = (String) texts.get(i);
                    Map<String, Integer> before = new HashMap<>(runner.calls);
                    Prediction p;
                    try {
                        p = rule == null ? predictor.predict(text, exit) : predictor.predictDynamic(text, rule, maxLayer);
                    } catch (BundleException | RuntimeException e) {
                        check(false, name + " " + label + ": " + show(text) + " raised " + e);
                        all = false;
                        continue;
                    }
                    evaluations += p.layerEvaluations;
                    if (bundle.isPerLayer()) {
                        int layerCalls = runner.calls.getOrDefault("layer", 0) - before.getOrDefault("layer", 0);
                        check(layerCalls == p.layerEvaluations, name + " " + label + ": " + layerCalls
                                + " layer runs for " + p.layerEvaluations + " evaluations");
                        check(runner.calls.getOrDefault("embed", 0) - before.getOrDefault("embed", 0) == 1,
                                name + " " + label + ": embed runs once");
                    }
                    boolean ok = p.exitLayer == Json.asInt(want.get("exit_layer"), "exit")
                            && p.labelId == Json.asInt(want.get("label_id"), "label_id")
                            && p.label.equals(want.get("label"));
                    float[] scores = floats(want.get("scores"));
                    for (int c = 0; c < scores.length; c++) {
                        worstScore = Math.max(worstScore, Math.abs(scores[c] - p.scores[c]));
                    }
                    check(ok, name + " " + label + ": " + show(text) + " python exit " + want.get("exit_layer") + " "
                            + want.get("label") + ", java exit " + p.exitLayer + " " + p.label);
                    all &= ok;
                }
                check(evaluations == Json.asInt(run.get("layer_evaluations"), "evaluations"),
                        name + " " + label + ": layer evaluations " + evaluations + " != " + run.get("layer_evaluations"));
                runsOk += all ? 1 : 0;
                if (rule != null) {
                    System.out.println("  " + name + " " + label + ": exits at layers " + run.get("exit_layers_seen")
                            + ", " + run.get("layer_evaluations") + " layer evaluations");
                }
            }
            check(worstScore < 1e-5, name + ": softmax scores differ by " + worstScore);
            // the same decisions straight from the logits, without the graph loop
            if (bundle.isPerLayer()) {
                for (Object r : runs) {
                    Map<String, Object> run = obj(r);
                    if (run.get("kind").equals("fixed") || run.get("max_layer") != null) {
                        continue;
                    }
                    ExitRule rule = run.get("kind").equals("patience")
                            ? ExitRule.patience(Json.asInt(run.get("patience"), "p"))
                            : ExitRule.entropy(Json.asDouble(run.get("threshold"), "t"));
                    List<Object> results = list(run.get("results"));
                    for (int i = 0; i < texts.size(); i++) {
                        float[][] perLayer = new float[logits.length][];
                        for (int k = 0; k < logits.length; k++) {
                            perLayer[k] = logits[k][i];
                        }
                        check(rule.chooseExit(perLayer) == Json.asInt(obj(results.get(i)).get("exit_layer"), "e"),
                                name + " " + rule + ": chooseExit of example " + i);
                    }
                }
            }
            System.out.println("bundle " + name + (packFile == null ? "" : " from its .edgepack") + " ("
                    + bundle.format + ", " + bundle.layout + ", " + bundle.pooling + " pooling, exits "
                    + bundle.exitLayers + "): ids " + idsOk + "/" + texts.size() + ", runs " + runsOk + "/" + runs.size()
                    + " agree with the Python Predictor, max |score diff| " + worstScore + ", max |entropy diff| "
                    + worstEntropy);
            misuse(name, bundle, predictor);
            corruption(name, dir, bundle);
        }
    }

    /** {@code Bundle.loadPacked} of the pack; its files must be the directory's, byte for byte. */
    static Bundle packedBundle(String name, String packFile, File dir) throws Exception {
        byte[] pack = Files.readAllBytes(new File(packFile).toPath());
        Bundle bundle = Bundle.loadPacked(pack, packFile);
        EdgePack files = (EdgePack) bundle.files;
        java.util.TreeSet<String> expected = new java.util.TreeSet<>(Json.asObject(bundle.manifest.get("files"), "f").keySet());
        expected.add(Bundle.MANIFEST);
        check(expected.equals(new java.util.TreeSet<>(files.names())), name + ": pack holds " + files.names());
        int same = 0;
        long bytes = 0;
        for (String file : expected) {
            byte[] want = Files.readAllBytes(new File(dir, file).toPath());
            boolean ok = Arrays.equals(want, files.read(file));
            check(ok, name + ": '" + file + "' decoded from the pack differs from the exported file");
            same += ok ? 1 : 0;
            bytes += want.length;
        }
        System.out.println("pack " + name + ": " + pack.length + " bytes decode to " + same + "/" + expected.size()
                + " files identical to the export (" + bytes + " bytes)");
        return bundle;
    }

    /** Damaged, foreign or hostile packs are refused with one sentence saying what is wrong. */
    static void badPacks(List<Object> cases) throws Exception {
        int refused = 0;
        for (Object c : cases) {
            Map<String, Object> kase = obj(c);
            String file = (String) kase.get("file");
            byte[] data = Files.readAllBytes(new File(file).toPath());
            int before = failures.size();
            expectThrows(() -> Bundle.loadPacked(data, new File(file).getName()), (String) kase.get("expect"),
                    "bad pack " + kase.get("what"));
            refused += failures.size() == before ? 1 : 0;
        }
        System.out.println("bad packs: " + refused + "/" + cases.size() + " refused with the expected reason");
    }

    private static Integer[] toIntegers(int[] v) {
        Integer[] out = new Integer[v.length];
        for (int i = 0; i < v.length; i++) {
            out[i] = v[i];
        }
        return out;
    }

    private static List<String> toStrings(List<Object> v) {
        List<String> out = new ArrayList<>();
        for (Object o : v) {
            out.add((String) o);
        }
        return out;
    }

    /** Requests the reference runtime refuses are refused here with the same reason. */
    static void misuse(String name, Bundle bundle, Predictor predictor) {
        expectThrows(() -> ExitRule.patience(0), "at least 1", name + ": patience 0");
        expectThrows(() -> ExitRule.entropy(0.0), "greater than 0", name + ": entropy threshold 0");
        expectThrows(() -> ExitRule.entropy(Double.NaN), "greater than 0", name + ": entropy threshold NaN");
        expectThrows(() -> predictor.predict("x", bundle.depth() + 1), bundle.isPerLayer() ? "between 1 and" : "fixed",
                name + ": exit beyond the depth");
        if (!bundle.isPerLayer()) {
            expectThrows(() -> predictor.predictDynamic("x", ExitRule.patience(2), null), "per-layer bundle",
                    name + ": dynamic exit on a fixed bundle");
        } else {
            expectThrows(() -> predictor.predictDynamic("x", ExitRule.patience(2), 0), "between 1 and",
                    name + ": max layer 0");
        }
    }

    /** A damaged bundle is refused before anything runs, naming what is wrong. */
    static void corruption(String name, File dir, Bundle bundle) throws Exception {
        final String victim = bundle.graphs.values().iterator().next().file;
        BundleFiles flipped = new Tampered(dir, victim, data -> {
            data[data.length / 2] ^= 1;
            return data;
        });
        expectThrows(() -> Bundle.load(flipped, true), "'" + victim + "' does not match its sha256",
                name + ": flipped byte");
        BundleFiles truncated = new Tampered(dir, victim, data -> Arrays.copyOf(data, data.length - 1));
        expectThrows(() -> Bundle.load(truncated, true), "corrupted or truncated", name + ": truncated file");
        BundleFiles missing = new Tampered(dir, victim, null);
        expectThrows(() -> Bundle.load(missing, true), "'" + victim + "' listed in manifest.json is missing",
                name + ": missing file");
        String manifest = new String(Files.readAllBytes(new File(dir, Bundle.MANIFEST).toPath()), StandardCharsets.UTF_8);
        String[][] edits = {
                {"\"format_version\":\\s*1", "\"format_version\": 2", "format_version 2 is not supported"},
                {"\"layout\":\\s*\"[a-z-]+\"", "\"layout\": \"tree\"", "layout tree is not one of"},
                {"\"max_length\":\\s*\\d+", "\"max_length\": 1", "max_length 1 must be an integer of at least 2"},
                {"\"format\":\\s*\"[a-z]+\"", "\"format\": \"coreml\"", "format coreml is not one of"},
                {"\"labels\":\\s*\\{", "\"labelz\": {", "manifest.json lacks labels"},
                {"\"layers\":\\s*\\[", "\"layers\": [0, ", "exits.layers' must list the exit layers"},
                {"\"pooling\":\\s*\"[a-z]+\"", "\"pooling\": \"max\"", "model.pooling max is not one of cls, mean"},
        };
        for (String[] edit : edits) {
            String changed = manifest.replaceFirst(edit[0], edit[1]);
            check(!changed.equals(manifest), name + ": manifest edit " + edit[0] + " applies");
            BundleFiles files = new Tampered(dir, Bundle.MANIFEST, data -> changed.getBytes(StandardCharsets.UTF_8));
            expectThrows(() -> Bundle.load(files, false), edit[2], name + ": manifest with " + edit[1]);
        }
        if (bundle.isPerLayer()) {
            // The manifest's pooling must match what the head graph takes.
            String other = "mean".equals(bundle.pooling) ? "cls" : "mean";
            String swapped = manifest.replaceFirst("\"pooling\":\\s*\"[a-z]+\"", "\"pooling\": \"" + other + "\"");
            BundleFiles files = new Tampered(dir, Bundle.MANIFEST, data -> swapped.getBytes(StandardCharsets.UTF_8));
            expectThrows(() -> Bundle.load(files, false), "a " + other + "-pooled head takes",
                    name + ": manifest with pooling " + other);
        }
        BundleFiles notJson = new Tampered(dir, Bundle.MANIFEST, data -> "{\"format\": ".getBytes(StandardCharsets.UTF_8));
        expectThrows(() -> Bundle.load(notJson, false), "manifest.json is not valid JSON", name + ": broken manifest");
        expectThrows(() -> Bundle.load(new BundleFiles.Directory(new File(dir, "nowhere")), false),
                "has no manifest.json", name + ": not a bundle");
        System.out.println("  " + name + ": damaged bundles and bad requests are refused with the reference's reasons");
    }

    interface Edit {
        byte[] apply(byte[] data);
    }

    /** The bundle directory with one file changed ({@code edit} null: removed). */
    static final class Tampered implements BundleFiles {
        final BundleFiles inner;
        final String target;
        final Edit edit;

        Tampered(File dir, String target, Edit edit) {
            this.inner = new BundleFiles.Directory(dir);
            this.target = target;
            this.edit = edit;
        }

        @Override
        public byte[] read(String name) throws IOException {
            if (name.equals(target)) {
                if (edit == null) {
                    throw new java.io.FileNotFoundException(name);
                }
                return edit.apply(inner.read(name));
            }
            return inner.read(name);
        }

        @Override
        public String describe() {
            return inner.describe() + " (tampered)";
        }
    }

    // ---------------------------------------------------------------------------------------------

    /** Runs a group of checks; an exception fails the group instead of ending the run. */
    private static void group(String name, Body body) {
        try {
            body.run();
        } catch (Exception e) {
            java.io.StringWriter trace = new java.io.StringWriter();
            e.printStackTrace(new java.io.PrintWriter(trace));
            check(false, name + " raised " + trace);
            System.out.println(name + ": raised " + e);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: GoldenTest goldens.json");
            System.exit(2);
        }
        long start = System.nanoTime();
        Map<String, Object> goldens = obj(Json.parse(new String(Files.readAllBytes(new File(args[0]).toPath()),
                StandardCharsets.UTF_8)));
        group("json reader", GoldenTest::jsonReader);
        group("exit rules", GoldenTest::exitRulesByHand);
        group("v2 scores by hand", GoldenTest::v2ScoresByHand);
        group("tokenizers", () -> tokenizers(list(goldens.get("tokenizers"))));
        for (Object t : list(goldens.get("tokenizers"))) {
            if ("unigram".equals(obj(t).get("type"))) {
                group("static padding", () -> staticPadding((String) obj(t).get("file")));
                break;
            }
        }
        group("bundles", () -> bundles(list(goldens.get("bundles"))));
        if (goldens.get("bad_packs") != null) {
            group("bad packs", () -> badPacks(list(goldens.get("bad_packs"))));
        }
        System.out.printf("%d checks, %d failed (%.1f s)%n", checks, failures.size(), (System.nanoTime() - start) / 1e9);
        for (String f : failures.subList(0, Math.min(40, failures.size()))) {
            System.out.println("FAILED " + f);
        }
        System.exit(failures.isEmpty() ? 0 : 1);
    }
}
