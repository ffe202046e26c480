//! `stockctl`: see `stockctl --help`.
//!
//! ```sh
//! stockctl status
//! stockctl --endpoints http://127.0.0.1:8080,http://127.0.0.1:8082 sale list
//! stockctl bench --users 2000 --quantity 300 --concurrency 32 --output json
//! ```
//!
//! Exit codes: 0 ok, 1 refused by the server, 2 usage or connection error. Errors are
//! one line on stderr: `error: <code>: <message>`.

use clap::Parser;
use stockade_cli::{run, Cli};

fn main() {
    // Rust starts programs with SIGPIPE ignored, so a write to a closed stdout
    // (`stockctl … | head`, a reader that died) is an error, and `println!` panics on it
    // with a backtrace. A command-line tool should end quietly then, as `cat` does: the
    // default disposition ends the process by the signal (exit status 141 in a shell).
    // SAFETY: the first thing the program does, before any other thread exists; SIG_DFL
    // is a valid disposition for SIGPIPE.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors; clap uses exit code 2 for usage errors.
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: local: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async { run(cli).await.map_err(Into::into) });
    if let Err(e) = result {
        let code = e
            .downcast_ref::<stockade_cli::CliError>()
            .map(|c| c.exit_code())
            .unwrap_or(2);
        eprintln!("error: {e:#}");
        std::process::exit(code);
    }
}
