package io.edgekit.core;

import java.io.FileNotFoundException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.zip.DataFormatException;
import java.util.zip.Inflater;

/**
 * A packed bundle ({@code .edgepack}) decoded in memory: the port of {@code unpack} in
 * {@code export/edgekit_device/pack.py} (format: its docstring and {@code export/BUNDLE.md}).
 *
 * <p>The container is {@code b"EKPACK1\n"}, a little-endian u32 header length, the header (UTF-8
 * JSON) and the payload of compressed streams. A {@code whole} file is one stream; a {@code sparse}
 * model file is a skeleton (the file without its large tensors), one bit per tensor element
 * (non-zero or not, most significant bit first, each segment padded to a byte) and the non-zero
 * elements as byte planes, spliced back here. The result is the exported files byte for byte: each
 * one's sha256 is checked against the pack header, and {@link Bundle#load} checks it again against
 * {@code manifest.json}.
 *
 * <p>The header is untrusted, as in Python: streams lie back to back and are used once, every size
 * is checked against the others and the limits before anything is inflated, inflating stops at the
 * declared size, names are plain relative paths. Any problem is one {@link BundleException}
 * sentence. Only the {@code zlib} codec is read ({@link Inflater}); an {@code xz} pack is refused
 * with how to repack it.
 */
public final class EdgePack implements BundleFiles {
    static final byte[] MAGIC = "EKPACK1\n".getBytes(StandardCharsets.US_ASCII);
    static final String FORMAT = "edgekit-pack";
    static final int VERSION = 1;
    static final int MAX_HEADER_BYTES = 16 << 20;
    static final int MAX_FILES = 10_000;
    static final int MAX_ITEMSIZE = 16;
    /** The most bytes one pack may unpack to on a phone (the Python runtime allows 2 GiB on a server). */
    public static final long MAX_UNPACKED_BYTES = 512L << 20;
    static final long SMALL_UNPACKED_BYTES = 64L << 20; // below this any compression ratio is accepted
    static final long MAX_EXPANSION = 100;               // above it, at most this many bytes per packed byte

    private final String where;
    private final Map<String, byte[]> files;

    private EdgePack(String where, Map<String, byte[]> files) {
        this.where = where;
        this.files = files;
    }

    @Override
    public byte[] read(String name) throws FileNotFoundException {
        byte[] data = files.get(name);
        if (data == null) {
            throw new FileNotFoundException(name);
        }
        return data.clone();
    }

    @Override
    public String describe() {
        return where;
    }

    /** The names of the packed files, in pack order. */
    public List<String> names() {
        return new ArrayList<>(files.keySet());
    }

    /** Decodes {@code pack} (the whole {@code .edgepack} file); {@code where} names it in messages. */
    public static EdgePack read(byte[] pack, String where) throws BundleException {
        return read(pack, where, MAX_UNPACKED_BYTES);
    }

    public static EdgePack read(byte[] pack, String where, long maxBytes) throws BundleException {
        try {
            return decode(pack, where, maxBytes);
        } catch (IllegalArgumentException | ClassCastException | IndexOutOfBoundsException | NullPointerException
                 | ArithmeticException e) {
            // a value the checks did not foresee: still one sentence, never a stack trace
            throw corrupt(where, e.getClass().getSimpleName());
        }
    }

    // ---------------------------------------------------------------------------------------------

    private static BundleException corrupt(String where, String what) {
        return new BundleException("packed bundle '" + where + "' is malformed (" + what
                + "); download it again or pack the bundle again.");
    }

    private static BundleException fail(String where, String what) {
        return new BundleException("packed bundle '" + where + "': " + what);
    }

    private static long integer(Object value, String where, String what, long low, long high) throws BundleException {
        if (!Json.isInteger(value) || (Long) value < low || (Long) value > high) {
            throw corrupt(where, what + " is " + value);
        }
        return (Long) value;
    }

    /** Python's {@code check_name}: a relative POSIX path of plain parts, not edgekit's marker. */
    static String checkName(Object value, String where) throws BundleException {
        if (!(value instanceof String) || ((String) value).isEmpty() || ((String) value).length() > 1024) {
            throw corrupt(where, "file name " + value);
        }
        String name = (String) value;
        boolean bad = name.startsWith("/") || name.contains("\\") || name.contains(":")
                || ".edgekit-written.json".equals(name);
        for (int i = 0; i < name.length() && !bad; i++) {
            char c = name.charAt(i);
            bad = c < 32 || c == 127;
        }
        for (String part : name.split("/", -1)) {
            bad |= part.isEmpty() || ".".equals(part) || "..".equals(part) || part.length() > 255;
        }
        if (bad) {
            String shown = name.length() > 80 ? name.substring(0, 77) + "..." : name;
            StringBuilder safe = new StringBuilder();
            for (char c : shown.toCharArray()) { // no control character reaches the screen
                safe.append(c < 32 || c == 127 ? String.format(Locale.ROOT, "\\x%02x", (int) c) : String.valueOf(c));
            }
            throw fail(where, "names a file '" + safe + "' outside a plain relative path; refusing to unpack it.");
        }
        return name;
    }

    private static final class Stream {
        final int offset;
        final int length;
        final long rawBytes;
        boolean used;

        Stream(int offset, int length, long rawBytes) {
            this.offset = offset;
            this.length = length;
            this.rawBytes = rawBytes;
        }
    }

    private static EdgePack decode(byte[] blob, String where, long maxBytes) throws BundleException {
        if (blob.length < MAGIC.length || !Arrays.equals(Arrays.copyOf(blob, MAGIC.length), MAGIC)) {
            throw new BundleException("'" + where + "' is not a packed edgekit bundle (wrong magic bytes); use a file "
                    + "written by `edgekit export --pack`.");
        }
        int start = MAGIC.length + 4;
        if (blob.length < start) {
            throw corrupt(where, "the file ends inside its header length");
        }
        long size = (blob[8] & 0xFFL) | (blob[9] & 0xFFL) << 8 | (blob[10] & 0xFFL) << 16 | (blob[11] & 0xFFL) << 24;
        if (size > MAX_HEADER_BYTES || start + size > blob.length) {
            throw corrupt(where, "a header of " + size + " bytes in a file of " + blob.length);
        }
        Object parsed;
        try {
            parsed = Json.parse(new String(blob, start, (int) size, StandardCharsets.UTF_8));
        } catch (IllegalArgumentException | StackOverflowError e) {
            throw fail(where, "its header is corrupted; download it again.");
        }
        if (!(parsed instanceof Map)) {
            throw fail(where, "its header is corrupted; download it again.");
        }
        Map<?, ?> header = (Map<?, ?>) parsed;
        Object version = header.get("version");
        if (!FORMAT.equals(header.get("format")) || !(Json.isInteger(version) && (Long) version == VERSION)) {
            throw fail(where, "pack version " + version + " is not supported (this app reads version " + VERSION
                    + "); use the matching edgekit.");
        }
        int payloadStart = start + (int) size;
        int payloadBytes = blob.length - payloadStart;
        if (!(header.get("streams") instanceof List) || !(header.get("files") instanceof List)) {
            throw corrupt(where, "'streams' and 'files' must be lists");
        }
        List<?> streamList = (List<?>) header.get("streams");
        List<?> fileList = (List<?>) header.get("files");
        if (fileList.size() > MAX_FILES) {
            throw corrupt(where, fileList.size() + " files, more than a bundle has");
        }
        List<Stream> streams = new ArrayList<>();
        for (int i = 0; i < streamList.size(); i++) {
            if (!(streamList.get(i) instanceof Map)) {
                throw corrupt(where, "stream " + i + " is " + streamList.get(i));
            }
            Map<?, ?> s = (Map<?, ?>) streamList.get(i);
            Object codec = s.get("codec");
            if ("xz".equals(codec)) {
                throw fail(where, "it is compressed with xz, and this app reads zlib packs; pack the bundle again "
                        + "with `edgekit bundle pack BUNDLE_DIR --codec zlib` (or `edgekit export ... --pack`, whose "
                        + "default codec is zlib).");
            }
            if (!"zlib".equals(codec)) {
                throw fail(where, "it uses codec " + codec + ", which this app does not know; it reads zlib packs.");
            }
            int offset = (int) integer(s.get("offset"), where, "stream " + i + " offset", 0, payloadBytes);
            int length = (int) integer(s.get("length"), where, "stream " + i + " length", 0, payloadBytes - offset);
            long raw = integer(s.get("raw_bytes"), where, "stream " + i + " raw_bytes", 0, Long.MAX_VALUE);
            streams.add(new Stream(offset, length, raw));
        }
        long end = 0;
        for (Stream s : sortedByOffset(streams)) { // pack writes them back to back, nothing between
            if (s.offset != end) {
                throw corrupt(where, "a gap or overlap at payload byte " + end);
            }
            end += s.length;
        }
        if (end != payloadBytes) {
            throw corrupt(where, (payloadBytes - end) + " payload bytes belong to no stream");
        }

        // Pass 1: every entry checked, nothing inflated.
        Set<String> names = new HashSet<>();
        Set<String> folded = new HashSet<>();
        long total = 0;
        for (Object e : fileList) {
            if (!(e instanceof Map)) {
                throw corrupt(where, "file entry " + e);
            }
            Map<?, ?> entry = (Map<?, ?>) e;
            String name = checkName(entry.get("name"), where);
            if (!folded.add(name.toLowerCase(Locale.ROOT))) {
                throw corrupt(where, "'" + name + "' is listed twice");
            }
            names.add(name);
            long bytes = integer(entry.get("bytes"), where, "size of '" + name + "'", 0, Integer.MAX_VALUE - 8);
            total += bytes;
            Object sha = entry.get("sha256");
            if (!(sha instanceof String) || !((String) sha).matches("[0-9a-f]{64}")) {
                throw corrupt(where, "sha256 of '" + name + "' is " + sha);
            }
            Object encoding = entry.get("encoding");
            if ("whole".equals(encoding)) {
                if (use(streams, entry.get("stream"), where, "stream of '" + name + "'").rawBytes != bytes) {
                    throw corrupt(where, "'" + name + "' declares " + bytes + " bytes but its stream a different size");
                }
            } else if ("sparse".equals(encoding)) {
                checkSparse(entry, name, bytes, streams, where);
            } else {
                throw fail(where, "file '" + name + "' has unknown encoding " + encoding + "; use the matching edgekit.");
            }
        }
        for (String name : names) {
            for (int slash = name.indexOf('/'); slash >= 0; slash = name.indexOf('/', slash + 1)) {
                if (names.contains(name.substring(0, slash))) {
                    throw corrupt(where, "'" + name + "' is inside a directory the pack also names as a file");
                }
            }
        }
        long limit = Math.min(maxBytes, Math.max(SMALL_UNPACKED_BYTES, MAX_EXPANSION * blob.length));
        if (total > limit) {
            throw fail(where, "it declares " + total + " unpacked bytes, more than this app accepts from a "
                    + blob.length + "-byte file (" + limit + "); it is not a bundle edgekit packed.");
        }

        // Pass 2: inflate, splice, check.
        Map<String, byte[]> out = new LinkedHashMap<>();
        for (Object e : fileList) {
            Map<?, ?> entry = (Map<?, ?>) e;
            String name = (String) entry.get("name");
            int bytes = (int) (long) (Long) entry.get("bytes");
            byte[] data;
            if ("whole".equals(entry.get("encoding"))) {
                data = inflate(blob, payloadStart, streams.get(index(entry.get("stream"))), name, where);
            } else {
                data = join(blob, payloadStart, entry, streams, bytes, name, where);
            }
            if (!Bundle.sha256(data).equals(entry.get("sha256"))) {
                throw fail(where, "file '" + name + "' does not match its sha256 in the pack; the download is "
                        + "corrupted, download it again.");
            }
            out.put(name, data);
        }
        return new EdgePack(where, Collections.unmodifiableMap(out));
    }

    private static List<Stream> sortedByOffset(List<Stream> streams) {
        List<Stream> sorted = new ArrayList<>(streams);
        sorted.sort((a, b) -> Integer.compare(a.offset, b.offset));
        return sorted;
    }

    private static int index(Object value) {
        return (int) (long) (Long) value;
    }

    private static Stream use(List<Stream> streams, Object index, String where, String what) throws BundleException {
        int i = (int) integer(index, where, what, 0, streams.size() - 1);
        Stream s = streams.get(i);
        if (s.used) {
            throw corrupt(where, what + " reuses stream " + i);
        }
        s.used = true;
        return s;
    }

    private static final class Segment {
        final int offset;
        final int length;
        final int itemsize;

        Segment(int offset, int length, int itemsize) {
            this.offset = offset;
            this.length = length;
            this.itemsize = itemsize;
        }
    }

    private static List<Segment> segments(Map<?, ?> entry, String name, long bytes, String where)
            throws BundleException {
        if (!(entry.get("segments") instanceof List)) {
            throw corrupt(where, "sparse entry of '" + name + "'");
        }
        List<Segment> out = new ArrayList<>();
        long cursor = 0;
        for (Object s : (List<?>) entry.get("segments")) {
            if (!(s instanceof List) || ((List<?>) s).size() != 3) {
                throw corrupt(where, "a segment of '" + name + "' is " + s);
            }
            List<?> seg = (List<?>) s;
            long offset = integer(seg.get(0), where, "a segment offset of '" + name + "'", cursor, bytes);
            long length = integer(seg.get(1), where, "a segment length of '" + name + "'", 0, bytes - offset);
            long itemsize = integer(seg.get(2), where, "a segment item size of '" + name + "'", 1, MAX_ITEMSIZE);
            if (length % itemsize != 0) {
                throw corrupt(where, "a segment of '" + name + "' is not a whole number of items");
            }
            cursor = offset + length;
            out.add(new Segment((int) offset, (int) length, (int) itemsize));
        }
        return out;
    }

    private static void checkSparse(Map<?, ?> entry, String name, long bytes, List<Stream> streams, String where)
            throws BundleException {
        List<Segment> segments = segments(entry, name, bytes, where);
        if (!(entry.get("streams") instanceof Map)) {
            throw corrupt(where, "sparse entry of '" + name + "'");
        }
        Map<?, ?> parts = (Map<?, ?>) entry.get("streams");
        long cut = 0;
        long maskBytes = 0;
        Map<Integer, Long> bySize = new TreeMap<>();
        for (Segment s : segments) {
            cut += s.length;
            maskBytes += (s.length / s.itemsize + 7) / 8;
            bySize.merge(s.itemsize, (long) s.length, Long::sum);
        }
        Set<String> expected = new HashSet<>(Arrays.asList("skeleton", "masks"));
        for (int size : bySize.keySet()) {
            expected.add("values" + size);
        }
        if (!expected.equals(new HashSet<>(parts.keySet()))) {
            throw corrupt(where, "the streams of '" + name + "' are " + parts.keySet());
        }
        if (use(streams, parts.get("skeleton"), where, "skeleton of '" + name + "'").rawBytes != bytes - cut) {
            throw corrupt(where, "the skeleton of '" + name + "' does not match its size");
        }
        if (use(streams, parts.get("masks"), where, "masks of '" + name + "'").rawBytes != maskBytes) {
            throw corrupt(where, "the masks of '" + name + "' do not match its segments");
        }
        for (Map.Entry<Integer, Long> e : bySize.entrySet()) {
            long raw = use(streams, parts.get("values" + e.getKey()), where, "values of '" + name + "'").rawBytes;
            if (raw % e.getKey() != 0 || raw > e.getValue()) { // at most every element is non-zero
                throw corrupt(where, "the values of '" + name + "' do not fit its segments");
            }
        }
    }

    /** Inflates one zlib stream to exactly its declared size, never writing past it. */
    static byte[] inflate(byte[] blob, int payloadStart, Stream s, String name, String where) throws BundleException {
        int size = (int) s.rawBytes; // bounded by the file sizes checked in pass 1
        byte[] out = new byte[size];
        Inflater inflater = new Inflater(); // zlib format (header and Adler-32), as Python's zlib.compress
        try {
            inflater.setInput(blob, payloadStart + s.offset, s.length);
            int produced = 0;
            while (produced < size && !inflater.finished()) {
                int n = inflater.inflate(out, produced, size - produced);
                produced += n;
                if (n == 0 && (inflater.needsInput() || inflater.needsDictionary())) {
                    break;
                }
            }
            if (produced == size && !inflater.finished()) {
                byte[] probe = new byte[1];
                if (inflater.inflate(probe) > 0) {
                    throw fail(where, "the data of '" + name + "' expands beyond its declared " + size
                            + " bytes; the pack is corrupted, download it again.");
                }
            }
            if (produced != size || !inflater.finished() || inflater.getRemaining() != 0) {
                throw fail(where, "the data of '" + name + "' is truncated or corrupted; download it again.");
            }
            return out;
        } catch (DataFormatException e) {
            throw fail(where, "the data of '" + name + "' is corrupted; download it again.");
        } finally {
            inflater.end();
        }
    }

    /**
     * Rebuilds a sparse file: skeleton bytes up to each segment, then the segment's elements, zero
     * where its mask bit (most significant first) is 0, else the next element of its item size,
     * whose bytes are stored as planes (all first bytes, then all second bytes, ...).
     */
    private static byte[] join(byte[] blob, int payloadStart, Map<?, ?> entry, List<Stream> streams, int total,
                               String name, String where) throws BundleException {
        List<Segment> segments = segments(entry, name, total, where);
        Map<?, ?> parts = (Map<?, ?>) entry.get("streams");
        byte[] skeleton = inflate(blob, payloadStart, streams.get(index(parts.get("skeleton"))), name, where);
        byte[] masks = inflate(blob, payloadStart, streams.get(index(parts.get("masks"))), name, where);
        Map<Integer, byte[]> planes = new TreeMap<>();
        Map<Integer, Integer> used = new TreeMap<>();
        for (Map.Entry<?, ?> p : parts.entrySet()) {
            String key = (String) p.getKey();
            if (key.startsWith("values")) {
                int size = Integer.parseInt(key.substring("values".length()));
                planes.put(size, inflate(blob, payloadStart, streams.get(index(p.getValue())), name, where));
                used.put(size, 0);
            }
        }
        byte[] out = new byte[total];
        int written = 0;
        int sk = 0;
        int mk = 0;
        for (Segment seg : segments) {
            int take = seg.offset - written;
            System.arraycopy(skeleton, sk, out, written, take);
            sk += take;
            written += take;
            byte[] values = planes.get(seg.itemsize);
            int count = values.length / seg.itemsize; // elements of this item size in all segments
            int next = used.get(seg.itemsize);
            int elements = seg.length / seg.itemsize;
            for (int i = 0; i < elements; i++) {
                if ((masks[mk + (i >> 3)] & (0x80 >> (i & 7))) != 0) {
                    if (next >= count) {
                        throw fail(where, "'" + name + "' has fewer non-zero values than its masks mark; the pack "
                                + "is corrupted.");
                    }
                    for (int b = 0; b < seg.itemsize; b++) {
                        out[written + i * seg.itemsize + b] = values[b * count + next];
                    }
                    next++;
                }
            }
            used.put(seg.itemsize, next);
            mk += (elements + 7) / 8;
            written += seg.length;
        }
        System.arraycopy(skeleton, sk, out, written, skeleton.length - sk);
        for (Map.Entry<Integer, byte[]> p : planes.entrySet()) {
            if (used.get(p.getKey()) != p.getValue().length / p.getKey()) {
                throw fail(where, "'" + name + "' has more non-zero values than its masks mark; the pack is corrupted.");
            }
        }
        return out;
    }
}
