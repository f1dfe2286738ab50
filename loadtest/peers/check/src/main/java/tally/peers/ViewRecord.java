// One record of Tally's views topic, decoded from wire format version 1
// (libs/model/src/wire.rs): version u8, salt u16, ts_ms i64, received_ms i64,
// then video_id, event_id and viewer_id (u8 length + bytes) and attributes
// (u16 length + bytes), all big-endian. Only the fields the oracles need.
package tally.peers;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;

/** The fields of a views record the peer comparison uses. */
record ViewRecord(int salt, long tsMs, long receivedMs, String videoId, String eventId) {

    /** Decodes `payload`; throws on anything but a well-formed version 1 record. */
    static ViewRecord decode(byte[] payload) {
        ByteBuffer b = ByteBuffer.wrap(payload);
        int version = b.get() & 0xff;
        if (version != 1) {
            throw new IllegalArgumentException("unsupported wire format version " + version);
        }
        int salt = b.getShort() & 0xffff;
        long ts = b.getLong();
        long received = b.getLong();
        String video = shortString(b);
        String event = shortString(b);
        shortString(b); // viewer_id
        int attributes = b.getShort() & 0xffff;
        b.position(b.position() + attributes);
        if (b.hasRemaining()) {
            throw new IllegalArgumentException(b.remaining() + " trailing bytes");
        }
        return new ViewRecord(salt, ts, received, video, event);
    }

    /** The one-minute window (epoch-aligned start, ms) of the event time. */
    long windowStart() {
        return Math.floorDiv(tsMs, 60_000L) * 60_000L;
    }

    private static String shortString(ByteBuffer b) {
        int n = b.get() & 0xff;
        byte[] bytes = new byte[n];
        b.get(bytes);
        return new String(bytes, StandardCharsets.US_ASCII);
    }
}
