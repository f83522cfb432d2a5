//! Dev mode's secret file (SPEC §9), isolated per test.

use super::*;

/// HOME and XDG_STATE_HOME inside `dir`, for a process whose dev-mode
/// secret must stay there, never in the real home directory.
pub fn state_env(dir: &Path) -> [(&'static str, String); 2] {
    [
        ("HOME", dir.join("home").display().to_string()),
        ("XDG_STATE_HOME", dir.join("state").display().to_string()),
    ]
}

/// The dev-mode secret file of a process run with [`state_env`]`(dir)`.
pub fn dev_secret_file(dir: &Path) -> PathBuf {
    dir.join("state").join("ws-gateway").join("dev-secret")
}

impl GatewayBuilder {
    /// Runs the gateway with [`state_env`]`(dir)`.
    pub fn state_home(mut self, dir: &Path) -> Self {
        for (k, v) in state_env(dir) {
            self = self.env(k, &v);
        }
        self
    }
}

/// Runs the CLI in `dir` with [`state_env`]`(dir)`, then `env`.
pub fn run_cli_with_state(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let state = state_env(dir);
    let mut all: Vec<(&str, &str)> = state.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(env);
    run_cli_in(dir, args, &all)
}
