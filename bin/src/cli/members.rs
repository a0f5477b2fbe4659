//! `swimlock members`: the view as the local node's gossip sees it.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use swimlock_wire::client::{MemberInfo, Status};

use super::EXIT_UNAVAILABLE;
use crate::agent::DEFAULT_CLIENT;
use crate::client::Client;

/// Options of `swimlock members`.
#[derive(Args, Debug)]
pub struct MembersArgs {
    /// Client endpoint of the agent: HOST:PORT or unix:PATH (password, if
    /// needed, from SWIMLOCK_CLIENT_TOKEN).
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR")]
    pub client: String,
    /// Print one JSON object per member, one per line, instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Asks the agent (`STATUS`) and prints its members.
pub async fn run(args: MembersArgs) -> ExitCode {
    let token = std::env::var(crate::agent::CLIENT_TOKEN_ENV).ok();
    let status = match Client::connect_with_token(&args.client, token.as_deref()).await {
        Ok(client) => client.status().await,
        Err(e) => Err(e),
    };
    match status {
        Ok(status) => {
            print!("{}", if args.json { to_json_lines(&status) } else { to_text(&status) });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swimlock members: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// Every member: the view's, oldest first, then those that left it.
fn all(s: &Status) -> impl Iterator<Item = &MemberInfo> {
    s.members.iter().chain(&s.departed)
}

fn notes(s: &Status, m: &MemberInfo) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if s.coordinator.as_ref().is_some_and(|c| c.id == m.id) {
        notes.push("coordinator");
    }
    if m.id == s.id {
        notes.push("this node");
    }
    notes
}

/// One line per member: name, address, start stamp, state, notes.
pub fn to_text(s: &Status) -> String {
    use std::fmt::Write;
    let width = all(s).map(|m| m.name.len()).max().unwrap_or(0).max(4);
    let addr_width = all(s).map(|m| m.id.addr.to_string().len()).max().unwrap_or(0).max(7);
    let mut out =
        format!("{:width$}  {:addr_width$}  {:16}  {:7}  NOTES\n", "NAME", "ADDRESS", "EPOCH", "STATE");
    for m in all(s) {
        let notes = notes(s, m).join(", ");
        let addr = m.id.addr.to_string();
        let state = m.state.as_str();
        let _ =
            writeln!(out, "{:width$}  {addr:addr_width$}  {:<16}  {state:7}  {notes}", m.name, m.id.epoch);
    }
    out
}

/// One JSON object per member and line, for scripts.
pub fn to_json_lines(s: &Status) -> String {
    all(s)
        .map(|m| {
            let v = json!({
                "name": m.name,
                "addr": m.id.addr.to_string(),
                "epoch": m.id.epoch,
                "state": m.state.as_str(),
                "coordinator": s.coordinator.as_ref().is_some_and(|c| c.id == m.id),
                "self": m.id == s.id,
                "view_id": s.view_id,
            });
            format!("{v}\n")
        })
        .collect()
}
