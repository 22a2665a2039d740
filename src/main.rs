use std::process::ExitCode;

use lifecycle_agent::cli::{self, Command};
use lifecycle_agent::config::{Config, RunArgs};
use lifecycle_agent::{agent, telemetry};

/// Exit status for configuration errors (README "Configuration").
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(cli::ParseError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("lifecycle-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifecycle-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(dispatch(cli.command));
    // Blocking work left behind (a /metrics encoder whose scraper went away) must not hold
    // the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

fn config(args: RunArgs) -> Result<Config, ExitCode> {
    Config::resolve(args).map_err(|e| {
        eprintln!("lifecycle-agent: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run(args) => {
            let config = match config(args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = telemetry::init(config.log_format, &config.log_level) {
                eprintln!("lifecycle-agent: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match agent::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ lifecycle_agent::Error::Kube(_)) => {
                    eprintln!("lifecycle-agent: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) => {
                    let e = anyhow::Error::new(e).context("the agent stopped with an error");
                    eprintln!("lifecycle-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            let config = match config(args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (report, ok) = cli::check(&config).await;
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Stats(args) => print_or_fail(cli::stats(&args).await),
        Command::Events(args) => print_or_fail(cli::events(&args).await),
    }
}

fn print_or_fail(r: Result<String, lifecycle_agent::client::ClientError>) -> ExitCode {
    match r {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lifecycle-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
