// The oracles of the peer comparison, folded from the views topic itself (what
// the producer wrote), independently of every counter under test:
//
//   records:  records per (video, one-minute event-time window) and per video.
//             What a peer that counts records (no dedup) must output.
//   distinct: distinct (video_id, event_id) per partition, per video. What
//             Tally's counter must output: it drops resends of an event id
//             within its 10-minute dedup window (judged by gateway receive
//             time, per partition). The fold checks that the rule reduces to
//             "distinct" on this topic (every record received within one
//             window of the others, none late, the window's entry bound not
//             reached) and fails otherwise rather than guess.
//
// Run: java -cp 'peer.jar:lib/*' tally.peers.Oracle BROKER TOPIC OUT_DIR
// Writes OUT_DIR/{records-windows,records-totals,distinct-totals}.tsv and
// prints one JSON line (also OUT_DIR/oracle.json).
package tally.peers;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

/** Folds the views topic into the records and distinct-events oracles. */
public final class Oracle {
    /** Tally's counter defaults (services/counter/src/config.rs), which peers.sh leaves as they are. */
    static final long DEDUP_WINDOW_MS = 600_000L;
    static final long DEDUP_MAX_ENTRIES = 2_000_000L;
    static final long ALLOWED_LATENESS_MS = 3_600_000L;

    private Oracle() {}

    public static void main(String[] args) throws IOException {
        if (args.length != 3) {
            System.err.println("usage: Oracle BROKER TOPIC OUT_DIR");
            System.exit(64);
        }
        String broker = args[0], topic = args[1];
        Path out = Path.of(args[2]);
        Files.createDirectories(out);

        Map<String, Long> windows = new HashMap<>();
        Map<String, Long> records = new HashMap<>();
        Map<String, Long> distinct = new HashMap<>();
        Map<Integer, Set<String>> seen = new HashMap<>();
        Map<Integer, Long> perPartition = new TreeMap<>();
        long[] received = {Long.MAX_VALUE, Long.MIN_VALUE};
        long[] counters = new long[3]; // salted records, late records, resends
        TopicReader.Read read = TopicReader.readAll(broker, topic, Duration.ofMinutes(10), r -> {
            ViewRecord v = ViewRecord.decode(r.value());
            String recordKey = new String(r.key(), StandardCharsets.UTF_8);
            if (!Keys.video(recordKey).equals(v.videoId())) {
                throw new IllegalStateException("record key " + recordKey + " does not name video " + v.videoId());
            }
            windows.merge(v.videoId() + "\t" + v.windowStart(), 1L, Long::sum);
            records.merge(v.videoId(), 1L, Long::sum);
            if (seen.computeIfAbsent(r.partition(), p -> new HashSet<>()).add(v.videoId() + '\0' + v.eventId())) {
                distinct.merge(v.videoId(), 1L, Long::sum);
            } else {
                counters[2]++;
            }
            perPartition.merge(r.partition(), 1L, Long::sum);
            received[0] = Math.min(received[0], v.receivedMs());
            received[1] = Math.max(received[1], v.receivedMs());
            if (v.salt() != 0) {
                counters[0]++;
            }
            if (v.receivedMs() - v.tsMs() > ALLOWED_LATENESS_MS) {
                counters[1]++;
            }
        });
        long total = read.records();
        long span = received[1] - received[0];
        long largestPartition = perPartition.values().stream().mapToLong(Long::longValue).max().orElse(0);
        boolean distinctHolds = span <= DEDUP_WINDOW_MS && counters[1] == 0 && largestPartition <= DEDUP_MAX_ENTRIES;

        write(out.resolve("records-windows.tsv"), windows);
        write(out.resolve("records-totals.tsv"), records);
        write(out.resolve("distinct-totals.tsv"), distinct);
        long distinctTotal = distinct.values().stream().mapToLong(Long::longValue).sum();
        String json = String.format(
                "{\"records\":%d,\"distinct_events\":%d,\"resent_records\":%d,\"videos\":%d,\"video_windows\":%d,"
                        + "\"salted_records\":%d,\"late_records\":%d,\"receive_span_ms\":%d,"
                        + "\"largest_partition_records\":%d,\"distinct_oracle_holds\":%b}",
                total, distinctTotal, counters[2], records.size(), windows.size(), counters[0], counters[1], span,
                largestPartition, distinctHolds);
        Files.writeString(out.resolve("oracle.json"), json + "\n");
        System.out.println(json);
        if (!distinctHolds) {
            System.err.println("the dedup rule is not 'distinct per partition' on this topic: see oracle.json");
            System.exit(2);
        }
    }

    private static void write(Path path, Map<String, Long> counts) throws IOException {
        StringBuilder text = new StringBuilder();
        counts.forEach((k, n) -> text.append(k).append('\t').append(n).append('\n'));
        Files.writeString(path, text);
    }
}
