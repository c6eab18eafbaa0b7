use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = refund_service::cli::Cli::parse();
    match refund_service::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, each cause once.
            eprintln!("error: {}", refund_service::cli::error_chain(&e));
            // `bulk` tells failed jobs (1) from bad input, connection or server errors (2) and
            // an interruption (130).
            // `verify` tells violations (1) from usage or connection errors (2).
            if let Some(e) = e.downcast_ref::<refund_service::bulk_cli::BulkError>() {
                return e.exit_code().into();
            }
            e.downcast_ref::<refund_service::verify::VerifyError>()
                .map_or(std::process::ExitCode::FAILURE, |e| e.exit_code().into())
        }
    }
}
