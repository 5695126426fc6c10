use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match isthmus::app::main(isthmus::app::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus: {e:#}");
            ExitCode::FAILURE
        }
    }
}
