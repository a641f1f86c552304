package io.edgekit.core;

/** A bundle that cannot be used as it is (missing or corrupted file, unsupported format), or a bad request. */
public class BundleException extends Exception {
    private static final long serialVersionUID = 1L;

    public BundleException(String message) {
        super(message);
    }

    public BundleException(String message, Throwable cause) {
        super(message, cause);
    }
}
