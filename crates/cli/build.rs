//! Puts the commit the binary was built from into `--version`
//! (`BACKCHANNEL_COMMIT`: the short hash of HEAD; `unknown` outside a git
//! checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

fn main() {
    // A packager without the repository can name the commit itself.
    println!("cargo:rerun-if-env-changed=BACKCHANNEL_COMMIT");
    let commit = std::env::var("BACKCHANNEL_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BACKCHANNEL_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit, a checkout).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        // The branch's ref is a file of its own, or a line of packed-refs (a path
        // that does not exist would rerun this at every build).
        let branch = git(&["symbolic-ref", "-q", "HEAD"]).map(|r| format!("{dir}/{r}"));
        match branch {
            Some(file) if std::path::Path::new(&file).exists() => {
                println!("cargo:rerun-if-changed={file}");
            }
            _ if std::path::Path::new(&format!("{dir}/packed-refs")).exists() => {
                println!("cargo:rerun-if-changed={dir}/packed-refs");
            }
            _ => {}
        }
    }
}
