//! Fuzzes the hub's line framing: any bytes, split anywhere, must frame to the same bounded,
//! printable lines. Run with `cargo +nightly fuzz run line_framing` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The framer has no dependencies, so the fuzz crate compiles the source file itself.
#[path = "../../src/hub/lines.rs"]
#[allow(dead_code)]
mod lines;

use lines::{Framed, LineFramer, MAX_LINE};

fn frame(chunks: &[&[u8]]) -> Vec<Framed> {
    let mut framer = LineFramer::default();
    let mut out = Vec::new();
    for chunk in chunks {
        framer.push(chunk, &mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where to split the rest into two reads.
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (split as usize * rest.len()) / 255;
    let whole = frame(&[rest]);
    assert_eq!(frame(&[&rest[..at], &rest[at..]]), whole);
    for item in whole {
        if let Framed::Line(text) = item {
            assert!(text.chars().count() <= MAX_LINE);
            assert!(text.chars().all(|c| c == '\t' || !c.is_control()));
        }
    }
});
