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

/// What a test needs installed outside the repository (npm or PyPI
/// packages), and where it goes.
pub struct Deps<'a> {
    /// The variable scripts/test.sh exports with the directory it
    /// installed into (so the networked install shows in its own step).
    pub env: &'a str,
    /// The directory under `<target dir>` to install into without it.
    pub subdir: &'a str,
    /// The install script (`bash SCRIPT DIR`; idempotent).
    pub script: &'a Path,
    /// What the install needs, for a failure message.
    pub needs: &'a str,
}

impl Deps<'_> {
    /// The directory holding them. With `env` set it must be ready (a clear
    /// failure otherwise); without, `script` installs what is missing,
    /// bounded to 300 s, into `<target dir>/subdir`. `ready` says whether
    /// a directory has everything.
    pub fn dir(&self, ready: impl Fn(&Path) -> bool) -> PathBuf {
        let script = self.script.display();
        if let Some(dir) = std::env::var_os(self.env) {
            let dir = PathBuf::from(dir);
            assert!(
                ready(&dir),
                "{}={} lacks what the tests import: run `bash {script} {}` (scripts/test.sh does)",
                self.env,
                dir.display(),
                dir.display()
            );
            return dir;
        }
        // BIN is <target dir>/<profile>/ws-gateway.
        let dir = Path::new(BIN)
            .parent()
            .and_then(Path::parent)
            .expect("the gateway binary lives in <target dir>/<profile>/")
            .join(self.subdir);
        let mut cmd = Command::new("bash");
        cmd.arg(self.script).arg(&dir);
        run_bounded(cmd, Duration::from_secs(300)).assert_success(&format!(
            "`bash {script} {}` (needs {})",
            dir.display(),
            self.needs
        ));
        assert!(
            ready(&dir),
            "{script} did not install everything into {}",
            dir.display()
        );
        dir
    }
}
