package io.edgekit.core;

/**
 * Post-processing of one row of logits, in float32 step for step as the reference runtime's numpy
 * code ({@code softmax}, {@code prediction_entropy}, {@code argmax} in {@code runtime.py}), so that a
 * threshold comparison falls the same way on both sides.
 */
public final class Scores {
    private Scores() {
    }

    /** Index of the largest logit; the first one on ties (numpy's argmax). */
    public static int argmax(float[] logits) {
        int best = 0;
        for (int i = 1; i < logits.length; i++) {
            if (logits[i] > logits[best]) {
                best = i;
            }
        }
        return best;
    }

    private static float max(float[] logits) {
        float m = logits[0];
        for (float v : logits) {
            m = Math.max(m, v);
        }
        return m;
    }

    /** Softmax probabilities: exp(z - max) / sum. */
    public static float[] softmax(float[] logits) {
        float m = max(logits);
        float[] e = new float[logits.length];
        float sum = 0f;
        for (int i = 0; i < logits.length; i++) {
            e[i] = (float) Math.exp(logits[i] - m);
            sum += e[i];
        }
        for (int i = 0; i < e.length; i++) {
            e[i] = e[i] / sum;
        }
        return e;
    }

    /** Entropy of the softmax in nats (DeeBERT's exit criterion; {@code edgekit.early_exit.prediction_entropy}). */
    public static float entropy(float[] logits) {
        float m = max(logits);
        float[] z = new float[logits.length];
        float sum = 0f;
        for (int i = 0; i < logits.length; i++) {
            z[i] = logits[i] - m;
            sum += (float) Math.exp(z[i]);
        }
        float logSum = (float) Math.log(sum);
        float h = 0f;
        for (float zi : z) {
            float logP = zi - logSum;
            h += (float) Math.exp(logP) * logP;
        }
        return -h;
    }
}
