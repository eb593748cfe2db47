//! How honest the memory engine's budget is: fills an engine with a 64 MiB budget in hostile
//! patterns (tiny entries over many channels, medium entries, consumer groups joined and left
//! on ever new channel names) and prints the process's RSS growth against the budget.
//!
//! ```text
//! cargo run --release -p redistribute --example memory_budget
//! ```
//!
//! Each pattern runs in a fresh process (the example re-executes itself), so the allocator's
//! state of one does not flatter the next.

use redistribute::protocol::Start;
use redistribute::{Engine, MemoryEngine, MemoryLimits};
use std::time::Instant;

const BUDGET: usize = 64 << 20;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("statm's resident field");
    pages * 4096
}

async fn run(pattern: &str) {
    let engine =
        Engine::Memory(MemoryEngine::new(MemoryLimits { max_bytes: BUDGET, max_entries_per_channel: 100_000 }));
    let base = rss_bytes();
    let started = Instant::now();
    match pattern {
        "tiny" => {
            for i in 0..3_000_000u64 {
                engine.publish(&format!("c{}", i % 1000), &["k".into(), "v".into()], None).await.unwrap();
            }
        }
        "medium" => {
            let value = "v".repeat(200);
            for i in 0..1_000_000u64 {
                engine.publish(&format!("c{}", i % 1000), &["k".into(), value.clone()], None).await.unwrap();
            }
        }
        "channels" => {
            for i in 0..2_000_000u64 {
                engine.publish(&format!("room-{i}"), &["k".into(), "v".into()], None).await.unwrap();
            }
        }
        "groups" => {
            for i in 0..1_000_000u64 {
                let member = engine.join_group(&format!("jobs-{i}"), "g", "worker", Start::Latest).await.unwrap();
                drop(member);
            }
        }
        other => panic!("unknown pattern {other}"),
    }
    let Engine::Memory(memory) = &engine else { unreachable!() };
    let grown = rss_bytes().saturating_sub(base);
    println!(
        "| {pattern} | {:.1} | {:.1} | {:.2} | {} | {:.1} s |",
        memory.bytes() as f64 / (1 << 20) as f64,
        grown as f64 / (1 << 20) as f64,
        grown as f64 / BUDGET as f64,
        memory.entries(),
        started.elapsed().as_secs_f64(),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    if let Some(pattern) = args.next() {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(&pattern));
        return;
    }
    println!("budget {} MiB\n", BUDGET >> 20);
    println!("| pattern | charged MiB | RSS growth MiB | RSS / budget | entries kept | time |");
    println!("|---|---|---|---|---|---|");
    let me = std::env::current_exe().unwrap();
    for pattern in ["tiny", "medium", "channels", "groups"] {
        let status = std::process::Command::new(&me).arg(pattern).status().unwrap();
        assert!(status.success());
    }
}
