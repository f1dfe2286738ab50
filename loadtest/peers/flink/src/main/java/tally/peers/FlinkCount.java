// The Flink peer of loadtest/scripts/peers.sh: a DataStream job, run by local
// execution (a MiniCluster inside this JVM), that reads Tally's views topic
// from offset 0 to the end offsets it has at start (a bounded KafkaSource),
// counts records per record key (the video id, or `video_id~salt` for a hot
// video) in one-minute tumbling event-time windows (event time read from the
// payload, watermarks allowing one minute of disorder), and writes each
// window's count once to OUTPUT (key `recordKey@windowStartMs`, value the
// count as text) through a KafkaSink with the chosen delivery guarantee,
// checkpointing every CHECKPOINT_MS. The job ends when the bounded input is
// exhausted, every window has fired and the final checkpoint has committed
// the sink's transactions. Prints one JSON line: records in, windows out,
// elapsed.
//
// Run (Java 17 needs the module flags of Flink's config.yaml, see peers.sh):
//   java -Xmx1g <--add-opens/--add-exports ...> -cp 'peer.jar:lib/*' tally.peers.FlinkCount \
//     BROKER INPUT OUTPUT exactly_once|at_least_once CHECKPOINT_MS CHECKPOINT_DIR PARALLELISM
package tally.peers;

import java.time.Duration;
import java.util.Locale;
import java.util.UUID;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.RestOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;

/** Flink: a tumbling one-minute event-time count per record key, Kafka in and out. */
public final class FlinkCount {
    /** How far event time may run backwards within a partition before a record is late (the gateway stamps
     * event time when it parses a request, so a partition's records are out of order by milliseconds). */
    static final Duration DISORDER = Duration.ofMinutes(1);
    /** Below the broker's default transaction.max.timeout.ms (15 min): `tally broker` cannot raise that. */
    static final String TRANSACTION_TIMEOUT_MS = "600000";

    private FlinkCount() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println("usage: FlinkCount BROKER INPUT OUTPUT exactly_once|at_least_once CHECKPOINT_MS CHECKPOINT_DIR PARALLELISM");
            System.exit(64);
        }
        Locale.setDefault(Locale.ROOT); // numbers in the JSON line
        String broker = args[0], input = args[1], output = args[2];
        boolean exactlyOnce = switch (args[3]) {
            case "exactly_once" -> true;
            case "at_least_once" -> false;
            default -> throw new IllegalArgumentException("guarantee: exactly_once or at_least_once, not " + args[3]);
        };
        long checkpointMs = Long.parseLong(args[4]);
        int parallelism = Integer.parseInt(args[6]);
        long started = System.currentTimeMillis();
        String run = UUID.randomUUID().toString().substring(0, 8);
        OutputTopic.create(broker, input, output);

        Configuration conf = new Configuration();
        conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
        conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, "file://" + args[5]);
        conf.set(RestOptions.ADDRESS, "127.0.0.1");
        conf.set(RestOptions.BIND_ADDRESS, "127.0.0.1");
        conf.set(RestOptions.BIND_PORT, "0");
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setParallelism(parallelism);
        env.getConfig().enableObjectReuse();
        env.enableCheckpointing(checkpointMs, exactlyOnce ? CheckpointingMode.EXACTLY_ONCE : CheckpointingMode.AT_LEAST_ONCE);

        KafkaSource<Tuple2<String, Long>> source = KafkaSource.<Tuple2<String, Long>>builder()
                .setBootstrapServers(broker)
                .setTopics(input)
                .setGroupId("peers-flink-" + run)
                .setStartingOffsets(OffsetsInitializer.earliest())
                .setBounded(OffsetsInitializer.latest())
                .setDeserializer(new ViewsDeserializer())
                .build();
        KafkaSink<Tuple2<String, Long>> sink = KafkaSink.<Tuple2<String, Long>>builder()
                .setBootstrapServers(broker)
                .setRecordSerializer(KafkaRecordSerializationSchema.<Tuple2<String, Long>>builder()
                        .setTopic(output)
                        .setKeySerializationSchema(new Counting.WindowKey())
                        .setValueSerializationSchema(new Counting.WindowCount())
                        .build())
                .setDeliveryGuarantee(exactlyOnce ? DeliveryGuarantee.EXACTLY_ONCE : DeliveryGuarantee.AT_LEAST_ONCE)
                .setTransactionalIdPrefix("peers-flink-" + run)
                .setProperty("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
                .build();

        env.fromSource(source, WatermarkStrategy.<Tuple2<String, Long>>forBoundedOutOfOrderness(DISORDER)
                        .withTimestampAssigner((view, previous) -> view.f1), "views")
                .map(new Counting.In()).name("count records in")
                .keyBy(view -> view.f0, Types.STRING)
                .window(TumblingEventTimeWindows.of(Duration.ofMinutes(1)))
                .aggregate(new Counting.Add(), new Counting.Emit(), Types.LONG, Types.LONG,
                        Types.TUPLE(Types.STRING, Types.LONG))
                .map(new Counting.Out()).name("count windows out")
                .sinkTo(sink).name("kafka sink");

        JobExecutionResult result = env.execute("peers-flink-" + args[3]);
        long now = System.currentTimeMillis();
        Long in = result.getAccumulatorResult(Counting.IN), out = result.getAccumulatorResult(Counting.OUT);
        in = in == null ? 0 : in;
        out = out == null ? 0 : out;
        Long first = result.getAccumulatorResult(Counting.FIRST_MS);
        Long cpuAtFirst = result.getAccumulatorResult(Counting.CPU_AT_FIRST_NS);
        double seconds = first == null ? Double.NaN : (now - first) / 1e3;
        System.out.printf("{\"counter\":\"Flink %s DataStream (%s, checkpoint every %d ms, parallelism %d, hashmap state)\","
                        + "\"done\":true,\"records\":%d,\"windows_out\":%d,\"seconds_from_first_record\":%s,"
                        + "\"seconds_with_start\":%.3f,\"job_net_runtime_s\":%.3f,\"events_per_s\":%s,"
                        + "\"cpu_s_at_first_record\":%s}%n",
                org.apache.flink.runtime.util.EnvironmentInformation.getVersion(), args[3], checkpointMs, parallelism,
                in, out, number(seconds), (now - started) / 1e3, result.getNetRuntime() / 1e3, number(in / seconds),
                cpuAtFirst == null || cpuAtFirst < 0 ? "null" : number(cpuAtFirst / 1e9));
        System.exit(0);
    }

    /** A JSON number, or null when there is none (no record was read). */
    static String number(double x) {
        return Double.isFinite(x) ? String.format("%.3f", x) : "null";
    }
}
