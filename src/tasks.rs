//! Named, tracked, cancellable tasks.
//!
//! Every long-running future in botvisor is spawned through [`Tasks::spawn`], which wraps it in
//! a span carrying the task's name and records the name while it runs. On shutdown the owner
//! cancels the shared [`CancellationToken`] and calls [`Tasks::wait`] with a deadline; the names
//! of tasks still running after the deadline are returned so the exit code and the log can say
//! which ones did not drain.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A cheap-to-clone handle that spawns named tasks into one tracker.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

impl Tasks {
    /// Creates a task set whose tasks observe `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown,
            running: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// The token every task of this set should watch to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns `fut` as a tracked task named `name`, inside a span of the same name.
    pub fn spawn<F>(&self, name: impl Into<String>, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let name = name.into();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(id, name.clone());
        let running = Arc::clone(&self.running);
        let span = tracing::info_span!("task", task = %name);
        let guard = RemoveOnDrop { running, id };
        // `map`, not `async move { fut.await }`: an async block keeps a future it captured
        // *and* the pinned copy it awaits, so every task's cell would hold its future twice
        // (docs/performance.md, "Idle memory per bot"). The guard is dropped with the
        // closure, so a task that is aborted is removed from `running` as well.
        self.tracker.spawn(
            fut.map(move |out| {
                drop(guard);
                out
            })
            .instrument(span),
        )
    }

    /// Names of the tasks currently running, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.running).values().cloned().collect();
        names.sort();
        names
    }

    /// Stops accepting the notion of new work and waits up to `deadline` for every task.
    ///
    /// Returns the names of the tasks still running when the deadline passed (empty when all
    /// of them finished).
    pub async fn wait(&self, deadline: Duration) -> Vec<String> {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            Vec::new()
        } else {
            self.running()
        }
    }
}

struct RemoveOnDrop {
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_reports_tasks_that_did_not_finish() {
        let shutdown = CancellationToken::new();
        let tasks = Tasks::new(shutdown.clone());
        let token = shutdown.clone();
        tasks.spawn("obedient", async move { token.cancelled().await });
        tasks.spawn("stubborn", std::future::pending::<()>());
        shutdown.cancel();
        let left = tasks.wait(Duration::from_millis(200)).await;
        assert_eq!(left, vec!["stubborn".to_string()]);
    }
}
