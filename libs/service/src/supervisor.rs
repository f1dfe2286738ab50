//! One shutdown root for a process: named tasks, any failure cancels all,
//! bounded drain, and an error that says which task ended things and why.

use std::future::Future;
use std::time::Duration;

use std::collections::HashMap;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The error a supervised task may end with.
pub type TaskError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a supervised run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A task returned an error.
    #[error("task {name} failed: {source}")]
    TaskFailed {
        /// The task's name.
        name: &'static str,
        /// Its error.
        source: TaskError,
    },
    /// A task panicked.
    #[error("task {name} panicked")]
    TaskPanicked {
        /// The task's name.
        name: &'static str,
    },
    /// A task ended on its own before shutdown was asked for.
    #[error("task {name} exited before shutdown")]
    TaskExitedEarly {
        /// The task's name.
        name: &'static str,
    },
    /// Tasks still running when the drain deadline passed.
    #[error("drain timed out; still running: {pending:?}")]
    DrainTimedOut {
        /// Names of the tasks that did not finish.
        pending: Vec<&'static str>,
    },
}

impl SupervisorError {
    /// A process exit code that tells why: 2 a task failed, 3 a panic, 4 an
    /// early exit, 5 the drain timed out.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::TaskFailed { .. } => 2,
            Self::TaskPanicked { .. } => 3,
            Self::TaskExitedEarly { .. } => 4,
            Self::DrainTimedOut { .. } => 5,
        }
    }
}

/// Runs named tasks until shutdown is asked for or one of them ends.
pub struct Supervisor {
    token: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), TaskError>)>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `token` is cancelled.
    pub fn new(token: CancellationToken) -> Self {
        Self { token, tasks: JoinSet::new(), names: HashMap::new() }
    }

    /// The token every task should watch.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Starts `task` under `name`. A task must return once the token is cancelled.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        let handle = self.tasks.spawn(async move { (name, task.await.map_err(Into::into)) });
        self.names.insert(handle.id(), name);
    }

    /// Waits for shutdown (token cancelled) or the first task to end, then
    /// cancels the rest and waits up to `drain` for them. Returns the first
    /// failure, if any.
    pub async fn run(mut self, drain: Duration) -> Result<(), SupervisorError> {
        let mut first_error: Option<SupervisorError> = None;
        let mut finished: Vec<&'static str> = Vec::new();
        tokio::select! {
            () = self.token.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                // A task that ends because shutdown was just asked for is not early.
                let (name, outcome) = classify(joined, self.token.is_cancelled(), &self.names);
                finished.push(name);
                first_error = outcome.err();
                if first_error.is_some() {
                    tracing::warn!(task = name, "task ended; shutting down the others");
                }
            }
        }
        self.token.cancel();
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(joined)) => {
                    let (name, outcome) = classify(joined, true, &self.names);
                    finished.push(name);
                    if let Err(e) = outcome {
                        tracing::error!(task = name, error = %e, "task failed during drain");
                        first_error.get_or_insert(e);
                    }
                }
                Err(_) => {
                    self.tasks.abort_all();
                    let pending = self.names.values().copied().filter(|n| !finished.contains(n)).collect();
                    return Err(first_error.unwrap_or(SupervisorError::DrainTimedOut { pending }));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn classify(
    joined: Result<(&'static str, Result<(), TaskError>), tokio::task::JoinError>,
    shutting_down: bool,
    names: &HashMap<tokio::task::Id, &'static str>,
) -> (&'static str, Result<(), SupervisorError>) {
    match joined {
        Ok((name, Ok(()))) if shutting_down => (name, Ok(())),
        Ok((name, Ok(()))) => (name, Err(SupervisorError::TaskExitedEarly { name })),
        Ok((name, Err(source))) => (name, Err(SupervisorError::TaskFailed { name, source })),
        Err(join_error) => {
            let name = names.get(&join_error.id()).copied().unwrap_or("<unknown>");
            tracing::error!(task = name, error = %join_error, "supervised task panicked");
            (name, Err(SupervisorError::TaskPanicked { name }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_by_name() {
        let mut supervisor = Supervisor::new(CancellationToken::new());
        supervisor.spawn("flusher", async {
            if true {
                panic!("boom");
            }
            Ok::<(), TaskError>(())
        });
        let err = supervisor.run(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, SupervisorError::TaskPanicked { name: "flusher" }), "{err}");
    }

    #[tokio::test]
    async fn cancelling_the_token_drains_every_task_cleanly() {
        let token = CancellationToken::new();
        let mut supervisor = Supervisor::new(token.clone());
        for name in ["a", "b"] {
            let t = supervisor.token();
            supervisor.spawn(name, async move {
                t.cancelled().await;
                Ok::<(), TaskError>(())
            });
        }
        token.cancel();
        supervisor.run(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn one_failing_task_cancels_the_others_and_is_reported() {
        let mut supervisor = Supervisor::new(CancellationToken::new());
        let t = supervisor.token();
        supervisor.spawn("server", async move {
            t.cancelled().await;
            Ok::<(), TaskError>(())
        });
        supervisor.spawn("consumer", async { Err::<(), TaskError>("broker gone".into()) });
        let err = supervisor.run(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, SupervisorError::TaskFailed { name: "consumer", .. }), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_shutdown_is_named_when_the_drain_times_out() {
        let token = CancellationToken::new();
        let mut supervisor = Supervisor::new(token.clone());
        supervisor.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), TaskError>(())
        });
        token.cancel();
        let err = supervisor.run(Duration::from_secs(2)).await.unwrap_err();
        match err {
            SupervisorError::DrainTimedOut { pending } => assert_eq!(pending, vec!["stubborn"]),
            other => panic!("unexpected {other}"),
        }
    }
}
