//! `graft-hub-server --root DIR [--port P] [--cdn-port Q]`: serves a Hub folder until killed.
//! Prints one line with both origins so a harness can read the ports.

use std::io::Write;
use std::process::ExitCode;

use graft_hub_server::HubServer;

const USAGE: &str = "usage: graft-hub-server --root DIR [--port P] [--cdn-port Q]";

fn main() -> ExitCode {
    let mut root = None;
    let mut port: u16 = 0;
    let mut cdn_port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed = match arg.as_str() {
            "--root" => value("--root").map(|v| root = Some(v)),
            "--port" => value("--port").and_then(|v| {
                v.parse()
                    .map(|p| port = p)
                    .map_err(|_| format!("bad --port: {v}"))
            }),
            "--cdn-port" => value("--cdn-port").and_then(|v| {
                v.parse()
                    .map(|p| cdn_port = p)
                    .map_err(|_| format!("bad --cdn-port: {v}"))
            }),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument: {other}")),
        };
        if let Err(e) = parsed {
            eprintln!("graft-hub-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(root) = root else {
        eprintln!("graft-hub-server: --root is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let server = match HubServer::start_on(root, port, cdn_port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("graft-hub-server: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "graft-hub-server: {} cdn {}",
        server.endpoint(),
        server.cdn_origin()
    );
    let _ = out.flush();
    // The accept loops run on their own threads; keep the process (and the server) alive.
    loop {
        std::thread::park();
    }
}
