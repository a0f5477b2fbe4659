//! `swimlock keygen` and `swimlock keyring list|install|use|remove`.

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;
use swimlock_wire::admin::KeyringOp;
use swimlock_wire::client::KeyringReport;

use super::{EXIT_CONFIG, EXIT_UNAVAILABLE};
use crate::agent::DEFAULT_CLIENT;
use crate::client::Client;
use crate::node::seal::{Key, KeyId};

/// Prints a new random key (base64) from the OS CSPRNG.
pub fn keygen() -> ExitCode {
    match crate::agent::generate_key() {
        Ok(key) => {
            println!("{}", key.to_base64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swimlock keygen: no random bytes from the OS: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Options of `swimlock keyring`.
#[derive(Args, Debug)]
pub struct KeyringArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
    /// Client endpoint of the local agent: HOST:PORT or unix:PATH.
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR", global = true)]
    pub client: String,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A keyring command. KEY is base64 (as `swimlock keygen` prints it), or
/// `-` to read it from standard input (a command line is visible to every
/// user of the host).
#[derive(Subcommand, Debug)]
pub enum Action {
    /// List the keys of every member of the view (ids only).
    List,
    /// Install KEY on every member: accepted from now on, not yet used to send.
    Install {
        /// The key.
        key: String,
    },
    /// Send with KEY from now on, on every member. Refused (nothing
    /// changes) unless every member holds it.
    Use {
        /// The key.
        key: String,
    },
    /// Stop accepting KEY on every member. Refused while any member sends
    /// with it.
    Remove {
        /// The key.
        key: String,
    },
}

fn read_key(text: &str) -> Result<Key, String> {
    if text == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        return Key::from_base64(&input).map_err(|e| e.to_string());
    }
    Key::from_base64(text).map_err(|e| e.to_string())
}

/// Runs the command through the local agent and prints the report.
pub async fn run(args: KeyringArgs) -> ExitCode {
    let op = match &args.action {
        Action::List => Ok(KeyringOp::List),
        Action::Install { key } => read_key(key).map(|k| KeyringOp::Install { key: *k.bytes() }),
        Action::Use { key } => read_key(key).map(|k| KeyringOp::Use { key_id: k.id().0 }),
        Action::Remove { key } => read_key(key).map(|k| KeyringOp::Remove { key_id: k.id().0 }),
    };
    let op = match op {
        Ok(op) => op,
        Err(e) => {
            eprintln!("swimlock keyring: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = match Client::connect(&args.client).await {
        Ok(client) => client.keyring(op).await,
        Err(e) => Err(e),
    };
    match report {
        Ok(report) => {
            if args.json {
                println!("{}", to_json(&report));
            } else {
                print!("{}", to_text(&report));
            }
            if report.failed.is_empty() && report.refused.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("swimlock keyring: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// The JSON form: key ids as 8 hex digits.
pub fn to_json(r: &KeyringReport) -> serde_json::Value {
    json!({
        "members": r.members,
        "keys": r.keys.iter().map(|k| json!({
            "id": KeyId(k.key_id).to_string(), "members": k.members, "primary": k.primary,
        })).collect::<Vec<_>>(),
        "failed": r.failed.iter().map(|f| json!({
            "name": f.name, "id": f.id.to_string(), "reason": f.reason,
        })).collect::<Vec<_>>(),
        "refused": r.refused,
    })
}

/// The text form, as `consul keyring` prints it.
pub fn to_text(r: &KeyringReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(why) = &r.refused {
        let _ = writeln!(out, "refused: {why}");
    }
    let _ = writeln!(out, "{} members:", r.members);
    for k in &r.keys {
        let primary =
            if k.primary > 0 { format!(", primary on {}/{}", k.primary, r.members) } else { String::new() };
        let _ = writeln!(out, "  key {}  held by {}/{}{primary}", KeyId(k.key_id), k.members, r.members);
    }
    if !r.failed.is_empty() {
        let _ = writeln!(out, "failed on {} members:", r.failed.len());
        for f in &r.failed {
            let _ = writeln!(out, "  {} ({}): {}", f.name, f.id, f.reason);
        }
    }
    out
}
