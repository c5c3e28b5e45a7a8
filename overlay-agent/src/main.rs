use std::process::ExitCode;

use overlay_agent::{batched_stderr, cleanup, cli, docker_opts, inspect, node};

fn init_logging(default: log::LevelFilter) {
    // RUST_LOG, when set, wins over flanneld's -v.
    let mut builder = env_logger::Builder::new();
    builder.filter_level(default).parse_env("RUST_LOG").format_timestamp_millis();
    // INFO lines go out in batches from a thread of their own (one line
    // per lease change is thousands of lines when many leases change).
    if let Err(e) = batched_stderr::init(&mut builder) {
        eprintln!("overlay-agent: logging unbatched (no log writer thread: {e})");
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => {
            init_logging(args.log_level());
            runtime().and_then(|rt| rt.block_on(node::run(args)))
        }
        cli::Command::Cleanup(args) => {
            init_logging(log::LevelFilter::Info);
            runtime().and_then(|rt| rt.block_on(cleanup::run(args)))
        }
        cli::Command::Inspect(args) => {
            init_logging(log::LevelFilter::Warn);
            inspect::run(&args.bpf_pin_dir, args.json)
        }
        cli::Command::DockerOpts(args) => {
            init_logging(log::LevelFilter::Warn);
            docker_opts::run(&args)
        }
    };
    batched_stderr::flush_now();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}
