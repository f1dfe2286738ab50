// The Kafka Streams peer of loadtest/scripts/peers.sh: counts the records of
// Tally's views topic per record key (the video id, or `video_id~salt` for a
// hot video) in one-minute tumbling event-time windows (event time read from
// the record's payload), with a changelogged window store, and writes every
// updated count to OUTPUT (key `recordKey@windowStartMs`, value the count as
// text). It reads the topic from offset 0 under a fresh application id and
// stops itself once the group's committed offsets reach the end offsets the
// topic had at start: then every count it produced is committed (with
// exactly_once_v2 in the same transaction as those offsets). Prints one JSON
// line: records in, windows out, elapsed.
//
// Run: java -Xmx1g -cp 'peer.jar:lib/*' tally.peers.KStreamsCount \
//        BROKER INPUT OUTPUT exactly_once_v2|at_least_once COMMIT_MS STATE_DIR THREADS
package tally.peers;

import java.time.Duration;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.state.WindowStore;

/** Kafka Streams: a tumbling one-minute count per record key. */
public final class KStreamsCount {
    /** Records may arrive this much after their window's end and still count (the gateway stamps event
     * time when it parses a request, so a partition's records are out of order by milliseconds). */
    static final Duration GRACE = Duration.ofMinutes(1);
    static final Duration LIMIT = Duration.ofMinutes(20);

    private KStreamsCount() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println("usage: KStreamsCount BROKER INPUT OUTPUT exactly_once_v2|at_least_once COMMIT_MS STATE_DIR THREADS");
            System.exit(64);
        }
        Locale.setDefault(Locale.ROOT); // numbers in the JSON line
        String broker = args[0], input = args[1], output = args[2], guarantee = args[3];
        long started = System.nanoTime();
        Topics topics = new Topics(broker);
        Map<Integer, Long> end = topics.endOffsets(input);
        topics.create(output, end.size());
        String app = "peers-kstreams-" + guarantee.replace('_', '-') + "-" + UUID.randomUUID().toString().substring(0, 8);

        AtomicLong in = new AtomicLong(), out = new AtomicLong(), firstNanos = new AtomicLong(), cpuAtFirst = new AtomicLong(-1);
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()).withTimestampExtractor(new PayloadTime()))
                .peek((k, v) -> {
                    if (in.getAndIncrement() == 0) {
                        firstNanos.set(System.nanoTime());
                        cpuAtFirst.set(ProcessCpu.nanos());
                    }
                })
                .groupByKey()
                .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMinutes(1), GRACE))
                .count(Materialized.<String, Long, WindowStore<Bytes, byte[]>>as("views-per-minute")
                        .withKeySerde(Serdes.String()).withValueSerde(Serdes.Long()))
                .toStream((windowed, n) -> windowed.key() + "@" + windowed.window().start())
                .mapValues(n -> Long.toString(n))
                .peek((k, v) -> out.incrementAndGet())
                .to(output, Produced.with(Serdes.String(), Serdes.String()));

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, broker);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, args[4]);
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, args[6]);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        boolean done;
        try (KafkaStreams streams = new KafkaStreams(builder.build(), p)) {
            streams.start();
            done = topics.waitCommitted(app, input, end, LIMIT, streams);
            streams.close(Duration.ofSeconds(60));
        }
        long now = System.nanoTime();
        double seconds = firstNanos.get() == 0 ? Double.NaN : (now - firstNanos.get()) / 1e9;
        System.out.printf("{\"counter\":\"Kafka Streams %s (%s, commit.interval.ms %s, %s threads, grace %d s)\","
                        + "\"done\":%b,\"records\":%d,\"windows_out\":%d,\"seconds_from_first_record\":%s,"
                        + "\"seconds_with_start\":%.3f,\"events_per_s\":%s,\"cpu_s_at_first_record\":%s}%n",
                org.apache.kafka.common.utils.internals.AppInfoParser.getVersion(), guarantee, args[4],
                args[6], GRACE.toSeconds(), done, in.get(), out.get(), number(seconds), (now - started) / 1e9,
                number(in.get() / seconds), cpuAtFirst.get() < 0 ? "null" : number(cpuAtFirst.get() / 1e9));
        topics.close();
        System.exit(done ? 0 : 1);
    }

    /** A JSON number, or null when there is none (no record was read). */
    static String number(double x) {
        return Double.isFinite(x) ? String.format("%.3f", x) : "null";
    }
}
