package io.edgekit.demo;

import android.content.res.AssetManager;

import java.io.ByteArrayOutputStream;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;

import io.edgekit.core.Bundle;
import io.edgekit.core.BundleException;
import io.edgekit.core.BundleFiles;

/** A bundle inside the APK: {@code app/src/main/assets/<root>/}. A missing asset is a FileNotFoundException. */
final class AssetBundleFiles implements BundleFiles {
    /** The packed download, as `edgekit export --pack` or `edgekit run` (phone/TASK/bundle.edgepack) writes it. */
    static final String PACK = "bundle.edgepack";

    private final AssetManager assets;
    private final String root;

    AssetBundleFiles(AssetManager assets, String root) {
        this.assets = assets;
        this.root = root;
    }

    /**
     * The app's bundle: {@code assets/bundle.edgepack} decoded in memory by {@link Bundle#loadPacked}
     * (the entry the JVM tests drive) if it is there, else the unpacked files in {@code assets/<root>/}
     * ({@link Bundle#load}); either way every file is checked against manifest.json.
     */
    static Bundle open(AssetManager assets, String root) throws BundleException {
        byte[] pack;
        try {
            pack = readAll(assets.open(PACK));
        } catch (FileNotFoundException e) {
            return Bundle.load(new AssetBundleFiles(assets, root), true);
        } catch (IOException e) {
            throw new BundleException("cannot read assets/" + PACK + " (" + e.getMessage() + ").", e);
        }
        return Bundle.loadPacked(pack, "assets/" + PACK);
    }

    private static byte[] readAll(InputStream stream) throws IOException {
        try (InputStream in = stream) {
            ByteArrayOutputStream out = new ByteArrayOutputStream(Math.max(in.available(), 1 << 16));
            byte[] buffer = new byte[1 << 16];
            int n;
            while ((n = in.read(buffer)) > 0) {
                out.write(buffer, 0, n);
            }
            return out.toByteArray();
        }
    }

    @Override
    public byte[] read(String name) throws IOException {
        return readAll(assets.open(root + "/" + name));
    }

    @Override
    public String describe() {
        return "assets/" + root;
    }
}
