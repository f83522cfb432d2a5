//! Dev mode's generated secret (SPEC §9), kept in a file so that `serve`
//! and `ws-gateway token` sign with the same one: a developer can mint
//! tokens for other users and roles, and tokens survive a restart.
//!
//! The file is `$XDG_STATE_HOME/ws-gateway/dev-secret`, else
//! `$HOME/.local/state/ws-gateway/dev-secret`; its directory is 0700 and
//! the file 0600 (on Unix), since anyone who reads it can mint admin tokens.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

/// A dev-mode secret and the file it is kept in.
pub struct DevSecret {
    pub path: PathBuf,
    pub secret: String,
}

/// Where dev mode keeps its secret. Errors are a sentence for the user.
pub fn path() -> Result<PathBuf, String> {
    // The XDG spec says to ignore a relative XDG_STATE_HOME.
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".local").join("state"))
    };
    let state_home = xdg.or_else(home).ok_or(
        "neither XDG_STATE_HOME nor HOME is set, so there is no place to keep the dev-mode secret",
    )?;
    Ok(state_home.join("ws-gateway").join("dev-secret"))
}

/// Loads the dev-mode secret, creating the file on first use. Errors name
/// the file and what went wrong.
pub fn load_or_create() -> Result<DevSecret, String> {
    let path = path()?;
    let secret =
        load_or_create_at(&path).map_err(|e| format!("dev-mode secret {}: {e}", path.display()))?;
    Ok(DevSecret { path, secret })
}

fn load_or_create_at(path: &Path) -> io::Result<String> {
    match read(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => create(path),
        read => read,
    }
}

/// A new random secret: 32 bytes, hex-encoded.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> io::Result<String> {
    let text = fs::read_to_string(path)?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(io::Error::new(ErrorKind::InvalidData, "the file is empty"));
    }
    Ok(secret.to_string())
}

/// Creates the file so that processes starting at once agree on one
/// secret: each writes a complete temporary file of its own, and the first
/// to hard-link it to the final name wins (a link never replaces an
/// existing file); the others read the winner's. So the final name never
/// shows a partly written file.
fn create(path: &Path) -> io::Result<String> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("the path has no directory"))?;
    let mut dirs = DirBuilder::new();
    dirs.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dirs, 0o700);
    dirs.create(dir)?;

    let secret = generate();
    let temp = dir.join(format!(
        ".dev-secret.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let linked = write_new(&temp, &secret).and_then(|()| fs::hard_link(&temp, path));
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e),
    }
}

fn write_new(path: &Path, secret: &str) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_creators_agree_and_a_second_load_reads_the_file() {
        let dir = std::env::temp_dir().join(format!(
            "ws-gateway-dev-secret-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("nested").join("dev-secret");
        let secrets: Vec<String> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_at(&path).unwrap()))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|s| s == &secrets[0]), "{secrets:?}");
        assert_eq!(secrets[0].len(), 64);
        assert_eq!(load_or_create_at(&path).unwrap(), secrets[0]);
        // Only the final file is left: every temporary file was removed.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["dev-secret"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
