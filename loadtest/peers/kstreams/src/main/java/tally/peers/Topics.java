// Broker-side helpers of the Kafka Streams peer: the input's end offsets, the
// output topic, and the wait until the application's group has committed
// every input record.
package tally.peers;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.streams.KafkaStreams;

/** An admin client for the peer's bookkeeping. */
final class Topics implements AutoCloseable {
    private final Admin admin;

    Topics(String broker) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, broker);
        admin = Admin.create(p);
    }

    /** The end offset of every partition of `topic`, by partition. */
    Map<Integer, Long> endOffsets(String topic) throws ExecutionException, InterruptedException {
        var partitions = admin.describeTopics(java.util.List.of(topic)).allTopicNames().get().get(topic).partitions();
        Map<TopicPartition, OffsetSpec> request = new HashMap<>();
        partitions.forEach(info -> request.put(new TopicPartition(topic, info.partition()), OffsetSpec.latest()));
        Map<Integer, Long> end = new HashMap<>();
        admin.listOffsets(request).all().get().forEach((tp, info) -> end.put(tp.partition(), info.offset()));
        return end;
    }

    /** Creates `topic` (replication factor 1) unless it exists. */
    void create(String topic, int partitions) throws ExecutionException, InterruptedException {
        try {
            admin.createTopics(java.util.List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
        } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) {
                throw e;
            }
        }
    }

    /** Waits until `group` has committed `end` on every non-empty partition of `topic`; false when `streams`
     * fails or `limit` passes first. */
    boolean waitCommitted(String group, String topic, Map<Integer, Long> end, Duration limit, KafkaStreams streams)
            throws InterruptedException, ExecutionException {
        long deadline = System.nanoTime() + limit.toNanos();
        while (System.nanoTime() < deadline) {
            KafkaStreams.State state = streams.state();
            if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING) {
                System.err.println("Kafka Streams stopped in state " + state);
                return false;
            }
            Map<TopicPartition, OffsetAndMetadata> committed =
                    admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
            boolean all = end.entrySet().stream().allMatch(e -> {
                if (e.getValue() == 0) {
                    return true;
                }
                OffsetAndMetadata c = committed.get(new TopicPartition(topic, e.getKey()));
                return c != null && c.offset() >= e.getValue();
            });
            if (all) {
                return true;
            }
            Thread.sleep(100);
        }
        System.err.println("not every record was committed within " + limit);
        return false;
    }

    @Override
    public void close() {
        admin.close(Duration.ofSeconds(5));
    }
}
