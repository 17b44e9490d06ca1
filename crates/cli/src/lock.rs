//! One process at a time writes a profile: the lock file `profile.lock` in its
//! directory, held (an advisory `flock`) from opening the store to the end of
//! the process, with the holder's process id in it for the message others see.
//! The daemon (and `read --follow`) also leave `daemon.json` beside it, naming
//! the socket through which other commands can reach them instead.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::Failure;

/// The lock file, in the profile directory.
pub(crate) const LOCK_FILE: &str = "profile.lock";

/// Locks held by this process, by profile directory: released when it exits.
fn held() -> &'static Mutex<HashMap<PathBuf, File>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, File>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

fn open(home: &Path) -> Result<File, Failure> {
    let path = home.join(LOCK_FILE);
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(&path)
        .map_err(|e| Failure::new(format!("cannot open {}: {e}", path.display())))
}

/// Whether another process holds the profile (without taking it).
pub(crate) fn busy(home: &Path) -> bool {
    if is_held(home) {
        return false;
    }
    let Ok(file) = open(home) else {
        return false;
    };
    matches!(file.try_lock(), Err(TryLockError::WouldBlock))
}

/// The process id written in the lock file by its holder.
pub(crate) fn holder(home: &Path) -> Option<u32> {
    std::fs::read_to_string(home.join(LOCK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_held(home: &Path) -> bool {
    held().lock().map(|h| h.contains_key(home)).unwrap_or(false)
}

/// Takes the profile for this process, waiting (and saying so once) while another
/// process has it. Taking it twice in one process is a no-op.
pub(crate) fn acquire(home: &Path) -> Result<(), Failure> {
    if is_held(home) {
        return Ok(());
    }
    let mut file = open(home)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.chars().all(|c| c.is_ascii_digit()) && !holder.is_empty() {
                format!(" (process {holder})")
            } else {
                String::new()
            };
            eprintln!(
                "The profile is open in another backchannel process{who}; waiting until it \
                 closes it (Ctrl-C to give up)."
            );
            file.lock()
                .map_err(|e| Failure::new(format!("cannot lock the profile: {e}")))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(Failure::new(format!("cannot lock the profile: {e}")));
        }
    }
    // Ours now. What a process that died left naming its socket is stale: gone,
    // so that no command follows it to whatever listens there now.
    let _ = std::fs::remove_file(home.join(crate::rpc::DAEMON_FILE));
    // Say who holds it.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    if let Ok(mut h) = held().lock() {
        h.insert(home.to_path_buf(), file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opening_sees_the_profile_busy_and_the_holder_does_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!busy(dir.path()));
        acquire(dir.path()).unwrap();
        // This process holds it: not busy for us, and taking it again is a no-op.
        assert!(!busy(dir.path()));
        acquire(dir.path()).unwrap();
        // Another open file description (as another process has) cannot take it.
        let other = open(dir.path()).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid, std::process::id().to_string());
    }
}
