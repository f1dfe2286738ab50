// Turns a record of Tally's views topic into (record key, event time): the key
// as the gateway wrote it (`video_id` or `video_id~salt`), the event time
// from the payload's `ts_ms` (wire format version 1, bytes 3..10, big-endian;
// libs/model/src/wire.rs). Anything else fails the job rather than be guessed.
package tally.peers;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

/** (record key, event time ms) of a views record. */
public final class ViewsDeserializer implements KafkaRecordDeserializationSchema<Tuple2<String, Long>> {
    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Tuple2<String, Long>> out) {
        byte[] payload = record.value();
        if (record.key() == null || payload == null || payload.length < 11 || payload[0] != 1) {
            throw new IllegalArgumentException("not a version 1 views record at offset " + record.offset());
        }
        out.collect(Tuple2.of(new String(record.key(), StandardCharsets.UTF_8), ByteBuffer.wrap(payload, 3, 8).getLong()));
    }

    @Override
    public TypeInformation<Tuple2<String, Long>> getProducedType() {
        return Types.TUPLE(Types.STRING, Types.LONG);
    }
}
