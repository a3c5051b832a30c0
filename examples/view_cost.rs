//! Prints the view's own cost: memory per key, ingest time per update, and what
//! concurrent whole-topic snapshots add (memory, and ingest time while they are held).
//! Usage: view_cost [KEYS] [UPDATES] [SNAPSHOTS] (default 1000000 200000 100).

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (keys, updates, snapshots) = (arg(1, 1_000_000), arg(2, 200_000), arg(3, 100));
    let c = pushgate::view_cost(keys, updates, snapshots);
    println!("keys                          {}", c.keys);
    println!("view bytes per key (VmRSS)    {:.0}", c.bytes_per_key);
    println!("ns per update                 {:.0}", c.ns_per_update);
    println!("ms per snapshot taken         {:.2}", c.ms_per_snapshot);
    println!("bytes per snapshot held       {:.0}", c.bytes_per_snapshot);
    println!("ns per update, snapshots held {:.0}", c.ns_per_update_held);
    println!(
        "MiB added by {updates} updates while held {:.1}",
        c.bytes_after_updates / 1048576.0
    );
}
