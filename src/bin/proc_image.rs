//! proc_image: load the collectors, wait for controller, print what they see.

fn main() {
    let args = proc_image::cli::parse_or_exit::<proc_image::cli::ProcImageArgs>();
    if let Err(e) = proc_image::app::run(args) {
        eprintln!("proc_image: error: {e:#}");
        std::process::exit(1);
    }
}
