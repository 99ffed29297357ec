//! The connection workers: one single-threaded tokio runtime per core, each serving the
//! connections the accept loop hands it in turn. A request is read, answered (the egress proxy's
//! upstream exchange included) and written on one thread, as in nginx's worker processes: no
//! work stealing and no wake-up of another thread per request. On a multi-threaded runtime those
//! cost the proxy about a fifth of its CPU time per request (bench/README.md, issue #30).
//!
//! Work that is not a connection (refresh, the key keeper, reloads) stays on the main runtime.
//! A worker's runtime ends when [`Workers`] is dropped, after the accept loop has seen every
//! connection close.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// At most this many workers, whatever the machine reports.
const MAX_WORKERS: usize = 64;
/// Blocking threads (PKCS#11 calls) of all workers together: tokio's default for one runtime,
/// shared out, so that more workers do not mean more threads.
const BLOCKING_THREADS: usize = 512;

/// The running workers.
pub(crate) struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Dropped with the worker, which ends its thread: it is not joined, as the drop may run on
    /// an async task.
    _stop: oneshot::Sender<()>,
}

impl Workers {
    /// One worker per core the process may use.
    pub(crate) fn per_core() -> io::Result<Workers> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Workers::start(cores.clamp(1, MAX_WORKERS))
    }

    /// `count` workers, each a thread with a single-threaded runtime (timers and I/O enabled)
    /// that logs where the thread starting them logs (the global subscriber, or a test's).
    pub(crate) fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count);
        let logs_to = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        for index in 0..count {
            let logs_to = logs_to.clone();
            let runtime = Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_THREADS.div_ceil(count))
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("broker-worker-{index}"))
                .spawn(move || {
                    let _logs_to = tracing::dispatcher::set_default(&logs_to);
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Tasks still there (idle upstream connections, their timers) are dropped;
                    // a blocking task is not waited for.
                    runtime.shutdown_background();
                })?;
            workers.push(Worker {
                handle,
                _stop: stop,
            });
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// Run `task` on the next worker in turn.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        drop(self.workers[index].handle.spawn(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_workers_in_turn() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                tx.send(name).unwrap();
            });
        }
        let mut names: Vec<String> = (0..4)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "broker-worker-0",
                "broker-worker-0",
                "broker-worker-1",
                "broker-worker-1"
            ]
        );
    }

    #[test]
    fn a_dropped_pool_ends_its_threads() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.spawn(async move {
            // Never ends on its own: holds tx until the runtime drops the task.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The task was dropped with the runtime, so the channel closes.
        assert!(matches!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
    }
}
