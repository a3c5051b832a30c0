//! Any text fed to the cursor decoder: never a panic, and whatever decodes re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::cursor::Cursor;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cursor) = Cursor::decode(text) {
            let again = Cursor::decode(&cursor.encode()).expect("a re-encoded cursor decodes");
            assert_eq!(again, cursor);
        }
    }
});
