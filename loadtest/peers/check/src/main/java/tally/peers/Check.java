// Compares one counter's output with an oracle of tally.peers.Oracle and
// prints one JSON line; exit status 0 when exact, 1 when not.
//
//   Check windows ORACLE_DIR BROKER OUTPUT_TOPIC
//       A windowed peer's output topic, read read_committed: record key
//       `recordKey@windowStartMs`, value the count as decimal text. The last
//       value per (record key, window) is kept, salts are merged per video,
//       and every (video, window) is compared with the records oracle.
//   Check totals ORACLE_DIR records|distinct FILE
//       Totals per record key (FILE: `key<TAB>count` lines; keys with the
//       same video, salts, are summed), compared per video with the records
//       oracle (a peer without dedup) or the distinct-events one (Tally).
//
// Run: java -cp 'peer.jar:lib/*' tally.peers.Check ...
package tally.peers;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/** The exactness check of one counter's output. */
public final class Check {
    private Check() {}

    public static void main(String[] args) throws IOException {
        String usage = "usage: Check windows ORACLE_DIR BROKER TOPIC | Check totals ORACLE_DIR records|distinct FILE";
        if (args.length != 4) {
            System.err.println(usage);
            System.exit(64);
        }
        Path oracle = Path.of(args[1]);
        String json;
        boolean exact;
        switch (args[0]) {
            case "windows" -> {
                Map<String, Long> last = new HashMap<>();
                TopicReader.Read read = TopicReader.readAll(args[2], args[3], Duration.ofMinutes(10), r ->
                        last.put(new String(r.key(), StandardCharsets.UTF_8),
                                Long.parseLong(new String(r.value(), StandardCharsets.UTF_8).trim())));
                Map<String, Long> counted = new HashMap<>();
                last.forEach((windowKey, n) -> {
                    int at = windowKey.lastIndexOf('@');
                    if (at < 0) {
                        throw new IllegalStateException("output key without a window: " + windowKey);
                    }
                    String video = Keys.video(windowKey.substring(0, at));
                    counted.merge(video + "\t" + windowKey.substring(at + 1), n, Long::sum);
                });
                Comparison c = Comparison.of(read(oracle.resolve("records-windows.tsv")), counted);
                exact = c.exact();
                json = c.json("records per (video, one-minute window)", read);
            }
            case "totals" -> {
                if (!args[2].equals("records") && !args[2].equals("distinct")) {
                    System.err.println(usage);
                    System.exit(64);
                }
                Map<String, Long> counted = new HashMap<>();
                read(Path.of(args[3])).forEach((key, n) -> counted.merge(Keys.video(key), n, Long::sum));
                Comparison c = Comparison.of(read(oracle.resolve(args[2] + "-totals.tsv")), counted);
                exact = c.exact();
                json = c.json(args[2].equals("records") ? "records per video" : "distinct events per video", null);
            }
            default -> {
                System.err.println(usage);
                System.exit(64);
                return;
            }
        }
        System.out.println(json);
        System.exit(exact ? 0 : 1);
    }

    /** `key<TAB>...<TAB>count` lines: everything before the last tab is the key. */
    static Map<String, Long> read(Path path) throws IOException {
        Map<String, Long> counts = new HashMap<>();
        for (String line : Files.readAllLines(path, StandardCharsets.UTF_8)) {
            if (line.isEmpty()) {
                continue;
            }
            int tab = line.lastIndexOf('\t');
            counts.merge(line.substring(0, tab), Long.parseLong(line.substring(tab + 1)), Long::sum);
        }
        return counts;
    }

    /** Expected against counted, key by key. */
    record Comparison(long expectedTotal, long countedTotal, int keys, int mismatched, int missing, int extra,
            List<String> examples) {

        static Comparison of(Map<String, Long> expected, Map<String, Long> counted) {
            int mismatched = 0, missing = 0, extra = 0;
            List<String> examples = new ArrayList<>();
            Set<String> keys = new HashSet<>(expected.keySet());
            keys.addAll(counted.keySet());
            for (String key : keys) {
                Long want = expected.get(key), got = counted.get(key);
                if (want != null && want.equals(got)) {
                    continue;
                }
                if (got == null) {
                    missing++;
                } else if (want == null) {
                    extra++;
                } else {
                    mismatched++;
                }
                if (examples.size() < 5) {
                    examples.add(key.replace('\t', ' ') + ": expected " + want + ", counted " + got);
                }
            }
            return new Comparison(sum(expected), sum(counted), expected.size(), mismatched, missing, extra, examples);
        }

        boolean exact() {
            return mismatched == 0 && missing == 0 && extra == 0;
        }

        /** `read`: the output topic, when there is one (committed records, and the offsets past them:
         * transaction markers and aborted records). */
        String json(String oracle, TopicReader.Read read) {
            StringBuilder ex = new StringBuilder("[");
            for (String e : examples) {
                ex.append(ex.length() > 1 ? "," : "").append('"').append(e.replace("\"", "'")).append('"');
            }
            ex.append(']');
            return String.format(
                    "{\"oracle\":\"%s\",\"exact\":%b,\"expected_total\":%d,\"counted_total\":%d,\"keys\":%d,"
                            + "\"mismatched\":%d,\"missing\":%d,\"extra\":%d,\"output_records\":%s,"
                            + "\"output_offsets_without_committed_record\":%s,\"examples\":%s}",
                    oracle, exact(), expectedTotal, countedTotal, keys, mismatched, missing, extra,
                    read == null ? "null" : Long.toString(read.records()),
                    read == null ? "null" : Long.toString(read.offsets() - read.records()), ex);
        }

        private static long sum(Map<String, Long> m) {
            return m.values().stream().mapToLong(Long::longValue).sum();
        }
    }
}
