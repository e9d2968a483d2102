//! The `outpostctl` example against a running server's API on loopback: log in, change
//! things, read them back as tables and as JSON, and be refused with the API's reason.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use outpost::server::AdminServer;

/// The example binary, next to this test (`cargo test` builds the examples; it is built
/// here too, so a test run alone never runs a stale one).
fn outpostctl() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "outpostctl"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example outpostctl");
    });
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("examples").join("outpostctl");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

struct Ctl {
    server: String,
    ca: PathBuf,
    token: Option<String>,
}

impl Ctl {
    async fn run(&self, args: &[&str], stdin: &str) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(outpostctl());
        cmd.args(args)
            .env("OUTPOST_SERVER", &self.server)
            .env("OUTPOST_CA", &self.ca)
            .env_remove("OUTPOST_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(t) = &self.token {
            cmd.env("OUTPOST_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("outpostctl finished")
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, "").await;
        assert!(
            out.status.success(),
            "outpostctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A server on `base` (a CA for `localhost`; `top` adds top-level configuration keys) with
/// the API on loopback and an administrator "admin", and a client for it, not logged in.
async fn start_server(base: &Path, top: &str) -> (AdminServer, Ctl) {
    common::localhost_ca(base);
    let config = common::server_config("127.0.0.1:0", top, "[api]\nlisten = \"127.0.0.1:0\"");
    config
        .bootstrap_account(base, "admin", "correct horse battery")
        .unwrap();
    let running = AdminServer::start(config, base, None, None).await.unwrap();
    let ctl = Ctl {
        server: format!("https://localhost:{}", running.api_addr().unwrap().port()),
        ca: base.join("state/ca.crt"),
        token: None,
    };
    (running, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpostctl_administers_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let (running, mut ctl) = start_server(base, "").await;

    // Every subcommand answers --help.
    let help = ctl.ok(&["devices", "list", "--help"]).await;
    assert!(help.contains("--online"), "{help}");

    // A wrong password is refused with the API's reason; the right one gives a token.
    let wrong = ctl.run(&["login", "admin"], "not it at all\n").await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let login = ctl
        .run(&["login", "admin"], "correct horse battery\n")
        .await;
    assert!(login.status.success());
    let token = String::from_utf8(login.stdout).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    ctl.token = Some(token);

    ctl.ok(&["groups", "create", "paris", "--name", "Paris"])
        .await;
    let dup = ctl
        .run(&["groups", "create", "paris", "--name", "Paris"], "")
        .await;
    let why = String::from_utf8_lossy(&dup.stderr).into_owned();
    assert!(
        !dup.status.success() && why.contains("409") && why.contains("field id"),
        "{why}"
    );
    ctl.ok(&["groups", "create", "eu", "--name", "Europe"])
        .await;
    let moved = ctl
        .ok(&["--json", "groups", "move", "paris", "--parent", "eu"])
        .await;
    assert!(moved.contains("\"parent\": \"eu\""), "{moved}");
    ctl.ok(&["groups", "move", "paris", "--parent", "root"])
        .await;
    let table = ctl.ok(&["groups", "list"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PARENT"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["paris", "Paris", "root"]),
        "{table}"
    );
    let t = ctl
        .ok(&["tokens", "issue", "--group", "paris", "--device", "pc-1"])
        .await;
    assert_eq!(t.trim().len(), 64, "{t}");
    let pending: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["--json", "tokens", "list"]).await).unwrap();
    assert_eq!(pending["tokens"][0]["device"], "pc-1");
    assert_eq!(pending["tokens"][0]["group"], "paris");
    let status: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["status", "--json"]).await).unwrap();
    assert_eq!(status["pending_enrollment_tokens"], 1);
    let events = ctl.ok(&["events", "--kind", "audit.group.create"]).await;
    assert!(events.contains("created group \"paris\""), "{events}");

    // The other lists print their tables; an account and an API token are made.
    for (args, header) in [
        (&["devices", "list", "--online", "true"][..], "ID"),
        (&["dps", "list"][..], "DEVICE"),
        (&["gateways", "list"][..], "ID"),
        (&["updates", "list"][..], "ID"),
        (&["issues", "list", "--acknowledged", "false"][..], "DEVICE"),
        (&["accounts", "list"][..], "NAME"),
    ] {
        let out = ctl.ok(args).await;
        assert!(out.starts_with(header), "{args:?}: {out}");
    }
    let made = ctl
        .run(
            &["accounts", "create", "olga", "--role", "auditor"],
            "long enough here\n",
        )
        .await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let accounts = ctl.ok(&["accounts", "list"]).await;
    assert!(
        accounts.contains("olga") && accounts.contains("auditor"),
        "{accounts}"
    );
    let key = ctl.ok(&["api-tokens", "issue", "--label", "nightly"]).await;
    ctl.token = Some(key.trim().to_string());
    let tokens = ctl.ok(&["api-tokens", "list"]).await;
    assert!(
        tokens.contains("nightly") && !tokens.contains(key.trim()),
        "{tokens}"
    );

    // Virtual servers: created, worked in with --virtual-server, disabled, deleted.
    ctl.ok(&["virtual-servers", "create", "acme", "--name", "Acme Corp"])
        .await;
    let listed = ctl.ok(&["virtual-servers", "list"]).await;
    assert!(
        listed.contains("acme") && listed.contains("Acme Corp"),
        "{listed}"
    );
    ctl.ok(&[
        "--virtual-server",
        "acme",
        "groups",
        "create",
        "sales",
        "--name",
        "Sales",
    ])
    .await;
    let inside = ctl
        .ok(&["--virtual-server", "acme", "groups", "list"])
        .await;
    let main = ctl.ok(&["groups", "list"]).await;
    assert!(
        inside.contains("sales") && !inside.contains("paris"),
        "{inside}"
    );
    assert!(!main.contains("sales"), "{main}");
    let off = ctl
        .ok(&[
            "--json",
            "virtual-servers",
            "set",
            "acme",
            "--disabled",
            "true",
        ])
        .await;
    assert!(off.contains("\"disabled\": true"), "{off}");
    let nowhere = ctl
        .run(&["--virtual-server", "initech", "groups", "list"], "")
        .await;
    assert!(
        String::from_utf8_lossy(&nowhere.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&nowhere.stderr)
    );
    let gone = ctl
        .ok(&["--json", "virtual-servers", "delete", "acme"])
        .await;
    assert!(gone.contains("revoked_certificates"), "{gone}");
    assert!(!ctl.ok(&["virtual-servers", "list"]).await.contains("acme"));

    // Without a token: refused.
    ctl.token = None;
    let anon = ctl.run(&["groups", "list"], "").await;
    assert!(!anon.status.success());
    running.shutdown().await;
}

/// A policy edit made with `outpostctl` reaches a running agent's settings files through
/// the server's push, long before the agent's next scheduled sync, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_a_running_agent() {
    use outpost::agent::{Agent, AgentConfig, Endpoint};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let policy = |value: bool| {
        serde_json::json!({"id": "lab-usb", "app": "endpoint", "group": "lab",
               "settings": {"usb.block": {"value": value, "locked": true}}})
    };
    std::fs::write(
        base.join("policies.json"),
        serde_json::json!({"schemas": [{"app": "endpoint", "settings": {"usb.block": {"type": "bool", "default": false}}}],
               "groups": [{"id": "root"}, {"id": "lab", "parent": "root"}],
               "policies": [policy(true)]})
        .to_string(),
    )
    .unwrap();
    let (running, mut ctl) = start_server(base, r#"policy_state = "policies.json""#).await;
    let login = ctl
        .run(&["login", "admin"], "correct horse battery\n")
        .await;
    ctl.token = Some(String::from_utf8(login.stdout).unwrap().trim().to_string());
    ctl.ok(&["groups", "create", "lab", "--name", "Lab"]).await;
    let token = ctl
        .ok(&["tokens", "issue", "--group", "lab", "--device", "laptop-1"])
        .await;

    // A real agent enrolls, syncs and writes its settings.
    let addr = running.local_addr();
    let mut c = AgentConfig::new("laptop-1", base.join("laptop-1"));
    c.endpoints = vec![Endpoint::new(addr, "localhost")];
    c.enrollment.server = Some(Endpoint::new(addr, "localhost"));
    c.enrollment.server_ca = base.join("state/ca.crt");
    c.enrollment.token = token.trim().into();
    c.distribution.enabled = false;
    let agent = Agent::start(c).await.unwrap();
    agent
        .wait_for(std::time::Duration::from_secs(60), |s| s.core.syncs > 0)
        .await
        .unwrap();
    let settings = base
        .join("laptop-1")
        .join(outpost::agent::store::SETTINGS_DIR);
    let read = || {
        std::fs::read_dir(&settings)
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = read();
    assert!(before.contains("true"), "{before}");
    let interval = agent.status().core.sync_interval;
    let pushes = agent.status().core.pushes;

    // The edit, through the API; the push makes the agent sync now.
    std::fs::write(base.join("edit.json"), policy(false).to_string()).unwrap();
    let edited = std::time::Instant::now();
    let edit = base.join("edit.json");
    let answer: serde_json::Value = serde_json::from_str(
        &ctl.ok(&[
            "--json",
            "policies",
            "put",
            "--file",
            edit.to_str().unwrap(),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(answer["pushed_sync_now"], 1, "{answer}");
    let mut after = String::new();
    // Until the store holds only the new document: a read during the atomic replace may see
    // the new file beside the old one.
    for _ in 0..1_000 {
        after = read();
        if after.contains("false") && !after.contains("true") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let took = edited.elapsed();
    assert!(
        after.contains("false") && !after.contains("true"),
        "{after}"
    );
    assert!(
        agent.status().core.pushes > pushes,
        "the agent acted on the push"
    );
    assert!(
        took < interval,
        "arrived by push ({took:?}), not by the next scheduled sync ({interval:?})"
    );
    println!("policy edit to settings file: {} ms", took.as_millis());

    // Why the value is what it is, then the policy made inactive: the default applies.
    let why = ctl
        .ok(&[
            "devices",
            "explain",
            "laptop-1",
            "--app",
            "endpoint",
            "--path",
            "usb.block",
        ])
        .await;
    assert!(why.contains("endpoint/usb.block = false (locked)"), "{why}");
    assert!(
        why.contains("from: policy \"lab-usb\" of group \"lab\" (locked)"),
        "{why}"
    );
    assert!(
        why.contains("[lost] schema default = false: overridden by policy"),
        "{why}"
    );
    let set = ctl.ok(&["policies", "status", "lab-usb", "inactive"]).await;
    assert!(set.contains("status: inactive"), "{set}");
    let why = ctl.ok(&["devices", "explain", "laptop-1"]).await;
    assert!(
        why.contains("endpoint/usb.block = false\n  from: schema default"),
        "{why}"
    );

    // A network location and its distribution point.
    let located = ctl
        .ok(&["devices", "locate", "laptop-1", "--location", "lab-2"])
        .await;
    assert!(located.contains("network_location: lab-2"), "{located}");
    let assigned = ctl
        .ok(&[
            "dps",
            "assign",
            "--device",
            "laptop-1",
            "--network-location",
            "lab-2",
        ])
        .await;
    assert!(assigned.contains("scope: location~lab-2"), "{assigned}");
    let listed = ctl.ok(&["dps", "list"]).await;
    assert!(listed.contains("location~lab-2"), "{listed}");
    ctl.ok(&[
        "dps",
        "unassign",
        "--device",
        "laptop-1",
        "--network-location",
        "lab-2",
    ])
    .await;
    let both = ctl
        .run(
            &[
                "dps",
                "assign",
                "--device",
                "laptop-1",
                "--group",
                "lab",
                "--broadcast-domain",
            ],
            "",
        )
        .await;
    assert!(!both.status.success(), "one scope at a time");
    agent.shutdown().await;
    running.shutdown().await;
}
