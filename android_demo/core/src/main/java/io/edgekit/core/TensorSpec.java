package io.edgekit.core;

import java.util.List;
import java.util.Map;

/**
 * One input or output of a graph, as the manifest declares it: name, dtype ({@code int64},
 * {@code int32} or {@code float32}: what the runtime feeds and gets), shape (a dimension is
 * {@code null} where the graph accepts any size) and the role of each axis ({@code batch},
 * {@code sequence}, {@code hidden}, {@code labels}).
 *
 * <p>TFLite bundles add {@code stored_dtype} and {@code quantization}: a fully int8 graph stores
 * int8 tensors; its {@link GraphRunner} quantizes inputs and dequantizes outputs with the graph's
 * own scale and zero point, so this side only ever sees the public dtype.
 */
public final class TensorSpec {
    public final String name;
    public final String dtype;
    public final Integer[] shape;
    public final String[] axes;
    public final String storedDtype;
    public final Double scale;
    public final Long zeroPoint;

    TensorSpec(String name, String dtype, Integer[] shape, String[] axes, String storedDtype, Double scale,
               Long zeroPoint) {
        this.name = name;
        this.dtype = dtype;
        this.shape = shape;
        this.axes = axes;
        this.storedDtype = storedDtype;
        this.scale = scale;
        this.zeroPoint = zeroPoint;
    }

    static TensorSpec parse(Map<String, Object> t) {
        List<Object> shapeList = Json.asList(t.get("shape"), "tensor shape");
        List<Object> axesList = Json.asList(t.get("axes"), "tensor axes");
        Integer[] shape = new Integer[shapeList.size()];
        for (int i = 0; i < shape.length; i++) {
            Object d = shapeList.get(i);
            // Python's isinstance(d, int): anything else (null, a name) is a dynamic dimension.
            shape[i] = Json.isInteger(d) ? Json.asInt(d, "tensor dimension") : null;
        }
        String[] axes = new String[axesList.size()];
        for (int i = 0; i < axes.length; i++) {
            axes[i] = Json.asString(axesList.get(i), "tensor axis");
        }
        Double scale = null;
        Long zeroPoint = null;
        Object q = t.get("quantization");
        if (q instanceof Map) {
            Map<String, Object> qm = Json.asObject(q, "quantization");
            scale = Json.asDouble(qm.get("scale"), "quantization scale");
            zeroPoint = Json.asLong(qm.get("zero_point"), "quantization zero_point");
        }
        String dtype = Json.asString(t.get("dtype"), "tensor dtype");
        Object stored = t.get("stored_dtype");
        return new TensorSpec(Json.asString(t.get("name"), "tensor name"), dtype, shape, axes,
                stored instanceof String ? (String) stored : dtype, scale, zeroPoint);
    }

    /** Index of {@code axis} in this tensor, or -1. */
    public int axis(String axis) {
        for (int i = 0; i < axes.length; i++) {
            if (axes[i].equals(axis)) {
                return i;
            }
        }
        return -1;
    }

    /** The fixed size of {@code axis}, or {@code null} where it is dynamic or absent. */
    public Integer staticSize(String axis) {
        int i = axis(axis);
        return i < 0 ? null : shape[i];
    }
}
