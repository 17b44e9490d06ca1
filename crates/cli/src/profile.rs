//! Finding, creating and opening the profile.

use std::path::PathBuf;

use backchannel_client::{Client, ClientConfig};
use backchannel_store::{OpenError, Store};
use zeroize::Zeroizing;

use crate::cli::Global;
use crate::error::Failure;

/// Environment variable naming the profile directory.
pub(crate) const HOME_ENV: &str = "BACKCHANNEL_HOME";
/// Environment variable holding the passphrase.
pub(crate) const PASSPHRASE_ENV: &str = "BACKCHANNEL_PASSPHRASE";

/// The profile directory.
pub(crate) fn home(g: &Global) -> Result<PathBuf, Failure> {
    if let Some(home) = &g.home {
        return Ok(home.clone());
    }
    if let Some(home) = std::env::var_os(HOME_ENV) {
        return Ok(PathBuf::from(home));
    }
    dirs::data_dir()
        .map(|d| d.join("backchannel"))
        .ok_or_else(|| Failure::new("cannot find a data directory").hint("pass --home DIR"))
}

/// The passphrase, from the environment or a prompt. `confirm` asks twice.
pub(crate) fn passphrase(confirm: bool) -> Result<Zeroizing<String>, Failure> {
    secret(PASSPHRASE_ENV, "passphrase", confirm)
}

/// A secret from the environment variable `env` or, without it, a prompt (twice
/// with `confirm`). Empty is refused from either: it protects nothing.
pub(crate) fn secret(env: &str, what: &str, confirm: bool) -> Result<Zeroizing<String>, Failure> {
    let empty = || Failure::new(format!("the {what} cannot be empty"));
    if let Ok(p) = std::env::var(env) {
        let p = Zeroizing::new(p);
        if p.is_empty() {
            return Err(empty().hint(format!("{env} is set but empty")));
        }
        return Ok(p);
    }
    let prompt = |text: &str| {
        rpassword::prompt_password(text)
            .map(Zeroizing::new)
            .map_err(|_| {
                Failure::new(format!("no {what} given")).hint(format!(
                    "run in a terminal to be asked for it, or set {env}"
                ))
            })
    };
    let mut label = what.to_owned();
    if let Some(first) = label.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let first = prompt(&format!("{label}: "))?;
    if first.is_empty() {
        return Err(empty());
    }
    if confirm && *prompt(&format!("{label} again: "))? != *first {
        return Err(Failure::new(format!("the two {what}s differ")).hint("try again"));
    }
    Ok(first)
}

/// Opens the profile with the passphrase.
pub(crate) fn open_store(g: &Global) -> Result<Store, Failure> {
    let home = home(g)?;
    if !Store::exists(&home) {
        return Err(
            Failure::new(format!("there is no profile at {}", home.display()))
                .hint("create one with `backchannel init`, or pass --home"),
        );
    }
    // One process writes a profile at a time; others wait (or go through the
    // daemon that has it, see `cmd::daemon::forward`).
    crate::lock::acquire(&home)?;
    let pass = passphrase(false)?;
    Store::open(&home, pass.as_bytes()).map_err(open_failure)
}

/// Explains an open failure to a person.
pub(crate) fn open_failure(e: OpenError) -> Failure {
    match e {
        OpenError::WrongPassphrase => Failure::new("wrong passphrase")
            .hint("nothing was changed; try again (the passphrase cannot be recovered)"),
        OpenError::Damaged(detail) => Failure::alert(format!(
            "the profile has been altered or damaged on disk ({detail}); it was not read"
        )),
        other => Failure::new(other.to_string()),
    }
}

/// Opens the profile and a client over it.
/// Says which channels were erased on opening (past their end date), and deletes
/// at their relays the mailboxes of channels that are gone.
pub(crate) async fn open_client(g: &Global) -> Result<Client, Failure> {
    let store = open_store(g)?;
    let mut client = Client::open(store, ClientConfig::default()).map_err(Failure::from)?;
    let events = client.drain_events();
    crate::session::report_changes(g, &mut client, &events);
    if let Err(e) = client.retire_closed().await {
        eprintln!("warning: {e}");
    }
    Ok(client)
}

/// Where received files go: the directory given, or `downloads/` in the profile
/// (made with mode 0700: only its owner reads what others sent).
pub(crate) fn save_dir(g: &Global, given: Option<&std::path::Path>) -> Result<PathBuf, Failure> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => home(g)?.join("downloads"),
    };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Failure::new(format!("cannot make {}: {e}", dir.display())))?;
    }
    // Files from others are written there: no one else may swap names in it.
    if !crate::rpc::is_private_dir(&dir) {
        return Err(Failure::new(format!(
            "{} is not a directory of yours that only you can write to",
            dir.display()
        ))
        .hint("save files in such a directory (the default, downloads/ in the profile, is)"));
    }
    Ok(dir)
}

/// The profile's display name.
pub(crate) fn own_name(client: &Client) -> Result<String, Failure> {
    Ok(client
        .store()
        .setting("name")?
        .unwrap_or_else(|| "me".to_owned()))
}
