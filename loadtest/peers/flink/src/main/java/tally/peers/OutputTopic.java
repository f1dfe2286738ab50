// Creates the Flink peer's output topic (as many partitions as the input,
// replication factor 1) unless it exists: the broker does not auto-create.
package tally.peers;

import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

/** The output topic. */
final class OutputTopic {
    private OutputTopic() {}

    static void create(String broker, String input, String output) throws ExecutionException, InterruptedException {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, broker);
        try (Admin admin = Admin.create(p)) {
            int partitions = admin.describeTopics(List.of(input)).allTopicNames().get().get(input).partitions().size();
            admin.createTopics(List.of(new NewTopic(output, partitions, (short) 1))).all().get();
        } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) {
                throw e;
            }
        }
    }
}
