//! vhost-vf daemon.
fn main() {}
