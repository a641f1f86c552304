package io.edgekit.core;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;

/**
 * Where a bundle's files come from: a directory on the JVM, the APK's assets on Android
 * ({@code AssetBundleFiles} in the app). Names are the manifest's, relative to the bundle root.
 */
public interface BundleFiles {
    /** The whole file, or an {@link IOException} (e.g. {@link java.io.FileNotFoundException}) if it is absent. */
    byte[] read(String name) throws IOException;

    /** A human-readable location for messages ("assets/bundle", "/data/.../bundle"). */
    String describe();

    /** A bundle directory on the file system. */
    final class Directory implements BundleFiles {
        private final File root;

        public Directory(File root) {
            this.root = root;
        }

        @Override
        public byte[] read(String name) throws IOException {
            File file = new File(root, name);
            if (!file.getCanonicalPath().startsWith(root.getCanonicalPath() + File.separator)) {
                throw new IOException("'" + name + "' is outside the bundle directory");
            }
            return Files.readAllBytes(file.toPath());
        }

        @Override
        public String describe() {
            return root.getPath();
        }
    }
}
