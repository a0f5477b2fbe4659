//! The `swimlock` binary; everything is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    swimlock::cli::main()
}
