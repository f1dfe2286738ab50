// The functions of the Flink peer's job: the window count itself (an
// incremental aggregate, so a window holds one long per key, plus the
// function naming the window in the output), the output record's key and
// value, and the accumulators that report records in, windows out and when
// the first record arrived (wall time, and this process's CPU time then: local
// execution runs every subtask in this JVM). Named classes, not lambdas: the Kafka sink infers
// its input type from them.
package tally.peers;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.accumulators.LongMinimum;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

/** The job's functions. */
final class Counting {
    static final String IN = "records-in", OUT = "windows-out", FIRST_MS = "first-record-ms",
            CPU_AT_FIRST_NS = "process-cpu-ns-at-first-record";

    private Counting() {}

    /** Counts records entering the job (and notes the wall time of the first one). */
    static final class In extends RichMapFunction<Tuple2<String, Long>, Tuple2<String, Long>> {
        private final LongCounter records = new LongCounter();
        private final LongMinimum first = new LongMinimum();
        private final LongMinimum cpuAtFirst = new LongMinimum();
        private boolean seen;

        @Override
        public void open(OpenContext context) {
            getRuntimeContext().addAccumulator(IN, records);
            getRuntimeContext().addAccumulator(FIRST_MS, first);
            getRuntimeContext().addAccumulator(CPU_AT_FIRST_NS, cpuAtFirst);
        }

        @Override
        public Tuple2<String, Long> map(Tuple2<String, Long> view) {
            if (!seen) {
                seen = true;
                first.add(System.currentTimeMillis());
                cpuAtFirst.add(ProcessCpu.nanos());
            }
            records.add(1L);
            return view;
        }
    }

    /** Counts windows written to the sink. */
    static final class Out extends RichMapFunction<Tuple2<String, Long>, Tuple2<String, Long>> {
        private final LongCounter windows = new LongCounter();

        @Override
        public void open(OpenContext context) {
            getRuntimeContext().addAccumulator(OUT, windows);
        }

        @Override
        public Tuple2<String, Long> map(Tuple2<String, Long> window) {
            windows.add(1L);
            return window;
        }
    }

    /** One more record in the window. */
    static final class Add implements AggregateFunction<Tuple2<String, Long>, Long, Long> {
        @Override
        public Long createAccumulator() {
            return 0L;
        }

        @Override
        public Long add(Tuple2<String, Long> view, Long n) {
            return n + 1;
        }

        @Override
        public Long getResult(Long n) {
            return n;
        }

        @Override
        public Long merge(Long a, Long b) {
            return a + b;
        }
    }

    /** Names the fired window: (`recordKey@windowStartMs`, count). */
    static final class Emit extends ProcessWindowFunction<Long, Tuple2<String, Long>, String, TimeWindow> {
        @Override
        public void process(String key, Context context, Iterable<Long> counts, Collector<Tuple2<String, Long>> out) {
            out.collect(Tuple2.of(key + "@" + context.window().getStart(), counts.iterator().next()));
        }
    }

    /** The output key: `recordKey@windowStartMs`. */
    static final class WindowKey implements SerializationSchema<Tuple2<String, Long>> {
        @Override
        public byte[] serialize(Tuple2<String, Long> window) {
            return window.f0.getBytes(StandardCharsets.UTF_8);
        }
    }

    /** The output value: the count as decimal text. */
    static final class WindowCount implements SerializationSchema<Tuple2<String, Long>> {
        @Override
        public byte[] serialize(Tuple2<String, Long> window) {
            return Long.toString(window.f1).getBytes(StandardCharsets.UTF_8);
        }
    }
}
