package io.edgekit.demo;

import org.tensorflow.lite.DataType;
import org.tensorflow.lite.Interpreter;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

import io.edgekit.core.Bundle;
import io.edgekit.core.BundleException;
import io.edgekit.core.GraphRunner;
import io.edgekit.core.Tensor;

/**
 * Runs a TFLite bundle's graphs with LiteRT's {@link Interpreter}, one interpreter per graph, each
 * through its signature ({@code serving_default}) by input and output name: the Java twin of
 * {@code export/edgekit_device/tflite_backend.py}.
 *
 * <p>A graph quantized to full int8 takes and gives int8 tensors; inputs are quantized and outputs
 * dequantized here with each tensor's own scale and zero point, in float32 like the reference
 * ({@code round(x / scale) + zero_point}, halves to even, clipped), so callers never see the difference.
 */
final class TfliteGraphRunner implements GraphRunner, AutoCloseable {
    private static final String SIGNATURE = "serving_default";

    private final Map<String, Interpreter> interpreters = new HashMap<>();
    private final Map<String, String> signatures = new HashMap<>();

    TfliteGraphRunner(Bundle bundle, int threads) throws BundleException {
        if (!"tflite".equals(bundle.format)) {
            throw new BundleException("this app runs TFLite bundles, this one is " + bundle.format
                    + "; export it again with `edgekit export ... --format tflite`.");
        }
        try {
            for (Bundle.Graph graph : bundle.graphs.values()) {
                byte[] bytes = bundle.read(graph.file);
                ByteBuffer model = ByteBuffer.allocateDirect(bytes.length).order(ByteOrder.nativeOrder());
                model.put(bytes);
                model.rewind();
                Interpreter.Options options = new Interpreter.Options();
                options.setNumThreads(threads);
                Interpreter interpreter = new Interpreter(model, options);
                String[] keys = interpreter.getSignatureKeys();
                String wanted = graph.signature != null ? graph.signature : SIGNATURE;
                String key = Arrays.asList(keys).contains(wanted) ? wanted : keys.length > 0 ? keys[0] : null;
                if (key == null) {
                    interpreter.close();
                    throw new BundleException("graph '" + graph.file + "' has no signature; export the bundle again "
                            + "with this edgekit.");
                }
                interpreters.put(graph.name, interpreter);
                signatures.put(graph.name, key);
            }
        } catch (IllegalArgumentException e) {
            close();
            throw new BundleException("LiteRT cannot load the bundle's graphs (" + e.getMessage() + ").", e);
        }
    }

    @Override
    public Map<String, Tensor> run(String graph, Map<String, Tensor> inputs) throws BundleException {
        Interpreter interpreter = interpreters.get(graph);
        String key = signatures.get(graph);
        try {
            Map<String, Object> feeds = new HashMap<>();
            for (Map.Entry<String, Tensor> e : inputs.entrySet()) {
                org.tensorflow.lite.Tensor slot = interpreter.getInputTensorFromSignature(e.getKey(), key);
                feeds.put(e.getKey(), toBuffer(e.getValue(), slot));
            }
            Map<String, Object> fetches = new LinkedHashMap<>();
            Map<String, org.tensorflow.lite.Tensor> slots = new HashMap<>();
            for (String name : interpreter.getSignatureOutputs(key)) {
                org.tensorflow.lite.Tensor slot = interpreter.getOutputTensorFromSignature(name, key);
                slots.put(name, slot);
                fetches.put(name, ByteBuffer.allocateDirect(bytes(slot)).order(ByteOrder.nativeOrder()));
            }
            interpreter.runSignature(feeds, fetches, key);
            Map<String, Tensor> out = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : fetches.entrySet()) {
                out.put(e.getKey(), fromBuffer((ByteBuffer) e.getValue(), slots.get(e.getKey())));
            }
            return out;
        } catch (IllegalArgumentException | IllegalStateException e) {
            throw new BundleException("LiteRT failed on graph '" + graph + "' (" + e.getMessage() + ").", e);
        }
    }

    /** Bytes of a tensor, from its static shape (known before the signature's tensors are allocated). */
    private static int bytes(org.tensorflow.lite.Tensor slot) throws BundleException {
        DataType t = slot.dataType();
        int size = t == DataType.FLOAT32 || t == DataType.INT32 ? 4 : t == DataType.INT64 ? 8
                : t == DataType.INT8 || t == DataType.UINT8 ? 1 : 0;
        if (size == 0) {
            throw new BundleException("unsupported tensor type " + t + " in the graph.");
        }
        return size * slot.numElements();
    }

    private static boolean quantized(org.tensorflow.lite.Tensor slot) {
        DataType t = slot.dataType();
        return (t == DataType.INT8 || t == DataType.UINT8) && slot.quantizationParams().getScale() != 0f;
    }

    private static ByteBuffer toBuffer(Tensor value, org.tensorflow.lite.Tensor slot) throws BundleException {
        if (value.size() != slot.numElements()) {
            throw new BundleException("input of shape " + Arrays.toString(value.shape) + " does not fit the graph's "
                    + Arrays.toString(slot.shape()) + "; pad or truncate to the bundle's max_length.");
        }
        ByteBuffer buffer = ByteBuffer.allocateDirect(bytes(slot)).order(ByteOrder.nativeOrder());
        DataType type = slot.dataType();
        float scale = slot.quantizationParams().getScale();
        int zeroPoint = slot.quantizationParams().getZeroPoint();
        boolean q = quantized(slot);
        for (int i = 0; i < value.size(); i++) {
            double v = value.get(i);
            if (type == DataType.FLOAT32) {
                buffer.putFloat((float) v);
            } else if (type == DataType.INT32 && !q) {
                buffer.putInt((int) v);
            } else if (type == DataType.INT64) {
                buffer.putLong((long) v);
            } else if (q) {
                float level = (float) Math.rint((float) v / scale) + zeroPoint;
                int lo = type == DataType.INT8 ? -128 : 0;
                int hi = type == DataType.INT8 ? 127 : 255;
                buffer.put((byte) (int) Math.max(lo, Math.min(hi, level)));
            } else {
                throw new BundleException("unsupported input type " + type + " in the graph.");
            }
        }
        buffer.rewind();
        return buffer;
    }

    private static Tensor fromBuffer(ByteBuffer buffer, org.tensorflow.lite.Tensor slot) throws BundleException {
        buffer.rewind();
        int[] shape = slot.shape();
        int n = slot.numElements();
        DataType type = slot.dataType();
        if (quantized(slot)) {
            float scale = slot.quantizationParams().getScale();
            int zeroPoint = slot.quantizationParams().getZeroPoint();
            float[] out = new float[n];
            for (int i = 0; i < n; i++) {
                int stored = type == DataType.INT8 ? buffer.get() : buffer.get() & 0xFF;
                out[i] = ((float) stored - zeroPoint) * scale;
            }
            return Tensor.ofFloats(shape, out);
        }
        if (type == DataType.FLOAT32) {
            float[] out = new float[n];
            buffer.asFloatBuffer().get(out);
            return Tensor.ofFloats(shape, out);
        }
        if (type == DataType.INT32) {
            int[] out = new int[n];
            buffer.asIntBuffer().get(out);
            return Tensor.ofInts(shape, out);
        }
        if (type == DataType.INT64) {
            long[] out = new long[n];
            buffer.asLongBuffer().get(out);
            return Tensor.ofLongs(shape, out);
        }
        throw new BundleException("unsupported output type " + type + " in the graph.");
    }

    @Override
    public void close() {
        for (Interpreter interpreter : interpreters.values()) {
            interpreter.close();
        }
        interpreters.clear();
    }
}
