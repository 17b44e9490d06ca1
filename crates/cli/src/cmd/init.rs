//! `backchannel init`: a new profile.

use backchannel_store::Store;
use serde_json::json;

use crate::cli::Global;
use crate::error::Failure;
use crate::profile;
use crate::session::{RELAY_SETTING, print, relay_addr};

pub(crate) async fn init(
    g: &Global,
    name: Option<String>,
    relay: Option<String>,
) -> Result<(), Failure> {
    let relay = relay.as_deref().map(relay_addr).transpose()?;
    let home = profile::home(g)?;
    if Store::exists(&home) {
        return Err(
            Failure::new(format!("a profile exists already at {}", home.display()))
                .hint("use --home DIR (or BACKCHANNEL_HOME) for another profile"),
        );
    }
    let name = name
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "me".to_owned());
    backchannel_proto::member::check_name(&name)
        .map_err(|e| Failure::new(format!("invalid name: {e}")))?;
    let pass = profile::passphrase(true)?;
    let store = Store::create(&home, pass.as_bytes()).map_err(profile::open_failure)?;
    crate::lock::acquire(&home)?;
    store.set_setting("name", &name)?;
    if let Some(relay) = &relay {
        store.set_setting(RELAY_SETTING, &relay.to_string())?;
    }
    print(
        g,
        format!("Profile created at {} (you are '{name}').", home.display()),
        json!({"home": home, "name": name}),
    );
    Ok(())
}
