//! Load generator for pushgate (being built; see issue 6).
fn main() {}
