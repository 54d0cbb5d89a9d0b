//! The binary edge: argv, runtime, exit codes. Each command lives in its own
//! file under `cli/`; everything else lives in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The one crypto provider for every TLS connection; an error only means
    // one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_PARTIAL);
        }
    };
    let daemon = args.is_daemon();
    let code = match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    };
    if daemon {
        // Runs still going after the shutdown grace period live on blocking
        // threads that dropping the runtime would wait for: exit now.
        std::process::exit(code.into());
    }
    ExitCode::from(code)
}
