fn main() {
    env_logger::init();
    println!("overlay-agent: not wired yet");
}
