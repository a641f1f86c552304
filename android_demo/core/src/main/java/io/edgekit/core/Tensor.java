package io.edgekit.core;

import java.util.Arrays;

/**
 * A dense row-major tensor of one of the bundle's public dtypes: {@code int64}, {@code int32} or
 * {@code float32}. Exactly one of {@link #longs}, {@link #ints}, {@link #floats} is set.
 */
public final class Tensor {
    public static final String INT64 = "int64";
    public static final String INT32 = "int32";
    public static final String FLOAT32 = "float32";

    public final String dtype;
    public final int[] shape;
    public final long[] longs;
    public final int[] ints;
    public final float[] floats;

    private Tensor(String dtype, int[] shape, long[] longs, int[] ints, float[] floats) {
        this.dtype = dtype;
        this.shape = shape.clone();
        this.longs = longs;
        this.ints = ints;
        this.floats = floats;
        int n = size();
        int have = longs != null ? longs.length : ints != null ? ints.length : floats.length;
        if (have != n) {
            throw new IllegalArgumentException("a tensor of shape " + Arrays.toString(shape) + " needs " + n
                    + " values, got " + have);
        }
    }

    public static Tensor ofLongs(int[] shape, long[] values) {
        return new Tensor(INT64, shape, values, null, null);
    }

    public static Tensor ofInts(int[] shape, int[] values) {
        return new Tensor(INT32, shape, null, values, null);
    }

    public static Tensor ofFloats(int[] shape, float[] values) {
        return new Tensor(FLOAT32, shape, null, null, values);
    }

    /** A zero tensor of {@code dtype}. */
    public static Tensor zeros(String dtype, int[] shape) {
        int n = product(shape);
        switch (dtype) {
            case INT64:
                return ofLongs(shape, new long[n]);
            case INT32:
                return ofInts(shape, new int[n]);
            case FLOAT32:
                return ofFloats(shape, new float[n]);
            default:
                throw new IllegalArgumentException("unsupported dtype '" + dtype + "' (int64, int32, float32)");
        }
    }

    static int product(int[] shape) {
        int n = 1;
        for (int d : shape) {
            n *= d;
        }
        return n;
    }

    public int size() {
        return product(shape);
    }

    /** Element {@code i} (flat index) as a double, whatever the dtype. */
    public double get(int i) {
        return longs != null ? longs[i] : ints != null ? ints[i] : floats[i];
    }

    /** Sets element {@code i} (flat index), converting to the dtype (integers truncate toward zero). */
    public void set(int i, double v) {
        if (longs != null) {
            longs[i] = (long) v;
        } else if (ints != null) {
            ints[i] = (int) v;
        } else {
            floats[i] = (float) v;
        }
    }

    /** Copies element {@code from} of {@code src} (same dtype) to element {@code to} of this tensor. */
    void copyFrom(Tensor src, int from, int to) {
        if (longs != null) {
            longs[to] = src.longs[from];
        } else if (ints != null) {
            ints[to] = src.ints[from];
        } else {
            floats[to] = src.floats[from];
        }
    }

    /** The same values in {@code dtype} (a copy; this tensor if the dtype already matches). */
    public Tensor as(String target) {
        if (target.equals(dtype)) {
            return this;
        }
        Tensor out = zeros(target, shape);
        for (int i = 0; i < size(); i++) {
            out.set(i, get(i));
        }
        return out;
    }

    @Override
    public String toString() {
        return "Tensor(" + dtype + ", " + Arrays.toString(shape) + ")";
    }
}
