// Waits until every partition of a topic has a leader that answers an offset
// request (a topic created a moment ago may still answer "not leader"), so
// that what follows (tally-loadgen's watermark read) does not race the
// broker's leader election. Exit status 1 after LIMIT_S seconds.
//
// Run: java -cp 'peer.jar:lib/*' tally.peers.TopicReady BROKER TOPIC LIMIT_S
package tally.peers;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.common.TopicPartition;

/** Waits for a topic's partition leaders. */
public final class TopicReady {
    private TopicReady() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 3) {
            System.err.println("usage: TopicReady BROKER TOPIC LIMIT_S");
            System.exit(64);
        }
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        long deadline = System.nanoTime() + Duration.ofSeconds(Long.parseLong(args[2])).toNanos();
        Exception last = null;
        try (Admin admin = Admin.create(p)) {
            while (System.nanoTime() < deadline) {
                try {
                    var partitions = admin.describeTopics(List.of(args[1])).allTopicNames().get().get(args[1]).partitions();
                    Map<TopicPartition, OffsetSpec> request = new HashMap<>();
                    partitions.forEach(info -> request.put(new TopicPartition(args[1], info.partition()), OffsetSpec.latest()));
                    admin.listOffsets(request).all().get();
                    return;
                } catch (Exception e) {
                    last = e;
                    Thread.sleep(200);
                }
            }
        }
        System.err.println("topic " + args[1] + " not ready: " + last);
        System.exit(1);
    }
}
