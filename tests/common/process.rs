//! Commands run to completion, bounded in time, with their output kept
//! for failure messages: the README's recipes, and the installers of the
//! Node and Python packages the tests drive.

use super::*;

use std::process::ExitStatus;

/// What a bounded run did.
pub struct Run {
    /// `None` when it did not exit by itself within the timeout (killed).
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    pub fn assert_success(&self, what: &str) {
        let output = self.output();
        match self.status {
            None => panic!(
                "{what} did not exit by itself within {:?}; killed.\n{output}",
                self.elapsed
            ),
            Some(s) if !s.success() => panic!("{what} failed with {s}.\n{output}"),
            Some(_) => {}
        }
    }
}

/// Runs `cmd` in a process group of its own, with no stdin, capturing its
/// output; kills the whole group if it has not exited within `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Run {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let readers = [
        Box::new(child.stdout.take().expect("stdout pipe")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr pipe")),
    ]
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    });
    let exited = wait_until_sync(timeout, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        // The group: a shell recipe's redis-cli must go too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for the process");
    let elapsed = start.elapsed();
    let [stdout, stderr] = readers.map(|t| t.join().expect("pipe reader thread"));
    Run {
        status: exited.then_some(status),
        elapsed,
        stdout,
        stderr,
    }
}
