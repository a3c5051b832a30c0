//! Any text frame fed to the client message parser: a message or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(err) = ClientMessage::parse(text) {
            assert!(!err.message.is_empty());
        }
    }
});
