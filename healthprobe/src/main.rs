//! `healthprobe [--timeout-ms N] URL`: exit 0 when `GET URL` answers 2xx within the timeout,
//! 1 otherwise (Docker's "unhealthy"), 2 on bad usage. One line on stdout says what it saw, which
//! Docker keeps in the container's health log.

use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: healthprobe [--timeout-ms N] http://host[:port]/path";
/// Below Docker's default health-check timeout, so the probe reports before Docker kills it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut timeout = DEFAULT_TIMEOUT;
    let mut url = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout-ms" => match args.next().and_then(|v| v.parse::<u64>().ok()) {
                Some(ms) if ms > 0 => timeout = Duration::from_millis(ms),
                _ => return usage("--timeout-ms takes a positive number of milliseconds"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if url.is_none() && !arg.starts_with('-') => url = Some(arg),
            _ => return usage(&format!("unexpected argument {arg:?}")),
        }
    }
    let Some(url) = url else {
        return usage("no URL");
    };
    let target = match healthprobe::Target::parse(&url) {
        Ok(t) => t,
        Err(e) => return usage(&e.to_string()),
    };
    match healthprobe::probe(&target, timeout) {
        Ok(code) => {
            println!("{url}: {code}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{url}: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("healthprobe: {why}\n{USAGE}");
    ExitCode::from(2)
}
