//! controller: activate, deactivate or end a running proc_image.

fn main() {
    let args = proc_image::cli::parse_or_exit::<proc_image::cli::ControllerArgs>();
    if let Err(msg) = args.validate() {
        eprintln!("{msg}");
        std::process::exit(2);
    }
    match proc_image::control::client::run(&args) {
        Ok(msg) => println!("{msg}"),
        Err(e) => {
            eprintln!("controller: error: {e:#}");
            std::process::exit(1);
        }
    }
}
