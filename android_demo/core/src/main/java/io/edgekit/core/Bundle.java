package io.edgekit.core;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.NoSuchFileException;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * A validated bundle: {@code manifest.json}, the labels, and (on demand) the device tokenizer.
 *
 * <p>Port of {@code export/edgekit_device/bundle.py}: {@link #load} checks the manifest's structure
 * and, with {@code verify}, every listed file's size and sha256 before anything runs, so a truncated
 * copy or a flipped byte is a {@link BundleException} naming the file, not a wrong prediction.
 */
public final class Bundle {
    public static final int FORMAT_VERSION = 1;
    public static final String MANIFEST = "manifest.json";
    static final List<String> FORMATS = Arrays.asList("onnx", "tflite");
    static final List<String> PRECISIONS = Arrays.asList("fp32", "int8");
    static final String[] REQUIRED = {"format_version", "format", "precision", "layout", "graphs", "max_length",
            "exits", "model", "tokenizer", "labels", "files"};
    /**
     * How the head reads the layer it is given (manifest {@code model.pooling}, absent: cls): [CLS]
     * through the pooler, or the masked token mean, whose head graph also takes the attention mask.
     */
    static final List<String> POOLINGS = Arrays.asList("cls", "mean");

    /** A graph of the bundle: its file, TFLite signature (or null) and declared inputs and outputs. */
    public static final class Graph {
        public final String name;
        public final String file;
        public final String signature;
        public final List<TensorSpec> inputs;
        public final List<TensorSpec> outputs;

        Graph(String name, String file, String signature, List<TensorSpec> inputs, List<TensorSpec> outputs) {
            this.name = name;
            this.file = file;
            this.signature = signature;
            this.inputs = inputs;
            this.outputs = outputs;
        }

        public TensorSpec input(String tensor) {
            for (TensorSpec t : inputs) {
                if (t.name.equals(tensor)) {
                    return t;
                }
            }
            return null;
        }
    }

    public final BundleFiles files;
    public final Map<String, Object> manifest;
    public final List<String> labels;
    public final String format;
    public final String precision;
    public final String layout;
    public final int maxLength;
    /** The exit layers the bundle serves, in manifest order (1..depth for per-layer, {k} for fixed). */
    public final List<Integer> exitLayers;
    public final Map<String, Graph> graphs;
    /** {@code cls} or {@code mean}; a mean-pooled head is fed the attention mask. */
    public final String pooling;
    private Tokenizer tokenizer;

    private Bundle(BundleFiles files, Map<String, Object> manifest, List<String> labels) {
        this.files = files;
        this.manifest = manifest;
        this.labels = Collections.unmodifiableList(labels);
        this.format = (String) manifest.get("format");
        this.precision = (String) manifest.get("precision");
        this.layout = (String) manifest.get("layout");
        this.maxLength = Json.asInt(manifest.get("max_length"), "max_length");
        this.pooling = poolingOf(manifest);
        List<Integer> exits = new ArrayList<>();
        for (Object k : Json.asList(Json.asObject(manifest.get("exits"), "exits").get("layers"), "exits.layers")) {
            exits.add(Json.asInt(k, "exit layer"));
        }
        this.exitLayers = Collections.unmodifiableList(exits);
        Map<String, Graph> parsed = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : Json.asObject(manifest.get("graphs"), "graphs").entrySet()) {
            Map<String, Object> g = Json.asObject(e.getValue(), "graph");
            List<TensorSpec> in = new ArrayList<>();
            List<TensorSpec> out = new ArrayList<>();
            for (Object t : Json.asList(g.get("inputs"), "inputs")) {
                in.add(TensorSpec.parse(Json.asObject(t, "tensor")));
            }
            for (Object t : Json.asList(g.get("outputs"), "outputs")) {
                out.add(TensorSpec.parse(Json.asObject(t, "tensor")));
            }
            Object signature = g.get("signature");
            parsed.put(e.getKey(), new Graph(e.getKey(), (String) g.get("file"),
                    signature instanceof String ? (String) signature : null, in, out));
        }
        this.graphs = Collections.unmodifiableMap(parsed);
    }

    private static String poolingOf(Map<?, ?> manifest) {
        Object value = ((Map<?, ?>) manifest.get("model")).get("pooling");
        return value == null ? "cls" : String.valueOf(value);
    }

    /** The head's inputs for a pooling (Python's {@code HEAD_INPUTS}). */
    static List<String> headInputs(String pooling) {
        return "mean".equals(pooling) ? Arrays.asList("hidden", "attention_mask") : Collections.singletonList("hidden");
    }

    /** Graph names a layout needs (Python's {@code LAYOUTS}). */
    static List<String> layoutGraphs(String layout) {
        if ("fixed".equals(layout)) {
            return Collections.singletonList("model");
        }
        if ("per-layer".equals(layout)) {
            return Arrays.asList("embed", "layer", "head");
        }
        return null;
    }

    public boolean isPerLayer() {
        return "per-layer".equals(layout);
    }

    /** The deepest exit. */
    public int depth() {
        return Collections.max(exitLayers);
    }

    /** The exit used when none is asked for: the fixed bundle's one exit, else the deepest. */
    public int defaultExit() {
        return isPerLayer() ? depth() : exitLayers.get(exitLayers.size() - 1);
    }

    public byte[] read(String name) throws BundleException {
        try {
            return files.read(name);
        } catch (FileNotFoundException | NoSuchFileException e) {
            throw fail(files, "file '" + name + "' listed in manifest.json is missing; export or copy the bundle again.");
        } catch (IOException e) {
            throw new BundleException("bundle '" + files.describe() + "': cannot read '" + name + "' (" + e.getMessage()
                    + ").", e);
        }
    }

    public byte[] readGraph(String graph) throws BundleException {
        return read(graphs.get(graph).file);
    }

    /** The device tokenizer, read and built on first use. */
    public synchronized Tokenizer tokenizer() throws BundleException {
        if (tokenizer == null) {
            String file = (String) Json.asObject(manifest.get("tokenizer"), "tokenizer").get("file");
            tokenizer = Tokenizer.fromJson(new String(read(file), StandardCharsets.UTF_8), file);
        }
        return tokenizer;
    }

    private static BundleException fail(BundleFiles files, String what) {
        return new BundleException("bundle '" + files.describe() + "': " + what);
    }

    // ---------------------------------------------------------------------------------------------

    /** Opens a bundle: validates {@code manifest.json} and (with {@code verify}) every file's size and sha256. */
    public static Bundle load(BundleFiles files, boolean verify) throws BundleException {
        byte[] raw;
        try {
            raw = files.read(MANIFEST);
        } catch (IOException e) {
            throw new BundleException("'" + files.describe() + "' is not a bundle (it has no manifest.json); "
                    + "copy a directory written by `edgekit export`.");
        }
        Object parsed;
        try {
            parsed = Json.parse(new String(raw, StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            throw fail(files, "manifest.json is not valid JSON (" + e.getMessage() + "); export the bundle again.");
        }
        validateManifest(parsed, files);
        @SuppressWarnings("unchecked")
        Map<String, Object> manifest = (Map<String, Object>) parsed;
        if (verify) {
            verifyFiles(files, manifest);
        }
        String labelsFile = (String) Json.asObject(manifest.get("labels"), "labels").get("file");
        List<String> labels = new ArrayList<>();
        try {
            Object value = Json.parse(new String(readFrom(files, labelsFile), StandardCharsets.UTF_8));
            if (!(value instanceof List)) {
                throw new IllegalArgumentException("not a list");
            }
            for (Object label : (List<?>) value) {
                if (!(label instanceof String)) {
                    throw new IllegalArgumentException("not a list of strings");
                }
                labels.add((String) label);
            }
        } catch (IllegalArgumentException e) {
            throw fail(files, "'" + labelsFile + "' must be a JSON list of label names (" + e.getMessage() + ").");
        }
        Object numLabels = Json.asObject(manifest.get("model"), "model").get("num_labels");
        if (numLabels != null && labels.size() != Json.asLong(numLabels, "num_labels")) {
            throw fail(files, "'" + labelsFile + "' has " + labels.size() + " labels, the model has " + numLabels + ".");
        }
        try {
            return new Bundle(files, manifest, labels);
        } catch (IllegalArgumentException e) {
            throw fail(files, "manifest.json is malformed (" + e.getMessage() + "); export the bundle again.");
        }
    }

    /**
     * Opens a packed bundle, the {@code .edgepack} download itself: {@link EdgePack} decodes it in
     * memory (zlib, sparse tensors spliced back, every file's sha256 checked against the pack
     * header), then {@link #load} verifies every file against {@code manifest.json} as for a
     * directory. The app calls this for {@code assets/bundle.edgepack}; the JVM test drives the same.
     */
    public static Bundle loadPacked(byte[] pack, String where) throws BundleException {
        return load(EdgePack.read(pack, where), true);
    }

    private static byte[] readFrom(BundleFiles files, String name) throws BundleException {
        try {
            return files.read(name);
        } catch (IOException e) {
            throw fail(files, "file '" + name + "' listed in manifest.json is missing; export or copy the bundle again.");
        }
    }

    /** Throws unless {@code value} has the structure BUNDLE.md describes (Python's {@code validate_manifest}). */
    public static void validateManifest(Object value, BundleFiles where) throws BundleException {
        if (!(value instanceof Map)) {
            throw fail(where, "manifest.json is not a JSON object; export the bundle again.");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) value;
        List<String> missing = new ArrayList<>();
        for (String key : REQUIRED) {
            if (!m.containsKey(key)) {
                missing.add(key);
            }
        }
        if (!missing.isEmpty()) {
            throw fail(where, "manifest.json lacks " + String.join(", ", missing)
                    + "; export the bundle again with this edgekit.");
        }
        Object version = m.get("format_version");
        if (!(Json.isInteger(version) && (Long) version == FORMAT_VERSION)) {
            throw fail(where, "manifest format_version " + version + " is not supported (this app reads version "
                    + FORMAT_VERSION + "); use the matching edgekit.");
        }
        if (!FORMATS.contains(m.get("format"))) {
            throw fail(where, "format " + m.get("format") + " is not one of " + String.join(", ", FORMATS) + ".");
        }
        if (!PRECISIONS.contains(m.get("precision"))) {
            throw fail(where, "precision " + m.get("precision") + " is not one of " + String.join(", ", PRECISIONS) + ".");
        }
        Object layoutValue = m.get("layout");
        List<String> needed = layoutValue instanceof String ? layoutGraphs((String) layoutValue) : null;
        if (needed == null) {
            throw fail(where, "layout " + layoutValue + " is not one of fixed, per-layer.");
        }
        String layout = (String) layoutValue;
        Object graphsValue = m.get("graphs");
        if (!(graphsValue instanceof Map)
                || !new TreeSet<>(((Map<?, ?>) graphsValue).keySet()).equals(new TreeSet<>(needed))) {
            throw fail(where, "a " + layout + " bundle needs the graphs " + String.join(", ", needed)
                    + ", the manifest lists "
                    + (graphsValue instanceof Map ? ((Map<?, ?>) graphsValue).keySet() : graphsValue) + ".");
        }
        Object filesValue = m.get("files");
        if (!(filesValue instanceof Map)) {
            throw fail(where, "manifest 'files' must map file names to their bytes and sha256.");
        }
        Map<?, ?> files = (Map<?, ?>) filesValue;
        for (Map.Entry<?, ?> e : ((Map<?, ?>) graphsValue).entrySet()) {
            Object name = e.getKey();
            if (!(e.getValue() instanceof Map)) {
                throw fail(where, "graph '" + name + "' in manifest.json must be an object.");
            }
            Map<?, ?> graph = (Map<?, ?>) e.getValue();
            for (String key : new String[]{"file", "inputs", "outputs"}) {
                if (!graph.containsKey(key)) {
                    throw fail(where, "graph '" + name + "' in manifest.json lacks '" + key + "'.");
                }
            }
            if (!files.containsKey(graph.get("file"))) {
                throw fail(where, "graph '" + name + "' file '" + graph.get("file")
                        + "' is not listed in manifest 'files'.");
            }
            List<Object> tensors = new ArrayList<>();
            if (graph.get("inputs") instanceof List) {
                tensors.addAll((List<?>) graph.get("inputs"));
            }
            if (graph.get("outputs") instanceof List) {
                tensors.addAll((List<?>) graph.get("outputs"));
            }
            for (Object t : tensors) {
                boolean ok = t instanceof Map;
                if (ok) {
                    Map<?, ?> tm = (Map<?, ?>) t;
                    ok = tm.containsKey("name") && tm.containsKey("dtype") && tm.get("shape") instanceof List
                            && tm.get("axes") instanceof List
                            && ((List<?>) tm.get("shape")).size() == ((List<?>) tm.get("axes")).size();
                }
                if (!ok) {
                    throw fail(where, "graph '" + name + "' has a malformed tensor entry " + t
                            + " (needs name, dtype, shape and axes of equal length).");
                }
            }
        }
        if (!(m.get("model") instanceof Map)) {
            throw fail(where, "manifest 'model' must be an object describing the model; export the bundle again.");
        }
        Object poolingValue = ((Map<?, ?>) m.get("model")).get("pooling");
        String pooling = poolingValue == null ? "cls" : (poolingValue instanceof String ? (String) poolingValue : null);
        if (!POOLINGS.contains(pooling)) {
            throw fail(where, "model.pooling " + poolingValue + " is not one of " + String.join(", ", POOLINGS)
                    + "; export the bundle again with this edgekit.");
        }
        if ("per-layer".equals(layout)) {
            TreeSet<String> takes = new TreeSet<>();
            Object headInputs = ((Map<?, ?>) ((Map<?, ?>) graphsValue).get("head")).get("inputs");
            if (headInputs instanceof List) {
                for (Object t : (List<?>) headInputs) {
                    takes.add(String.valueOf(((Map<?, ?>) t).get("name")));
                }
            }
            if (!takes.equals(new TreeSet<>(headInputs(pooling)))) {
                throw fail(where, "a " + pooling + "-pooled head takes " + String.join(", ", headInputs(pooling))
                        + ", but graph 'head' in manifest.json takes "
                        + (takes.isEmpty() ? "nothing" : String.join(", ", takes)) + "; export the bundle again.");
            }
        }
        Object exits = m.get("exits");
        Object layers = exits instanceof Map ? ((Map<?, ?>) exits).get("layers") : null;
        boolean layersOk = layers instanceof List && !((List<?>) layers).isEmpty();
        if (layersOk) {
            for (Object k : (List<?>) layers) {
                if (!(Json.isInteger(k) && (Long) k >= 1)) {
                    layersOk = false;
                }
            }
        }
        if (!layersOk) {
            throw fail(where, "manifest 'exits.layers' must list the exit layers (integers from 1).");
        }
        if ("fixed".equals(layout) && ((List<?>) layers).size() != 1) {
            throw fail(where, "a fixed bundle has exactly one exit layer.");
        }
        Object maxLength = m.get("max_length");
        if (!(Json.isInteger(maxLength) && (Long) maxLength >= 2)) {
            throw fail(where, "max_length " + maxLength + " must be an integer of at least 2.");
        }
        for (String key : new String[]{"tokenizer", "labels"}) {
            Object entry = m.get(key);
            if (!(entry instanceof Map) || !files.containsKey(((Map<?, ?>) entry).get("file"))) {
                throw fail(where, "manifest '" + key + "' must name a file listed in 'files'.");
            }
        }
    }

    /** Every file the manifest lists exists with the recorded size and sha256 (Python's {@code verify_files}). */
    static void verifyFiles(BundleFiles files, Map<String, Object> manifest) throws BundleException {
        for (Map.Entry<String, Object> e : Json.asObject(manifest.get("files"), "files").entrySet()) {
            String name = e.getKey();
            Map<String, Object> entry = Json.asObject(e.getValue(), "files entry");
            if (name.startsWith("/") || Arrays.asList(name.split("/")).contains("..")) {
                throw fail(files, "manifest lists a file outside the bundle ('" + name + "').");
            }
            byte[] data = readFrom(files, name);
            Object bytes = entry.get("bytes");
            if (!(Json.isInteger(bytes) && (Long) bytes == data.length)) {
                throw fail(files, "file '" + name + "' has " + data.length + " bytes, manifest.json says " + bytes
                        + "; the bundle is corrupted or truncated, export or copy it again.");
            }
            if (!sha256(data).equals(entry.get("sha256"))) {
                throw fail(files, "file '" + name + "' does not match its sha256 in manifest.json; the bundle is "
                        + "corrupted, export or copy it again.");
            }
        }
    }

    public static String sha256(byte[] data) {
        try {
            byte[] digest = MessageDigest.getInstance("SHA-256").digest(data);
            StringBuilder hex = new StringBuilder(64);
            for (byte b : digest) {
                hex.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
            }
            return hex.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is not available", e);
        }
    }
}
