//! `swimlock status` and `swimlock accept-term`.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use swimlock_wire::client::Status;

use super::EXIT_UNAVAILABLE;
use crate::agent::DEFAULT_CLIENT;
use crate::client::Client;

/// Options of `swimlock status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Client endpoint of the agent: HOST:PORT or unix:PATH (password, if
    /// needed, from SWIMLOCK_CLIENT_TOKEN).
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR")]
    pub client: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `swimlock accept-term`.
#[derive(Args, Debug)]
pub struct AcceptTermArgs {
    /// The highest coordinator term to accept: the term the alert named
    /// (at most 8388607, the largest term a token carries).
    #[arg(value_parser = clap::value_parser!(u32).range(1..=i64::from(swimlock_wire::Token::MAX_TERM)))]
    pub term: u32,
    /// Client endpoint of the agent whose coordinator stopped (the one
    /// whose `swimlock status` shows "granting halted").
    #[arg(long, default_value = DEFAULT_CLIENT, value_name = "ADDR")]
    pub client: String,
}

/// Tells the agent the operator accepts terms up to `args.term`.
pub async fn accept_term(args: AcceptTermArgs) -> ExitCode {
    let token = std::env::var(crate::agent::CLIENT_TOKEN_ENV).ok();
    let result = match Client::connect_with_token(&args.client, token.as_deref()).await {
        Ok(client) => client.accept_term(args.term).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(None) => {
            println!("accepted terms up to {}; this node's coordinator grants (above them)", args.term);
            ExitCode::SUCCESS
        }
        Ok(Some(halted_on)) => {
            eprintln!(
                "swimlock accept-term: accepted terms up to {}, but the coordinator stops on term \
                 {halted_on}, which is higher: accept {halted_on} to let it grant",
                args.term
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("swimlock accept-term: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// Asks the agent and prints.
pub async fn run(args: StatusArgs) -> ExitCode {
    let token = std::env::var(crate::agent::CLIENT_TOKEN_ENV).ok();
    let status = match Client::connect_with_token(&args.client, token.as_deref()).await {
        Ok(client) => client.status().await,
        Err(e) => Err(e),
    };
    match status {
        Ok(status) if args.json => {
            println!("{}", to_json(&status));
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", to_text(&status));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swimlock status: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// The JSON form: one object, stable keys.
pub fn to_json(s: &Status) -> serde_json::Value {
    let member = |m: &swimlock_wire::client::MemberInfo| json!({ "name": m.name, "addr": m.id.addr.to_string(), "epoch": m.id.epoch, "state": m.state.as_str() });
    json!({
        "name": s.name,
        "id": s.id.to_string(),
        "bind": s.bind.to_string(),
        "mode": s.mode,
        "view_id": s.view_id,
        "view_digest": format!("{:016x}", s.view_digest),
        "coordinator": s.coordinator.as_ref().map(|m| m.name.clone()),
        "is_coordinator": s.coordinator.as_ref().is_some_and(|m| m.id == s.id),
        "members": s.members.iter().map(member).collect::<Vec<_>>(),
        "departed": s.departed.iter().map(member).collect::<Vec<_>>(),
        "quorum": s.quorum,
        "version": s.version,
        "locks": s.locks.iter().map(|l| json!({
            "name": l.name.as_str(), "token": l.token.0, "client": l.client.0, "holds": l.holds,
        })).collect::<Vec<_>>(),
        "insecure": s.security.insecure,
        "primary_key": s.security.primary_key.map(|k| format!("{k:08x}")),
        "keys": s.security.keys.iter().map(|k| format!("{k:08x}")).collect::<Vec<_>>(),
        "halted_on_term": s.halted_on_term,
        "table": s.table.as_ref().map(|t| json!({
            "held": t.held,
            "waiters": t.waiters,
            "serving": t.serving,
            "entries": t.entries.iter().map(|e| json!({
                "name": e.name.as_str(), "token": e.token.0, "node": e.node.to_string(), "client": e.client.0,
            })).collect::<Vec<_>>(),
        })),
    })
}

/// The text form, for a person.
pub fn to_text(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let coordinator = s.coordinator.as_ref().map_or("-", |m| m.name.as_str());
    let _ = writeln!(out, "node         {} ({})", s.name, s.id);
    let _ = writeln!(out, "version      {}", s.version);
    match s.quorum {
        Some(q) => {
            let _ = writeln!(out, "mode         {} (a side needs {q} members to grant)", s.mode);
        }
        None => {
            let _ = writeln!(out, "mode         {}", s.mode);
        }
    }
    match s.security.primary_key {
        _ if s.security.insecure => {
            let _ = writeln!(
                out,
                "security     INSECURE: datagrams unsealed, anyone who reaches the port is a member"
            );
        }
        Some(primary) => {
            let keys: Vec<String> = s.security.keys.iter().map(|k| format!("{k:08x}")).collect();
            let _ = writeln!(out, "security     sealed, primary key {primary:08x}, keys {}", keys.join(" "));
        }
        None => {}
    }
    let _ = writeln!(
        out,
        "view         {} (digest {:016x}), {} members",
        s.view_id,
        s.view_digest,
        s.members.len()
    );
    let _ = writeln!(out, "coordinator  {coordinator}");
    if let Some(term) = s.halted_on_term {
        let _ = writeln!(
            out,
            "ALERT        granting halted: a member reported term {term}, far above this cluster's; \
             see the log, then `swimlock accept-term {term}`"
        );
    }
    let _ = writeln!(out, "members (oldest first):");
    let width = s.members.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for m in &s.members {
        let mut notes = Vec::new();
        if s.coordinator.as_ref().is_some_and(|c| c.id == m.id) {
            notes.push("coordinator");
        }
        if m.id == s.id {
            notes.push("this node");
        }
        let notes = if notes.is_empty() { String::new() } else { format!("  ({})", notes.join(", ")) };
        let _ = writeln!(out, "  {:width$}  {}{notes}", m.name, m.id.addr);
    }
    if s.locks.is_empty() {
        let _ = writeln!(out, "locks held here: none");
    } else {
        let _ = writeln!(out, "locks held here:");
        for l in &s.locks {
            let _ =
                writeln!(out, "  {}  token {}  client {}  holds {}", l.name, l.token, l.client.0, l.holds);
        }
    }
    if let Some(t) = &s.table {
        let phase = if t.serving { "serving" } else { "reconciling" };
        let _ = writeln!(out, "lock table ({phase}): {} held, {} waiting", t.held, t.waiters);
        for e in &t.entries {
            let holder = s
                .members
                .iter()
                .find(|m| m.id == e.node)
                .map_or_else(|| e.node.to_string(), |m| m.name.clone());
            let _ = writeln!(out, "  {}  token {}  holder {holder} client {}", e.name, e.token, e.client.0);
        }
    }
    out
}
