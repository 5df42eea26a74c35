fn main() -> std::process::ExitCode {
    edge_agent::cli::main_with_args(std::env::args_os())
}
