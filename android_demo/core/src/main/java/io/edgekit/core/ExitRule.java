package io.edgekit.core;

/**
 * When an example stops climbing the shared layer (M6-Rec section 3.5, dynamic early exit).
 *
 * <ul>
 *   <li>{@link #patience} (PABEE): stop when {@code patience} consecutive layers repeat the
 *       previous layer's prediction;</li>
 *   <li>{@link #entropy} (DeeBERT): stop at the first layer whose prediction entropy (nats) is
 *       below the threshold.</li>
 * </ul>
 * The last allowed layer always stops. Same rules, same order of checks as
 * {@code Predictor.dynamic} in {@code runtime.py}.
 */
public abstract class ExitRule {
    /** Per-example state while climbing: ask {@link #exitAt} once per layer, in order from layer 1. */
    public interface Decider {
        boolean exitAt(int layer, int maxLayer, float[] logits);
    }

    public abstract String mode();

    public abstract Decider start();

    /** PABEE: exit once {@code patience} consecutive layers agree with the layer before them. */
    public static ExitRule patience(final int patience) throws BundleException {
        if (patience < 1) {
            throw new BundleException("patience must be an integer of at least 1, got " + patience + ".");
        }
        return new ExitRule() {
            @Override
            public String mode() {
                return "patience";
            }

            @Override
            public Decider start() {
                return new Decider() {
                    private int previous = -1;
                    private int counter = 0;

                    @Override
                    public boolean exitAt(int layer, int maxLayer, float[] logits) {
                        if (layer == maxLayer) {
                            return true;
                        }
                        int prediction = Scores.argmax(logits);
                        counter = prediction == previous ? counter + 1 : 0;
                        previous = prediction;
                        return counter >= patience;
                    }
                };
            }

            @Override
            public String toString() {
                return "patience " + patience;
            }
        };
    }

    /** DeeBERT: exit at the first layer whose softmax entropy (nats) is below {@code threshold}. */
    public static ExitRule entropy(final double threshold) throws BundleException {
        if (!(threshold > 0)) {
            throw new BundleException("entropy_threshold must be greater than 0, got " + threshold + ".");
        }
        // numpy compares a float32 array with a Python float in float32 (NEP 50), so the threshold is rounded first.
        final float limit = (float) threshold;
        return new ExitRule() {
            @Override
            public String mode() {
                return "entropy";
            }

            @Override
            public Decider start() {
                return new Decider() {
                    @Override
                    public boolean exitAt(int layer, int maxLayer, float[] logits) {
                        return layer == maxLayer || Scores.entropy(logits) < limit;
                    }
                };
            }

            @Override
            public String toString() {
                return "entropy < " + threshold;
            }
        };
    }

    /** The exit layer (1-based) this rule picks given every layer's logits, {@code layerLogits[k - 1]}. */
    public int chooseExit(float[][] layerLogits) {
        Decider decider = start();
        for (int layer = 1; layer <= layerLogits.length; layer++) {
            if (decider.exitAt(layer, layerLogits.length, layerLogits[layer - 1])) {
                return layer;
            }
        }
        throw new IllegalArgumentException("no layers given");
    }
}
