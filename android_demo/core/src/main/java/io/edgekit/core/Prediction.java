package io.edgekit.core;

/** The result for one text: label, scores at the exit, where it exited, and what it cost. */
public final class Prediction {
    public final String label;
    public final int labelId;
    /** Softmax probabilities at the exit, one per label. */
    public final float[] scores;
    public final float[] logits;
    public final int exitLayer;
    /** Passes through the shared layer actually run (the fixed graph's exit layer for a fixed bundle). */
    public final int layerEvaluations;
    /** The argmax of every layer whose head was run, in order (a fixed exit runs the head once). */
    public final int[] layerPredictions;
    /** Token ids fed to the model, special tokens included, before padding. */
    public final int[] inputIds;
    public final long tokenizeNanos;
    public final long inferenceNanos;

    Prediction(String label, int labelId, float[] scores, float[] logits, int exitLayer, int layerEvaluations,
               int[] layerPredictions, int[] inputIds, long tokenizeNanos, long inferenceNanos) {
        this.label = label;
        this.labelId = labelId;
        this.scores = scores;
        this.logits = logits;
        this.exitLayer = exitLayer;
        this.layerEvaluations = layerEvaluations;
        this.layerPredictions = layerPredictions;
        this.inputIds = inputIds;
        this.tokenizeNanos = tokenizeNanos;
        this.inferenceNanos = inferenceNanos;
    }

    public long totalNanos() {
        return tokenizeNanos + inferenceNanos;
    }
}
