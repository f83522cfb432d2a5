//! Waiting for SIGTERM / SIGINT, and the services stopped after it.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves on the first SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The server's long-lived tasks: each one named, each given the one stop
/// signal, and all joined at shutdown, so nothing is spawned and forgotten.
pub struct Services {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            stop: watch::Sender::new(false),
            running: Vec::new(),
        }
    }
}

impl Services {
    /// Starts `task`, handing it the stop signal (true once stopping).
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.stop.subscribe()));
        self.running.push((name, handle));
    }

    /// Starts `task`, which has nothing to clean up: it is simply dropped
    /// when the stop signal comes.
    pub fn spawn_until_stopped(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(name, |mut stop| async move {
            tokio::select! {
                () = task => {}
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
        });
    }

    /// Signals every service to stop and waits for each, `limit` in all.
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + limit;
        for (name, handle) in self.running {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(())) => tracing::debug!(service = name, "stopped"),
                Ok(Err(e)) => tracing::error!(service = name, error = %e, "service failed"),
                Err(_) => tracing::warn!(service = name, "did not stop in time"),
            }
        }
    }
}
