// CPU time of this whole process so far (every thread, user + system), to
// report how much of the process's CPU went to starting up before the first
// record: peers.sh measures the whole life from outside (wait4).
package tally.peers;

import java.lang.management.ManagementFactory;

/** This process's CPU time. */
final class ProcessCpu {
    private ProcessCpu() {}

    /** Nanoseconds of CPU this process has used, or -1 when the JVM cannot tell. */
    static long nanos() {
        if (ManagementFactory.getOperatingSystemMXBean() instanceof com.sun.management.OperatingSystemMXBean os) {
            return os.getProcessCpuTime();
        }
        return -1;
    }
}
