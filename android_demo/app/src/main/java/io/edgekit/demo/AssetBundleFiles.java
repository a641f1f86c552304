package io.edgekit.demo;

import android.content.res.AssetManager;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;

import io.edgekit.core.BundleFiles;

/** A bundle inside the APK: {@code app/src/main/assets/<root>/}. A missing asset is a FileNotFoundException. */
final class AssetBundleFiles implements BundleFiles {
    private final AssetManager assets;
    private final String root;

    AssetBundleFiles(AssetManager assets, String root) {
        this.assets = assets;
        this.root = root;
    }

    @Override
    public byte[] read(String name) throws IOException {
        try (InputStream in = assets.open(root + "/" + name)) {
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
    public String describe() {
        return "assets/" + root;
    }
}
