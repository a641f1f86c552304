package io.edgekit.core;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Text in, label out, with a fixed or dynamic exit: the port of {@code Predictor} in
 * {@code export/edgekit_device/runtime.py} for one text at a time (the phone's case; examples of a
 * batch are independent there, so the decisions are the same).
 *
 * <p>A {@code per-layer} bundle holds ALBERT's single shared layer once: {@code embed} runs once,
 * then {@code layer} k times, each pass fed the previous output and the same attention mask, and
 * {@code head} at each layer where the example may stop; a mean-pooled head ({@link Bundle#pooling})
 * is fed the attention mask as well. A {@code fixed} bundle runs its one {@code model} graph.
 *
 * <p>Shapes: inputs are padded to the manifest's static sizes ({@code input_ids} with the
 * tokenizer's pad id, everything else with 0) and outputs are cut back to the text's length, so the
 * hidden state fed to the next layer is zero beyond the text exactly as in the reference runtime.
 */
public final class Predictor {
    public final Bundle bundle;
    public final Tokenizer tokenizer;
    private final GraphRunner runner;

    public Predictor(Bundle bundle, GraphRunner runner) throws BundleException {
        this.bundle = bundle;
        this.tokenizer = bundle.tokenizer();
        this.runner = runner;
    }

    /** Token ids of {@code text}, truncated to the bundle's max_length. */
    public int[] encode(String text) {
        return tokenizer.encode(text, bundle.maxLength);
    }

    // -- running graphs with static or dynamic shapes

    private int padValue(String tensor) {
        return "input_ids".equals(tensor) ? tokenizer.padId : 0;
    }

    /**
     * {@code value} (batch 1, {@code length} positions on its sequence axis) laid into the shape
     * {@code spec} declares: dynamic dimensions keep the value's size, static ones are padded.
     */
    private Tensor fit(String graph, TensorSpec spec, Tensor value) throws BundleException {
        if (value.shape.length != spec.shape.length) {
            throw new BundleException("graph '" + graph + "' input '" + spec.name + "' has " + spec.shape.length
                    + " dimensions in manifest.json, the runtime has " + value.shape.length + ".");
        }
        int[] target = value.shape.clone();
        boolean same = true;
        for (int d = 0; d < target.length; d++) {
            Integer fixed = spec.shape[d];
            if (fixed == null) {
                continue;
            }
            boolean padded = "sequence".equals(spec.axes[d]) || "batch".equals(spec.axes[d]);
            if (fixed < value.shape[d] || (fixed > value.shape[d] && !padded)) {
                String what = "sequence".equals(spec.axes[d])
                        ? "an input of " + value.shape[d] + " tokens is longer than this bundle's fixed length " + fixed
                        + "; truncate texts to max_length."
                        : "graph '" + graph + "' input '" + spec.name + "' needs size " + fixed + " on axis "
                        + spec.axes[d] + ", got " + value.shape[d] + ".";
                throw new BundleException(what);
            }
            same &= fixed == value.shape[d];
            target[d] = fixed;
        }
        Tensor source = value.as(spec.dtype);
        if (same) {
            return source;
        }
        Tensor out = Tensor.zeros(spec.dtype, target);
        int pad = padValue(spec.name);
        if (pad != 0) {
            for (int i = 0; i < out.size(); i++) {
                out.set(i, pad);
            }
        }
        copyBlock(source, out);
        return out;
    }

    /** Copies {@code src} into the leading corner of the larger {@code dst} (row-major, same rank). */
    private static void copyBlock(Tensor src, Tensor dst) {
        int rank = src.shape.length;
        int[] index = new int[rank];
        int n = src.size();
        for (int i = 0; i < n; i++) {
            int flat = 0;
            for (int d = 0; d < rank; d++) {
                flat = flat * dst.shape[d] + index[d];
            }
            dst.copyFrom(src, i, flat);
            for (int d = rank - 1; d >= 0; d--) {
                if (++index[d] < src.shape[d]) {
                    break;
                }
                index[d] = 0;
            }
        }
    }

    /** Row 0 of {@code out}, its sequence axis (if any) cut to {@code length}. */
    private static Tensor cut(TensorSpec spec, Tensor out, int length) {
        int[] shape = out.shape.clone();
        int batch = spec.axis("batch");
        int sequence = spec.axis("sequence");
        if (batch >= 0) {
            shape[batch] = 1;
        }
        if (sequence >= 0) {
            shape[sequence] = Math.min(length, shape[sequence]);
        }
        if (Arrays.equals(shape, out.shape)) {
            return out;
        }
        Tensor small = Tensor.zeros(out.dtype, shape);
        // the inverse of copyBlock: read the leading corner
        int rank = shape.length;
        int[] index = new int[rank];
        for (int i = 0; i < small.size(); i++) {
            int flat = 0;
            for (int d = 0; d < rank; d++) {
                flat = flat * out.shape[d] + index[d];
            }
            small.copyFrom(out, flat, i);
            for (int d = rank - 1; d >= 0; d--) {
                if (++index[d] < shape[d]) {
                    break;
                }
                index[d] = 0;
            }
        }
        return small;
    }

    /** Runs {@code graph} on batch-1 feeds and returns its first output, cut back to {@code length}. */
    private Tensor run(String graph, Map<String, Tensor> feeds, int length) throws BundleException {
        Bundle.Graph g = bundle.graphs.get(graph);
        Map<String, Tensor> prepared = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : feeds.entrySet()) {
            TensorSpec spec = g.input(e.getKey());
            if (spec == null) {
                throw new BundleException("graph '" + graph + "' has no input '" + e.getKey()
                        + "' in manifest.json; export the bundle again with this edgekit.");
            }
            prepared.put(e.getKey(), fit(graph, spec, e.getValue()));
        }
        TensorSpec outSpec = g.outputs.get(0);
        Map<String, Tensor> outputs = runner.run(graph, prepared);
        Tensor out = outputs.get(outSpec.name);
        if (out == null) {
            throw new BundleException("graph '" + graph + "' returned no output '" + outSpec.name + "'.");
        }
        return cut(outSpec, out, length);
    }

    private static Tensor tokens(int[] values) {
        long[] data = new long[values.length];
        for (int i = 0; i < values.length; i++) {
            data[i] = values[i];
        }
        return Tensor.ofLongs(new int[]{1, values.length}, data);
    }

    private static float[] row(Tensor logits) {
        float[] out = new float[logits.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) logits.get(i);
        }
        return out;
    }

    private Map<String, Tensor> feeds(String k1, Tensor v1, String k2, Tensor v2) {
        Map<String, Tensor> out = new LinkedHashMap<>();
        out.put(k1, v1);
        if (k2 != null) {
            out.put(k2, v2);
        }
        return out;
    }

    /** The head's logits for {@code hidden}: a mean-pooled head also needs the mask. */
    private float[] head(Tensor hidden, Tensor mask, int length) throws BundleException {
        if ("mean".equals(bundle.pooling)) {
            return row(run("head", feeds("hidden", hidden, "attention_mask", mask), length));
        }
        return row(run("head", feeds("hidden", hidden, null, null), length));
    }

    // -- exits

    int checkExit(Integer exitLayer) throws BundleException {
        if (exitLayer == null) {
            return bundle.defaultExit();
        }
        if (!bundle.exitLayers.contains(exitLayer)) {
            if (!bundle.isPerLayer()) {
                throw new BundleException("this bundle computes exactly " + bundle.exitLayers.get(0) + " layers (a fixed "
                        + "exit); exit layer " + exitLayer + " needs a per-layer bundle (export without --exit-layer).");
            }
            throw new BundleException("exit layer must be a layer between 1 and " + bundle.depth() + ", got "
                    + exitLayer + ".");
        }
        return exitLayer;
    }

    /** Label of {@code text} when it exits at {@code exitLayer} (null: the default); no layer above it runs. */
    public Prediction predict(String text, Integer exitLayer) throws BundleException {
        int layer = checkExit(exitLayer);
        long t0 = System.nanoTime();
        int[] ids = encode(text);
        long t1 = System.nanoTime();
        Tensor idsTensor = tokens(ids);
        Tensor mask = ones(ids.length);
        float[] logits;
        int evaluations;
        if (!bundle.isPerLayer()) {
            logits = row(run("model", feeds("input_ids", idsTensor, "attention_mask", mask), ids.length));
            evaluations = layer;
        } else {
            Tensor hidden = run("embed", feeds("input_ids", idsTensor, null, null), ids.length);
            for (int k = 0; k < layer; k++) {
                hidden = run("layer", feeds("hidden", hidden, "attention_mask", mask), ids.length);
            }
            logits = head(hidden, mask, ids.length);
            evaluations = layer;
        }
        long t2 = System.nanoTime();
        return result(logits, layer, evaluations, new int[]{Scores.argmax(logits)}, ids, t1 - t0, t2 - t1);
    }

    /**
     * Dynamic early exit: climbs the shared layer until {@code rule} stops, at most to
     * {@code maxLayer} (null: the deepest). Needs a per-layer bundle.
     */
    public Prediction predictDynamic(String text, ExitRule rule, Integer maxLayer) throws BundleException {
        if (!bundle.isPerLayer()) {
            throw new BundleException("dynamic exits need a per-layer bundle (export without --exit-layer); this one "
                    + "computes exactly " + bundle.exitLayers.get(0) + " layers.");
        }
        int top = checkExit(maxLayer);
        long t0 = System.nanoTime();
        int[] ids = encode(text);
        long t1 = System.nanoTime();
        Tensor mask = ones(ids.length);
        Tensor hidden = run("embed", feeds("input_ids", tokens(ids), null, null), ids.length);
        ExitRule.Decider decider = rule.start();
        int[] trail = new int[top];
        for (int layer = 1; layer <= top; layer++) {
            hidden = run("layer", feeds("hidden", hidden, "attention_mask", mask), ids.length);
            float[] logits = head(hidden, mask, ids.length);
            trail[layer - 1] = Scores.argmax(logits);
            if (decider.exitAt(layer, top, logits)) {
                long t2 = System.nanoTime();
                return result(logits, layer, layer, Arrays.copyOf(trail, layer), ids, t1 - t0, t2 - t1);
            }
        }
        throw new IllegalStateException("the last layer always exits");
    }

    /** Logits of every exit 1..{@code maxLayer} for one text (a fixed bundle: its one exit), as {@code [k - 1][label]}. */
    public float[][] exitLogits(String text, Integer maxLayer) throws BundleException {
        int[] ids = encode(text);
        Tensor mask = ones(ids.length);
        if (!bundle.isPerLayer()) {
            return new float[][]{row(run("model", feeds("input_ids", tokens(ids), "attention_mask", mask), ids.length))};
        }
        int top = checkExit(maxLayer);
        float[][] out = new float[top][];
        Tensor hidden = run("embed", feeds("input_ids", tokens(ids), null, null), ids.length);
        for (int k = 0; k < top; k++) {
            hidden = run("layer", feeds("hidden", hidden, "attention_mask", mask), ids.length);
            out[k] = head(hidden, mask, ids.length);
        }
        return out;
    }

    private static Tensor ones(int length) {
        long[] data = new long[length];
        Arrays.fill(data, 1L);
        return Tensor.ofLongs(new int[]{1, length}, data);
    }

    private Prediction result(float[] logits, int exitLayer, int evaluations, int[] trail, int[] ids,
                              long tokenizeNanos, long inferenceNanos) throws BundleException {
        if (logits.length != bundle.labels.size()) {
            throw new BundleException("the model gave " + logits.length + " logits for " + bundle.labels.size()
                    + " labels; the bundle's labels.json does not match its model.");
        }
        int labelId = Scores.argmax(logits);
        return new Prediction(bundle.labels.get(labelId), labelId, Scores.softmax(logits), logits, exitLayer,
                evaluations, trail, ids, tokenizeNanos, inferenceNanos);
    }
}
