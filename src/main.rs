use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = refund_service::cli::Cli::parse();
    match refund_service::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, one cause per line.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
