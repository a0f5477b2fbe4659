//! `swimlock watch`: one line per view the local node installs.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use swimlock_wire::client::ViewInfo;

use super::EXIT_UNAVAILABLE;
use crate::agent::DEFAULT_CLIENT;
use crate::client::Client;

/// Options of `swimlock watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Client endpoint of the agent: HOST:PORT or unix:PATH (password, if
    /// needed, from SWIMLOCK_CLIENT_TOKEN).
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR")]
    pub client: String,
    /// Print one JSON object per view instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the current view, then every change, until the agent goes away
/// (exit 69) or the process is stopped.
pub async fn run(args: WatchArgs) -> ExitCode {
    let token = std::env::var(crate::agent::CLIENT_TOKEN_ENV).ok();
    let watch = match Client::connect_with_token(&args.client, token.as_deref()).await {
        Ok(client) => client.watch_view().await,
        Err(e) => Err(e),
    };
    let mut watch = match watch {
        Ok(watch) => watch,
        Err(e) => {
            eprintln!("swimlock watch: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let mut out = std::io::stdout();
    while let Some(view) = watch.next().await {
        let line = if args.json { to_json(&view).to_string() } else { to_text(&view) };
        // A script reads each line as it comes.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("swimlock watch: the connection to the agent closed");
    ExitCode::from(EXIT_UNAVAILABLE)
}

/// The JSON form of one view.
pub fn to_json(v: &ViewInfo) -> serde_json::Value {
    json!({
        "view_id": v.id,
        "digest": format!("{:016x}", v.digest),
        "members": v.members.iter().map(|m| json!({
            "name": m.name, "addr": m.id.addr.to_string(), "epoch": m.id.epoch, "state": m.state.as_str(),
        })).collect::<Vec<_>>(),
        "coordinator": v.coordinator.as_ref().map(|m| m.name.clone()),
        "merge": v.merge,
        "subgroups": v.subgroups.iter().map(|g| g.iter().map(ToString::to_string).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

/// The text form of one view: `view ID: NAME(state) ... coordinator NAME`,
/// and the subgroups of a merge.
pub fn to_text(v: &ViewInfo) -> String {
    let members: Vec<String> =
        v.members.iter().map(|m| format!("{}({})", m.name, m.state.as_str())).collect();
    let coordinator = v.coordinator.as_ref().map_or("-", |m| m.name.as_str());
    let mut line = format!("view {}: {} coordinator {coordinator}", v.id, members.join(" "));
    if v.merge {
        let name = |id: &swimlock_wire::NodeId| {
            v.members.iter().find(|m| m.id == *id).map_or_else(|| id.to_string(), |m| m.name.clone())
        };
        let groups: Vec<String> = v
            .subgroups
            .iter()
            .map(|g| format!("[{}]", g.iter().map(name).collect::<Vec<_>>().join(" ")))
            .collect();
        line.push_str(&format!(" MERGE of {}", groups.join(" ")));
    }
    line
}
