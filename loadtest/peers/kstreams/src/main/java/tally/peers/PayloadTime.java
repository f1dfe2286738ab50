// Event time of a views record for Kafka Streams: the `ts_ms` field of Tally's
// wire format version 1 (bytes 3..10, big-endian; libs/model/src/wire.rs),
// not the broker's log-append time.
package tally.peers;

import java.nio.ByteBuffer;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.streams.processor.TimestampExtractor;

/** Reads the event time from the payload. */
public final class PayloadTime implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
        byte[] payload = (byte[]) record.value();
        if (payload == null || payload.length < 11 || payload[0] != 1) {
            throw new IllegalArgumentException("not a version 1 views record at offset " + record.offset());
        }
        return ByteBuffer.wrap(payload, 3, 8).getLong();
    }
}
