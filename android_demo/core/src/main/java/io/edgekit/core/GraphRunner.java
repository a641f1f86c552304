package io.edgekit.core;

import java.util.Map;

/**
 * Runs a bundle's graphs by name: the only part that needs an inference engine. The app
 * implements it with LiteRT's {@code Interpreter} ({@code TfliteGraphRunner}); tests replay
 * logits recorded from the Python reference runtime.
 *
 * <p>Contract (Python's {@code edgekit_device.backend.Backend.run}): {@code inputs} maps each input
 * name of the graph to a tensor with exactly the manifest's public dtype and, where the manifest
 * gives an integer dimension, exactly that size ({@link Predictor} pads and casts); the result maps
 * every output name to a tensor of the public dtype. A graph quantized to int8 is quantized and
 * dequantized inside the runner.
 */
public interface GraphRunner {
    /** Runs graph {@code graph} ({@code model}, or {@code embed} / {@code layer} / {@code head}). */
    Map<String, Tensor> run(String graph, Map<String, Tensor> inputs) throws BundleException;
}
