//! `runledger`: parse, run, map errors to exit codes (0 ok, 1 a check
//! failed, 2 bad input or usage).

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = runledger::cli::parse();
    match runledger::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = runledger::cli::exit_code(&error);
            if code != 0 {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

// Replay and the writer allocate many small strings (ids); mimalloc is
// markedly faster than glibc's allocator for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
