//! Starts the servers a whole test run shares (one Apache Kafka broker, one
//! Apache Cassandra node), writes `KEY=value` lines naming them to the file
//! given as the only argument, and keeps them running until it receives
//! SIGTERM or SIGINT or its parent (`scripts/test`) is gone.
//!
//! `scripts/test` runs it in the background and exports the lines before it
//! runs the tests ([`tally_testkit::Broker::shared`],
//! [`tally_testkit::Cassandra::shared`]).

use std::time::Duration;

use tally_testkit::broker::SHARED_BROKER_VAR;
use tally_testkit::cassandra::SHARED_CASSANDRA_VAR;
use tally_testkit::{Broker, Cassandra};

fn main() {
    let Some(env_file) = std::env::args().nth(1) else {
        eprintln!("usage: tally-test-servers ENV_FILE");
        std::process::exit(2);
    };
    let parent = std::os::unix::process::parent_id();
    let started = std::time::Instant::now();
    // Both at once: the JVMs' start-up is mostly waiting on one core each.
    let cassandra = std::thread::spawn(Cassandra::start);
    let broker = Broker::start();
    let cassandra = cassandra.join().unwrap_or_else(|_| std::process::exit(1));
    let lines =
        format!("{SHARED_BROKER_VAR}={}\n{SHARED_CASSANDRA_VAR}={}\n", broker.bootstrap(), cassandra.contact_point());
    let partial = format!("{env_file}.partial");
    std::fs::write(&partial, &lines).and_then(|()| std::fs::rename(&partial, &env_file)).unwrap_or_else(|e| {
        eprintln!("tally-test-servers: cannot write {env_file}: {e}");
        std::process::exit(1);
    });
    eprintln!(
        "tally-test-servers: Apache Kafka {} at {}, Apache Cassandra {} at {} (ready in {:.1} s)",
        tally_servers::kafka::version(),
        broker.bootstrap(),
        tally_servers::cassandra::version(),
        cassandra.contact_point(),
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = interrupt.recv() => break,
                _ = tick.tick() => if std::os::unix::process::parent_id() != parent { break },
            }
        }
    });
    drop(broker);
    drop(cassandra);
}
